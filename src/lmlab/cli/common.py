"""Helpers the CLI verbs share: loading a model with its tokenizer, and prompt encoding."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.errors import LmlabError


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory (config.json + model.safetensors [+ tokenizer.json])")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="load weights in this dtype (default: as stored)")


def load_model_and_tokenizer(path: str, dtype: str | None, need_tokenizer: bool = True, pack: bool = False):
    """The model and (if the directory has one) its tokenizer, checked to fit the embedding.

    ``pack``: prepack the weights for faster CPU decoding (``lmlab.core.linear.pack_for_inference``)."""
    import lmlab
    from lmlab.core.linear import pack_for_inference
    from lmlab.core.tokenizer import check_fits_embedding

    model = lmlab.load(path, dtype=dtype)
    if pack:
        pack_for_inference(model)
    tokenizer = None
    if (Path(path) / "tokenizer.json").exists():
        tokenizer = lmlab.load_tokenizer(path)
        check_fits_embedding(tokenizer, model.config.vocab_size, where=str(path))
    elif need_tokenizer:
        raise LmlabError(f"{path}: no tokenizer.json (pass --ids to give token ids directly)")
    return model, tokenizer


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pack", action="store_true",
                   help="prepack weights for faster CPU decoding (1.4-2x; costs a second copy of the weights)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--kv-policy", default=None, help="KV-cache eviction: window, sinks, h2o or keyformer")
    p.add_argument("--kv-budget", default=None,
                   help="with --kv-policy: tokens kept (e.g. 512) or a fraction of the prompt (e.g. 0.25)")


def cache_policy(args: argparse.Namespace):
    """A fresh KV policy from --kv-policy / --kv-budget, or None."""
    if args.kv_policy is None:
        if args.kv_budget is not None:
            raise LmlabError("--kv-budget needs --kv-policy")
        return None
    if args.kv_budget is None:
        raise LmlabError("--kv-policy needs --kv-budget (tokens, or a fraction such as 0.25)")
    try:
        budget = float(args.kv_budget) if "." in args.kv_budget else int(args.kv_budget)
    except ValueError:
        raise LmlabError(f"--kv-budget: expected a number of tokens or a fraction, got {args.kv_budget!r}") from None
    from lmlab.efficient import kv_policy

    return kv_policy(args.kv_policy, budget=budget)


def generation_config(args: argparse.Namespace, tokenizer):
    from lmlab.core.generate import GenerationConfig

    stops = None
    if tokenizer is not None and tokenizer.eos_id is not None:
        stops = [tokenizer.eos_id]
        im_end = tokenizer.token_to_id("<|im_end|>")
        if im_end is not None:
            stops.append(im_end)
    return GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                            seed=args.seed, stop_strings=tuple(args.stop), stop_token_ids=stops)
