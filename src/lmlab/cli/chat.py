"""``lmlab chat MODEL``: a conversation over standard input, one user turn per line, rendered with the
model's chat template (``tokenizer_config.json`` ``chat_template``). Replies stream as they are generated.

Commands: ``/reset`` forgets the history, ``/system TEXT`` sets the system message (``/system`` alone clears
it), ``/exit`` (or an empty line, or EOF) ends the chat. When the history no longer fits the model's context
with room for a reply, its oldest turns are dropped, and a note on stderr says so.
"""

from __future__ import annotations

import argparse
import sys

from lmlab.cli.common import (
    add_model_argument,
    add_sampling_arguments,
    cache_policy,
    check_sampling_arguments,
    generation_config,
    load_model_and_tokenizer,
)
from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--system", default=None, help="system message")
    add_sampling_arguments(p)


def trim_history(tokenizer, system: str | None, turns: list[dict], budget: int) -> tuple[list[int], int]:
    """(prompt ids, turns dropped): the oldest user/assistant turns are dropped, a pair at a time, until the
    rendered prompt takes at most ``budget`` tokens. The system message and the newest user turn always stay;
    if those alone overflow, the turn is refused."""
    head = [{"role": "system", "content": system}] if system else []
    dropped = 0
    while True:
        prompt = tokenizer.apply_chat_template(head + turns, add_generation_prompt=True, tokenize=True)
        if len(prompt) <= budget:
            return prompt, dropped
        if len(turns) <= 1:
            raise LmlabError(f"this message needs {len(prompt)} tokens with the system message, more than the "
                             f"{budget} that fit the context with room for the reply (lower --max-new-tokens)")
        cut = 2 if len(turns) > 2 else 1
        del turns[:cut]
        dropped += cut


def run(args: argparse.Namespace) -> int:
    from lmlab.core.generate import stream_generate

    check_sampling_arguments(args)
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, pack=args.pack)
    context = model.config.max_seq_len
    if args.max_new_tokens >= context:
        raise LmlabError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a message in the model's "
                         f"context of {context} tokens")
    system = args.system
    turns: list[dict] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or not line.strip() or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            turns.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            print(f"(system message {'set' if system else 'cleared'})", file=sys.stderr)
            continue
        turns.append({"role": "user", "content": text})
        prompt, dropped = trim_history(tokenizer, system, turns, context - args.max_new_tokens)
        if dropped:
            print(f"(history trimmed: dropped the {dropped} oldest turns to fit the context of {context} tokens)",
                  file=sys.stderr)
        cfg = generation_config(args, tokenizer, prompt_len=len(prompt))
        if interactive:
            sys.stdout.write("assistant> ")
        new: list[int] = []
        printed = ""
        for tok in stream_generate(model, [prompt], cfg, tokenizer=tokenizer,
                                   cache_policy=cache_policy(args)):  # a fresh policy per turn
            new.append(int(tok[0]))
            text_so_far = tokenizer.decode(new).lstrip()
            sys.stdout.write(text_so_far[len(printed):])
            sys.stdout.flush()
            printed = text_so_far
        sys.stdout.write("\n")
        sys.stdout.flush()
        turns.append({"role": "assistant", "content": tokenizer.decode(new).strip()})
