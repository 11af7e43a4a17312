"""KV-cache eviction policies over the core's ``CachePolicy`` interface: ``lmlab.efficient.kv_policy(name, budget)``.

- ``window``: sliding window, the ``budget`` most recent tokens.
- ``sinks``: StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks",
  arXiv:2309.17453): the first ``n_sinks=4`` tokens (the paper's default) + the most recent ones.
- ``h2o``: Heavy-Hitter Oracle (Zhang et al. 2023, arXiv:2306.14048): half the budget to the tokens with the
  largest accumulated attention, half to the most recent (the paper's equal heavy / recent split).
- ``keyformer`` (Adnan et al., MLSys 2024, arXiv:2403.09054): a recent window of 30% of the budget plus the
  "key tokens" with the largest accumulated Gumbel-softmax score, softmax((logits + Gumbel noise) / tau),
  tau = 1 + 0.01 * step (the reference code's ``tau_init=1.0, tau_delta=0.01``; the paper raises tau from 1
  to 2 over the generation). Logits are recovered from the probabilities the core hands to ``observe``:
  log p differs from the logits by a per-query constant, which the softmax cancels.

Budgets: an int is tokens kept per row; a float in (0, 1] is a fraction of the prompt's length, resolved on
the first forward and fixed after it (as the H2O and Keyformer reference code size their caches).

What the core's cache imposes (``core/cache.py``, not edited here; see docs/kv_policies_core_needs.md):
one selection per row for every layer and head (``compact``), so H2O and Keyformer sum their scores over
layers and heads instead of selecting per head; keys are cached after rotation, so StreamingLLM keeps each
token's original position (no re-indexing inside the cache); the prompt must fit the allocation whole, so
memory is bounded during generation, not prefill.

A policy whose budget can never be exceeded (``budget >= `` the cache capacity, or the fraction 1.0) asks
for no attention probabilities, so the model keeps its fast attention path and the output equals the plain
cache's bit for bit.
"""

from __future__ import annotations

import math

import torch

from lmlab.core.cache import CachePolicy, KVCache
from lmlab.efficient.kv_registry import register_policy
from lmlab.errors import LmlabError


class BudgetPolicy(CachePolicy):
    """Keeps at most ``budget`` slots per row: after every forward that overflows it, the highest-scored
    slots survive (``slot_scores``), in their original order."""

    name = "budget"

    def __init__(self, budget: int | float) -> None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise LmlabError(f"KV policy {self.name!r}: budget must be a number of tokens or a fraction, got {budget!r}")
        if isinstance(budget, float) and not 0 < budget <= 1:
            raise LmlabError(f"KV policy {self.name!r}: a fractional budget must lie in (0, 1], got {budget}")
        if isinstance(budget, int) and budget < 1:
            raise LmlabError(f"KV policy {self.name!r}: budget must be at least 1 token, got {budget}")
        self.budget = budget
        self.tokens: int | None = budget if isinstance(budget, int) else None  # resolved budget
        self.capacity_: int | None = None

    def capacity(self, max_len: int) -> int:
        self.capacity_ = max_len  # the prompt must fit whole (the core prefills in one forward)
        return max_len

    @property
    def active(self) -> bool:
        """Whether this policy can ever evict (if not, it needs no scores and changes nothing)."""
        if isinstance(self.budget, float):
            return self.budget < 1.0
        return self.capacity_ is None or self.budget < self.capacity_

    def resolve(self, cache: KVCache) -> int:
        if self.tokens is None:  # a fraction of the prompt, fixed from now on
            self.tokens = max(1, math.floor(self.budget * int(cache.next_pos.max())))
        return self.tokens

    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        """[B, n] float: higher = keep. Empty slots (slot_pos == -1) must score lowest."""
        raise NotImplementedError

    def evict(self, cache: KVCache) -> None:
        if not self.active:
            return
        budget = self.resolve(cache)
        n = int(cache.n_slots.max())
        if n <= budget:
            return
        scores = self.slot_scores(cache, n)  # [B, n]
        scores = scores.masked_fill(cache.slot_pos[:, :n] < 0, float("-inf"))
        keep = scores.topk(budget, dim=1).indices.sort(dim=1).values  # [B, budget] ascending slots
        self.compacted(keep)
        cache.compact(keep)

    def compacted(self, keep: torch.Tensor) -> None:
        """Called with the kept slots just before the cache compacts (policies with per-slot state)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget!r})"


@register_policy("window")
class SlidingWindow(BudgetPolicy):
    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        return cache.slot_pos[:, :n].float()


@register_policy("sinks")
class SinksAndRecent(BudgetPolicy):
    def __init__(self, budget: int | float, n_sinks: int = 4) -> None:
        super().__init__(budget)
        if not isinstance(n_sinks, int) or n_sinks < 0:
            raise LmlabError(f"KV policy 'sinks': n_sinks must be a non-negative integer, got {n_sinks!r}")
        if isinstance(budget, int) and n_sinks >= budget:
            raise LmlabError(f"KV policy 'sinks': budget {budget} leaves no room for recent tokens after "
                             f"{n_sinks} sinks")
        self.n_sinks = n_sinks

    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        pos = cache.slot_pos[:, :n].float()
        return torch.where((pos >= 0) & (pos < self.n_sinks), torch.full_like(pos, float("inf")), pos)


class AccumulatedScorePolicy(BudgetPolicy):
    """Keeps ``recent_share`` of the budget for the most recent tokens and the rest for the highest
    accumulated per-slot score; ``observe`` adds each layer's contribution (summed over heads and queries)."""

    recent_share = 0.5

    def __init__(self, budget: int | float) -> None:
        super().__init__(budget)
        self.score: torch.Tensor | None = None  # [B, capacity] accumulated per slot

    @property
    def needs_attention(self) -> bool:  # read by the model for every layer of every forward
        return self.active

    def contribution(self, probs: torch.Tensor) -> torch.Tensor:
        """[B, S] from one layer's attention probabilities [B, H, T, S]."""
        raise NotImplementedError

    def observe(self, cache: KVCache, layer: int, probs: torch.Tensor) -> None:
        if self.score is None or self.score.shape[0] != probs.shape[0]:
            self.score = torch.zeros(probs.shape[0], cache.capacity, dtype=torch.float32, device=probs.device)
        S = probs.shape[-1]
        self.score[:, :S] += self.contribution(probs.float())

    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        budget = self.resolve(cache)
        recent = int(budget * self.recent_share)
        pos = cache.slot_pos[:, :n]
        newest = pos.max(dim=1, keepdim=True).values  # [B, 1]
        is_recent = pos > newest - recent  # the `recent` newest positions of each row
        score = self.score[:, :n] if self.score is not None else torch.zeros(pos.shape, device=pos.device)
        return torch.where(is_recent, torch.full_like(score, float("inf")), score)

    def compacted(self, keep: torch.Tensor) -> None:
        if self.score is not None:
            kept = self.score.gather(1, keep)
            self.score.zero_()
            self.score[:, :keep.shape[1]] = kept

    def step_done(self) -> None:
        return None

    def evict(self, cache: KVCache) -> None:
        super().evict(cache)
        self.step_done()


@register_policy("h2o")
class HeavyHitters(AccumulatedScorePolicy):
    """H2O: accumulated attention probability each key received; heavy / recent = 50 / 50."""

    def __init__(self, budget: int | float, recent_share: float = 0.5) -> None:
        super().__init__(budget)
        if not 0 <= recent_share <= 1:
            raise LmlabError(f"KV policy 'h2o': recent_share must lie in [0, 1], got {recent_share}")
        self.recent_share = recent_share

    def contribution(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.sum(dim=(1, 2))  # [B, S]


@register_policy("keyformer")
class Keyformer(AccumulatedScorePolicy):
    """Keyformer: accumulated Gumbel-softmax scores with a rising temperature; recent window = 30% of budget."""

    def __init__(self, budget: int | float, recent_share: float = 0.3, tau_init: float = 1.0,
                 tau_delta: float = 0.01, seed: int = 0) -> None:
        super().__init__(budget)
        if not 0 <= recent_share <= 1:
            raise LmlabError(f"KV policy 'keyformer': recent_share must lie in [0, 1], got {recent_share}")
        if tau_init <= 0 or tau_delta < 0:
            raise LmlabError("KV policy 'keyformer': tau_init must be positive and tau_delta non-negative")
        self.recent_share, self.tau_init, self.tau_delta = recent_share, tau_init, tau_delta
        self.step = 0  # forwards seen: the prompt is step 0
        self.generator = torch.Generator().manual_seed(seed)

    def contribution(self, probs: torch.Tensor) -> torch.Tensor:
        tau = self.tau_init + self.step * self.tau_delta
        u = torch.rand(probs.shape, generator=self.generator).to(probs.device).clamp_(1e-20, 1.0)
        gumbel = -torch.log(-torch.log(u))  # standard Gumbel(0, 1) noise
        logits = probs.log()  # = attention logits - logsumexp per query; masked keys stay -inf
        return ((logits + gumbel) / tau).softmax(dim=-1).nan_to_num(0.0).sum(dim=(1, 2))  # [B, S]

    def step_done(self) -> None:
        self.step += 1
