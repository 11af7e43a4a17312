"""Helpers the CLI verbs share: loading a model with its tokenizer, sampling options, context limits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory (config.json + model.safetensors [+ tokenizer.json]) or a "
                                 "Hugging Face model id found in the local Hugging Face cache")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="load weights in this dtype (default: as stored)")


def load_model_and_tokenizer(path: str, dtype: str | None, need_tokenizer: bool = True, pack: bool | None = False):
    """The model and (if the directory has one) its tokenizer, checked to fit the embedding.

    ``path`` may be a Hugging Face model id, resolved from the local cache (``lmlab.io.hub``).
    ``pack``: prepack the weights for CPU decoding (``lmlab.core.linear.pack_for_inference``); None = only
    where it wins, i.e. bf16 weights on CPU (see ``PACK_HELP``)."""
    import lmlab
    from lmlab.core.linear import pack_for_inference
    from lmlab.core.tokenizer import check_fits_embedding
    from lmlab.io.gguf_format import gguf_path_or_none
    from lmlab.io.hub import resolve_model_path

    in_gguf = gguf_path_or_none(path) is not None
    local = path if in_gguf else resolve_model_path(path)
    model = lmlab.load(local, dtype=dtype)
    if pack is None:
        import torch

        pack = model.dtype == torch.bfloat16 and model.device.type == "cpu"
    if pack:
        pack_for_inference(model)
    tokenizer = None
    if (Path(local) / "tokenizer.json").exists() or (in_gguf and need_tokenizer):  # --ids: a GGUF's tokenizer is optional
        tokenizer = lmlab.load_tokenizer(local)
        check_fits_embedding(tokenizer, model.config.vocab_size, where=str(path))
    elif need_tokenizer:
        raise LmlabError(f"{path}: no tokenizer.json (pass --ids to give token ids directly)")
    return model, tokenizer


# Measured in BENCHMARKS.md (decode tables, GPT-2 and Llama ~130M, batch 1 and 8): packed vs unpacked lmlab is
# 1.28-1.61x in bf16 but 0.85-1.05x in fp32 (slower in three of four configurations), so the default packs bf16 only.
PACK_HELP = ("prepack weights in oneDNN's layout for CPU decoding (a second copy of the weights). Against unpacked "
             "lmlab: 1.28-1.61x faster in bf16, 0.85-1.05x in fp32 (BENCHMARKS.md); default: bf16 weights only")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    pack = p.add_mutually_exclusive_group()
    pack.add_argument("--pack", dest="pack", action="store_const", const=True, default=None, help=PACK_HELP)
    pack.add_argument("--no-pack", dest="pack", action="store_const", const=False,
                      help="never prepack (default: prepack bf16 weights only)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from the logit of every token already generated (OpenAI's presence_penalty)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this times a token's count in the generated text (OpenAI's frequency_penalty)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--truncate-left", action="store_true",
                   help="drop the oldest prompt tokens to fit the model's context instead of refusing the prompt")
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
    from lmlab.efficient import kv_policy

    return kv_policy(args.kv_policy, budget=parse_kv_budget(args.kv_budget))


def parse_kv_budget(text: str) -> int | float:
    """``--kv-budget``: an integer is tokens kept per row, a number with a point or exponent a fraction of
    the prompt (the policy checks the range: >= 1 token, or in (0, 1])."""
    import math

    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise LmlabError(f"--kv-budget: expected a number of tokens or a fraction, got {text!r}")
    return value


class OpenAIPenalties:
    """Presence and frequency penalties as a logits processor, over the tokens generated so far.

    OpenAI's definition (API reference, "Parameter details"): ``logit[j] -= count[j] * frequency_penalty +
    (count[j] > 0) * presence_penalty``, where ``count`` counts token j in the output (the prompt is not
    penalised, as in vLLM). ``ids`` [B, T + step] holds the left-padded prompts in its first ``prompt_len``
    columns, then the generated tokens."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, ids, logits):
        import torch

        generated = ids[:, self.prompt_len:]  # [B, step]
        counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))
        return logits - self.frequency * counts - self.presence * (counts > 0).to(logits.dtype)  # [B, V]


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """Every sampling option checked before the model is loaded or anything is printed."""
    from lmlab.core.generate import GenerationConfig

    if args.max_new_tokens < 1:
        raise LmlabError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    try:
        GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                         seed=args.seed).validate()
    except LmlabError as err:
        raise LmlabError(f"--{str(err).replace('_', '-')}") from None
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(args, name)
        if not -2.0 <= value <= 2.0:
            raise LmlabError(f"--{name.replace('_', '-')} must be in [-2, 2] (OpenAI's range), got {value}")
    cache_policy(args)  # --kv-policy / --kv-budget checked now, not at the first generation


def generation_config(args: argparse.Namespace, tokenizer, prompt_len: int = 0, max_new_tokens: int | None = None):
    from lmlab.core.generate import GenerationConfig

    stops = None  # None: the model config's eos_token_id (filled from the tokenizer when config.json lacks it)
    if tokenizer is not None and tokenizer.eos_id is not None:
        stops = [tokenizer.eos_id]
        im_end = tokenizer.token_to_id("<|im_end|>")
        if im_end is not None:
            stops.append(im_end)
    processors = ()
    if args.presence_penalty or args.frequency_penalty:
        processors = (OpenAIPenalties(prompt_len, args.presence_penalty, args.frequency_penalty),)
    return GenerationConfig(max_new_tokens=max_new_tokens or args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                            repetition_penalty=args.repetition_penalty, seed=args.seed, stop_strings=tuple(args.stop),
                            stop_token_ids=stops, logits_processors=processors)


def fit_context(ids: list[int], max_new_tokens: int, context: int, truncate_left: bool,
                what: str = "--prompt") -> tuple[list[int], int]:
    """(prompt ids, new-token budget) that fit ``context`` positions, or a one-line refusal.

    A prompt longer than the context is refused unless ``truncate_left`` (then its oldest tokens go, keeping
    room for the new ones); when prompt + new tokens overflow, the budget shrinks to what fits, said on stderr."""
    if len(ids) >= context:
        if not truncate_left:
            raise LmlabError(f"{what}: {len(ids)} tokens do not fit the model's context of {context} tokens "
                             f"(shorten it, or pass --truncate-left to drop its oldest tokens)")
        keep = max(1, context - max_new_tokens)
        print(f"note: prompt truncated from the left, {len(ids)} -> {keep} tokens (context {context})",
              file=sys.stderr)
        ids = ids[-keep:]
    budget = min(max_new_tokens, context - len(ids))
    if budget < max_new_tokens:
        print(f"note: at most {budget} new tokens fit the context of {context} tokens", file=sys.stderr)
    return ids, budget
