"""``lmlab chat MODEL``: a conversation over standard input, one user turn per line, rendered with the
model's chat template (``tokenizer_config.json`` ``chat_template``). An empty line or EOF ends it."""

from __future__ import annotations

import argparse
import sys

from lmlab.cli.common import (add_model_argument, add_sampling_arguments, cache_policy, generation_config,
                              load_model_and_tokenizer)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--system", default=None, help="system message")
    add_sampling_arguments(p)


def run(args: argparse.Namespace) -> int:
    import lmlab

    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, pack=args.pack)
    cfg = generation_config(args, tokenizer)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        policy = cache_policy(args)  # a fresh one per turn: each turn prefills its own cache
        out = lmlab.generate(model, [prompt], cfg, tokenizer=tokenizer, cache_policy=policy)[0][len(prompt):]
        reply = tokenizer.decode(out).strip()
        messages.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}" if interactive else reply, flush=True)
