"""``lmlab generate MODEL --prompt TEXT``: stream a continuation to standard output."""

from __future__ import annotations

import argparse
import contextlib
import sys

from lmlab.cli.common import add_model_argument, add_sampling_arguments, generation_config, load_model_and_tokenizer
from lmlab.control.cli_options import add_guide_arguments, build_processors
from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="prompt text (needs tokenizer.json in the model directory)")
    group.add_argument("--ids", help="comma-separated prompt token ids, for models without a tokenizer")
    add_sampling_arguments(p)
    add_guide_arguments(p)
    steer = p.add_argument_group("steering (lmlab steer builds the file)")
    steer.add_argument("--steer", default=None, help="steering-vector file (.safetensors) to add while generating")
    steer.add_argument("--coeff", type=float, default=1.0, help="steering coefficient (default 1)")
    steer.add_argument("--steer-positions", choices=["front", "all", "prompt", "generated"], default="front",
                       help="where to add the vector (default front: the first positions, as ActAdd does)")


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise LmlabError(f"--ids: expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from lmlab.core.generate import stream_generate

    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, need_tokenizer=args.prompt is not None,
                                                pack=args.pack)
    if args.prompt is not None:
        ids = tokenizer.encode(args.prompt)
        if not ids:
            raise LmlabError("--prompt: encodes to no tokens")
    else:
        ids = _parse_ids(args.ids)
        bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
        if bad or not ids:
            raise LmlabError(f"--ids: token ids must be in [0, {model.config.vocab_size}), got {bad or 'none'}")
    cfg = generation_config(args, tokenizer)
    cfg.logits_processors = tuple(cfg.logits_processors) + tuple(build_processors(args, model, tokenizer))
    steering = _steering(model, args)  # hooks held until closed below
    new: list[int] = []
    printed = ""
    if args.prompt is not None:
        sys.stdout.write(args.prompt)
    for tok in stream_generate(model, [ids], cfg, tokenizer=tokenizer):
        new.append(int(tok[0]))
        if args.ids is not None:  # ids in, ids out
            sys.stdout.write(f" {new[-1]}")
        else:
            text = tokenizer.decode(new)
            sys.stdout.write(text[len(printed):])
            printed = text
        sys.stdout.flush()
    steering.close()
    sys.stdout.write("\n")
    return 0


def _steering(model, args: argparse.Namespace) -> contextlib.ExitStack:
    """An ExitStack holding the --steer vector's hooks (empty without --steer)."""
    stack = contextlib.ExitStack()
    if args.steer is not None:
        from lmlab.steer import SteeringVector

        vec = SteeringVector.load(args.steer, model=model)
        stack.enter_context(vec.apply(model, coeff=args.coeff, positions=args.steer_positions))
    return stack
