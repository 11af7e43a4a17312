"""``generate`` and ``stream_generate``: thin layers over the step-level ``lmlab.core.decoder.Decoder``.

A logits processor is any callable ``fn(ids: LongTensor[B, t], logits: FloatTensor[B, V]) -> FloatTensor[B, V]``
(the transformers signature), or a stateful processor told when rows start, step and finish
(``lmlab.core.processors``); guided-decoding methods plug in here. ``ids`` holds each active row's prompt and
the tokens generated so far, left-padded with ``pad_token_id`` when rows differ in length.

Order of operations each step follows transformers: repetition penalty, user processors, then temperature,
top-k, top-p and min-p, then greedy argmax (temperature 0) or sampling (``lmlab.core.sampling``).

Seeds: with ``seed=s`` row r draws from its own ``torch.Generator`` seeded ``s + r`` (rows counted after
``num_samples`` expansion, grouped by prompt), so a row's samples do not depend on its batch mates and
``num_samples=N`` of one prompt equals N one-row generations seeded s, s+1, ..., s+N-1. An explicit
``generator=`` is shared by all rows (one draw per row, in row order); for one row this is the same as
before per-row generators existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from lmlab.core.cache import CachePolicy
from lmlab.core.decoder import Decoder
from lmlab.core.processors import LogitsProcessor
from lmlab.core.sampling import (SamplingParams, apply_min_p, apply_repetition_penalty, apply_top_k,  # noqa: F401
                                 apply_top_p)
from lmlab.errors import LmlabError


@dataclass
class GenerationConfig:
    """Decoding settings; defaults are greedy decoding that stops at the model's end-of-sequence token."""

    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0  # CTRL (Keskar et al., 2019): divide positive logits, multiply negative
    stop_token_ids: Sequence[int] | None = None  # None = the model config's eos_token_id
    stop_strings: Sequence[str] = ()
    seed: int | None = None
    pad_token_id: int | None = None
    logits_processors: Sequence[LogitsProcessor] = field(default_factory=tuple)  # plain or stateful
    num_samples: int = 1  # N continuations per prompt from one prefill (cache rows forked); rows grouped by prompt
    prefill_chunk_size: int | None = None  # stream prompts through the cache N tokens at a time (None = at once)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              repetition_penalty=self.repetition_penalty)

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        self.sampling.validate()
        if self.num_samples < 1:
            raise LmlabError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.prefill_chunk_size is not None and self.prefill_chunk_size < 1:
            raise LmlabError(f"prefill_chunk_size must be >= 1, got {self.prefill_chunk_size}")


# --- the loop --------------------------------------------------------------------------------------------

def _as_rows(input_ids) -> tuple[list[list[int]], bool]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise LmlabError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        return input_ids.tolist(), True
    rows = [list(r) for r in input_ids]
    if not rows or any(len(r) == 0 for r in rows):
        raise LmlabError("every prompt must contain at least one token")
    return rows, False


def _stop_ids(model, cfg: GenerationConfig) -> set[int]:
    if cfg.stop_token_ids is not None:
        return set(cfg.stop_token_ids)
    eos = model.config.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, tuple) else {eos}


def _resolve_config(config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
    if config is not None and kwargs:
        raise LmlabError(f"pass either a GenerationConfig or keyword options, not both (got config and "
                         f"{', '.join(sorted(kwargs))})")
    cfg = config or GenerationConfig(**kwargs)
    cfg.validate()
    return cfg


def _row_generators(model, cfg: GenerationConfig, generator: torch.Generator | None, n_rows: int):
    if generator is not None:
        return generator
    if cfg.seed is None:
        return None
    return [torch.Generator(device=model.device).manual_seed(cfg.seed + r) for r in range(n_rows)]


@torch.no_grad()
def stream_generate(model, input_ids, config: GenerationConfig | None = None, *, tokenizer=None,
                    generator: torch.Generator | None = None, cache_policy: CachePolicy | None = None,
                    **kwargs) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, step by step: LongTensor [B * num_samples] (pad for rows already
    stopped). Rows that stop leave the batch and cost no more compute."""
    cfg = _resolve_config(config, kwargs)
    rows, _ = _as_rows(input_ids)
    if cfg.stop_strings and tokenizer is None:
        raise LmlabError("stop_strings need tokenizer= to decode the output")
    if cfg.max_new_tokens == 0:
        return
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (model.config.pad_token_id or 0)
    n_rows = len(rows) * cfg.num_samples
    dec = Decoder(model, max_len=max(len(r) for r in rows) + cfg.max_new_tokens, cache_policy=cache_policy,
                  logits_processors=cfg.logits_processors, pad_token_id=pad,
                  prefill_chunk_size=cfg.prefill_chunk_size, tokenizer=tokenizer)
    dec.add(rows, cfg.sampling, max_new_tokens=cfg.max_new_tokens, stop_token_ids=cfg.stop_token_ids,
            stop_strings=cfg.stop_strings, generators=_row_generators(model, cfg, generator, n_rows),
            num_samples=cfg.num_samples)  # request ids 0..n_rows-1 = output rows
    while dec.num_active:
        out = dec.step()
        step = torch.full((n_rows,), pad, dtype=torch.long, device=out.tokens.device)
        step[out.row_ids] = out.tokens
        yield step


def generate(model, input_ids, config: GenerationConfig | None = None, *, tokenizer=None,
             generator: torch.Generator | None = None, cache_policy: CachePolicy | None = None, **kwargs):
    """Generate continuations.

    ``input_ids``: a LongTensor [B, T] returns a LongTensor [B * num_samples, T + n] (rows that stopped early
    are padded with ``pad_token_id``); a list of token-id lists (prompts of different lengths) returns a list
    of lists, each the prompt plus its new tokens up to and including the stop token. With ``num_samples=N``
    rows are grouped by prompt: prompt 0's N samples, then prompt 1's, ...
    """
    cfg = _resolve_config(config, kwargs)
    rows, as_tensor = _as_rows(input_ids)
    n = cfg.num_samples
    steps = list(stream_generate(model, input_ids, cfg, tokenizer=tokenizer, generator=generator,
                                 cache_policy=cache_policy))
    new = torch.stack(steps, dim=1) if steps else torch.zeros(len(rows) * n, 0, dtype=torch.long)
    if as_tensor:
        prompt = input_ids if input_ids.dim() == 2 else input_ids[None]
        return torch.cat([prompt.repeat_interleave(n, dim=0).to(new.device), new], dim=1)
    stops = _stop_ids(model, cfg)
    out = []
    for r, gen in zip([r for r in rows for _ in range(n)], new.tolist()):
        kept = []
        for t in gen:
            kept.append(t)
            if t in stops:
                break
        if cfg.stop_strings and tokenizer is not None:
            kept = _cut_after_stop_string(kept, tokenizer, cfg.stop_strings)
        out.append(r + kept)
    return out


def _cut_after_stop_string(tokens: list[int], tokenizer, stop_strings: Sequence[str]) -> list[int]:
    for n in range(1, len(tokens) + 1):
        if any(s in tokenizer.decode(tokens[:n]) for s in stop_strings):
            return tokens[:n]
    return tokens
