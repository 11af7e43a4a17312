"""Calibration and evaluation token windows from text: GPTQ's random segments, and fixed windows for perplexity.

GPTQ (Frantar et al. 2023, Sec. 5 "Calibration data") samples 128 random 2048-token segments from C4; here the
segments come from whatever text the user gives (or the synthetic world's documents), with a seed.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from lmlab.errors import LmlabError


def token_stream(tokenizer, texts: Iterable[str]) -> torch.Tensor:
    """All texts tokenized and joined by newlines, as one LongTensor [n_tokens]."""
    texts = list(texts)
    if not texts:
        raise LmlabError("calibration text is empty")
    return torch.tensor(tokenizer.encode("\n".join(texts)), dtype=torch.long)


def random_segments(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """[n_samples, seq_len] windows starting at random offsets of ``stream`` (GPTQ's calibration sampling)."""
    if n_samples < 1 or seq_len < 2:
        raise LmlabError(f"calibration needs n_samples >= 1 and seq_len >= 2, got {n_samples}, {seq_len}")
    if len(stream) <= seq_len:
        raise LmlabError(f"calibration text has {len(stream)} tokens, fewer than seq_len {seq_len} + 1")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n_samples,), generator=g)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping [n, seq_len] windows covering ``stream`` (the tail shorter than seq_len is dropped)."""
    n = len(stream) // seq_len
    if n == 0:
        raise LmlabError(f"text has {len(stream)} tokens, fewer than one window of {seq_len}")
    return stream[:n * seq_len].view(n, seq_len)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token NLL) over windows ``ids`` [n, T] (each window scored on its own)."""
    total, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        batch = ids[i:i + batch_size]
        logits = model(batch[:, :-1]).float()  # [b, T-1, V]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total += nll.item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)
