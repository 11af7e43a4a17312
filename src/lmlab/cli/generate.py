"""``lmlab generate MODEL --prompt TEXT``: stream a continuation to standard output.

Every option is checked before the model loads or anything is printed. A prompt longer than the model's
context is refused (``--truncate-left`` drops its oldest tokens instead). ``--num-samples N`` draws N
continuations of the same prompt; ``--json`` prints one JSON object per sample with the per-token
log-probabilities of the model (log-softmax of its raw logits, before any sampling setting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from lmlab.cli.common import (
    add_model_argument,
    add_sampling_arguments,
    cache_policy,
    check_sampling_arguments,
    fit_context,
    generation_config,
    load_model_and_tokenizer,
)
from lmlab.control.cli_options import add_guide_arguments, build_processors
from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model directory)")
    group.add_argument("--ids", help="comma-separated prompt token ids, for models without a tokenizer")
    add_sampling_arguments(p)
    p.add_argument("--num-samples", type=int, default=1,
                   help="continuations of the prompt to draw (with --temperature > 0 they differ)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line per sample: text, token ids and per-token log-probabilities")
    add_guide_arguments(p)
    steer = p.add_argument_group("steering (lmlab steer builds the file)")
    steer.add_argument("--steer", default=None,
                       help="steering file (.safetensors): an ActAdd/concept vector, or an ICL state vector")
    steer.add_argument("--coeff", type=float, default=1.0,
                       help="steering coefficient (default 1); for a state vector its patch strength (1 = replace)")
    steer.add_argument("--steer-positions", choices=["front", "all", "prompt", "generated"], default="front",
                       help="where to add the vector (default front: the first positions, as ActAdd does)")


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LmlabError(f"--ids: expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    check_sampling_arguments(args)
    if args.num_samples < 1:
        raise LmlabError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.prompt is not None and not args.prompt:
        raise LmlabError("--prompt: empty")
    ids = _parse_ids(args.ids) if args.ids is not None else None
    if ids is not None and not ids:
        raise LmlabError("--ids: no token ids given")
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, need_tokenizer=args.prompt is not None,
                                                pack=args.pack)
    if args.prompt is not None:
        ids = tokenizer.encode(args.prompt)
        if not ids:
            raise LmlabError("--prompt: encodes to no tokens")
    else:
        bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
        if bad:
            raise LmlabError(f"--ids: token ids must be in [0, {model.config.vocab_size}), got {bad}")
    full_len = len(ids)
    ids, budget = fit_context(ids, args.max_new_tokens, model.config.max_seq_len, args.truncate_left,
                              what="--prompt" if args.prompt is not None else "--ids")
    cfg = generation_config(args, tokenizer, prompt_len=len(ids), max_new_tokens=budget)
    cfg.logits_processors = tuple(cfg.logits_processors) + tuple(build_processors(args, model, tokenizer))
    with _steering(model, args):  # --steer: the vector's hooks, removed on the way out
        if args.json or args.num_samples > 1:
            return _samples(model, tokenizer, ids, cfg, args)
        _stream(model, tokenizer, ids, cfg, args, echo=args.prompt if len(ids) == full_len else tokenizer.decode(ids)
                if args.prompt is not None else None)
    return 0


def _stream(model, tokenizer, ids, cfg, args, echo: str | None) -> None:
    from lmlab.core.generate import stream_generate

    new: list[int] = []
    printed = ""
    if echo is not None:
        sys.stdout.write(echo)
    for tok in stream_generate(model, [ids], cfg, tokenizer=tokenizer, cache_policy=cache_policy(args)):
        new.append(int(tok[0]))
        if args.ids is not None:  # ids in, ids out
            sys.stdout.write(f" {new[-1]}")
        else:
            text = tokenizer.decode(new)
            sys.stdout.write(text[len(printed):])
            printed = text
        sys.stdout.flush()
    sys.stdout.write("\n")


def _samples(model, tokenizer, ids, cfg, args) -> int:
    """N rows of the same prompt in one batch; plain text (one sample per block) or JSON lines."""
    import lmlab

    outs = lmlab.generate(model, [list(ids) for _ in range(args.num_samples)], cfg, tokenizer=tokenizer,
                          cache_policy=cache_policy(args))
    for i, row in enumerate(outs):
        new = row[len(ids):]
        text = tokenizer.decode(new) if tokenizer is not None else None
        if args.json:
            record = {"sample": i, "prompt_tokens": len(ids), "token_ids": new,
                      "logprobs": token_logprobs(model, ids, new)}
            if tokenizer is not None:
                record["text"] = text
                record["tokens"] = [tokenizer.decode([t], skip_special_tokens=False) for t in new]
            print(json.dumps(record))
        else:
            print(f"--- sample {i}")
            print((args.prompt + text) if args.prompt is not None else " ".join(map(str, new)))
    return 0


def token_logprobs(model, prompt: list[int], new: list[int]) -> list[float]:
    """log p(new[j] | prompt + new[:j]) under the model's raw distribution, one forward over the sequence."""
    import torch

    if not new:
        return []
    seq = torch.tensor([prompt + new], device=model.device)  # [1, P + N]
    with torch.no_grad():
        logits = model(seq[:, :-1]).float()  # [1, P + N - 1, V]
    logp = logits[0, len(prompt) - 1:].log_softmax(-1)  # [N, V]: positions predicting each new token
    return logp.gather(1, torch.tensor(new, device=logp.device)[:, None])[:, 0].tolist()


def _steering(model, args: argparse.Namespace) -> contextlib.ExitStack:
    """An ExitStack holding the --steer vector's hooks (empty without --steer)."""
    stack = contextlib.ExitStack()
    if args.steer is not None:
        from lmlab.steer import apply_steering, load_steering

        vec = load_steering(args.steer, model=model)
        stack.enter_context(apply_steering(vec, model, args.coeff, positions=args.steer_positions))
    return stack
