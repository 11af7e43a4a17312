"""Does a model copy from its context? The repeated-random-tokens test of induction heads.

Why: in-context retrieval (key-value lists, needles) needs a copy mechanism -- induction heads (Olsson et al.
2022, "In-context learning and induction heads"). Their signature is cheap to measure on any model: feed a
segment of uniformly random tokens twice; a model with induction heads predicts the second copy far better
than the first (which is unpredictable), one without does not. ``copy_gain`` is that drop in nats/token; it told
us why the world reference retrieves nothing (docs/claims.md, issue 11) before any long-context run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class CopyScore:
    first_nll: float  # mean nats/token over the first copy (positions 1..L-1): chance level, ~log(vocab)
    second_nll: float  # mean nats/token over the second copy
    length: int
    rows: int

    @property
    def copy_gain(self) -> float:
        """first - second: ~0 without a copy mechanism, several nats with induction heads."""
        return self.first_nll - self.second_nll


@torch.no_grad()
def repeated_tokens_score(model, length: int = 50, rows: int = 4, seed: int = 0, low: int = 0,
                          high: int | None = None) -> CopyScore:
    """Next-token NLL on ``rows`` sequences ``[x, x]`` with ``x`` of ``length`` tokens drawn uniformly from
    ``[low, high)`` (default: the whole vocabulary). Needs a context of at least ``2 * length`` tokens."""
    vocab = int(model.config.vocab_size)
    high = vocab if high is None else high
    if length < 2 or rows < 1:
        raise LmlabError(f"repeated_tokens_score: need length >= 2 and rows >= 1, got {length} and {rows}")
    if not 0 <= low < high <= vocab:
        raise LmlabError(f"repeated_tokens_score: token range [{low}, {high}) must lie in [0, {vocab})")
    context = getattr(model.config, "max_seq_len", None)
    if context is not None and 2 * length > context:
        raise LmlabError(f"repeated_tokens_score: 2 x length = {2 * length} exceeds the model's context {context}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(low, high, (rows, length), generator=gen)  # [R, L]
    ids = torch.cat([x, x], dim=1)  # [R, 2L]
    param = next(model.parameters())
    logits = model(ids.to(param.device))  # [R, 2L, V]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [R, 2L-1, V]
    nll = -logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0].cpu()  # [R, 2L-1]: predicting token t+1
    first = nll[:, : length - 1].mean().item()  # targets 1..L-1: the first copy
    second = nll[:, length:].mean().item()  # targets L+1..2L-1: the second copy after its first token
    return CopyScore(first, second, length, rows)
