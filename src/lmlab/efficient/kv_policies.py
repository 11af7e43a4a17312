"""KV-cache eviction policies over the core's ``CachePolicy`` interface: ``lmlab.efficient.kv_policy(name, budget)``.

- ``window``: sliding window, the ``budget`` most recent tokens (original positions).
- ``sinks``: StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks",
  arXiv:2309.17453): the first ``n_sinks=4`` tokens (the paper's default) + the most recent ones. Positions are
  assigned by place in the cache, as the paper does (its Sec. 3.2: "when determining the relative distance
  and adding positional information to tokens, StreamingLLM focuses on positions within the cache rather than
  those in the original text"): after every eviction the kept tokens get positions 0..K-1 and the next token
  K. Its code caches keys before rotation and rotates at attention time; here the cache keeps rotated keys
  and ``KVCache.reposition`` re-rotates them by the position difference (the same rotation up to float
  rounding; tests/efficient/test_kv_fidelity.py checks it against a recomputation at the paper's positions).
  Models without rotary positions keep original positions (``reindex="auto"``).
- ``h2o``: Heavy-Hitter Oracle (Zhang et al. 2023, arXiv:2306.14048): half the budget to the tokens with the
  largest accumulated attention, half to the most recent (the paper's equal heavy / recent split), selected
  per layer and per head as in the paper's eviction (each head keeps its own heavy hitters; with grouped-query
  attention the query heads sharing a KV head add their scores).
- ``keyformer`` (Adnan et al., MLSys 2024, arXiv:2403.09054): a recent window of 30% of the budget plus the
  "key tokens" with the largest accumulated Gumbel-softmax score, softmax((logits + Gumbel noise) / tau),
  tau = 1 + 0.01 * step (the reference code's ``tau_init=1.0, tau_delta=0.01``; the paper raises tau from 1
  to 2 over the generation), per layer and head like H2O, on which its code builds. The noise is i.i.d.
  Gumbel(0, 1) per (layer, head, query, key) and fresh at every step, as in the paper (its reference code
  calls ``gumbel_softmax`` on the raw attention logits at every forward), drawn from a hash of (seed, layer,
  head, query index, key position) so that a row's selection does not depend on the rest of its batch.
  Logits are recovered from the probabilities the core hands to ``observe``: log p differs from the logits
  by a per-query constant, which the softmax cancels.

``per_head=False`` on h2o / keyformer sums the scores over layers and heads and keeps one set per row (the
session-3 behaviour; needed on models with sliding-window layers, whose mask is per row).

Block eviction (``slack``): the papers evict one token per generated token. Here the cache may grow to
``budget + slack`` tokens and is then compacted back to ``budget`` in one gather, so the cost of selecting and
moving tokens is paid once every ``slack`` steps instead of every step (for StreamingLLM also the key
re-rotation). The selection rule is unchanged: at every compaction the policy keeps exactly the tokens its
paper's rule keeps (for the deterministic ``window`` and ``sinks``, the very tokens per-step eviction would
hold at that step: tests/efficient/test_kv_blocks.py checks it); between compactions the model also sees
up to ``slack`` newer-than-budget tokens that per-step eviction would already have dropped. ``slack=None``
(default) is an eighth of the budget (at least 1 token), so the cache holds at most 12.5% more than the
budget; ``slack=0`` is the papers' per-step eviction.

Scores (h2o, keyformer) are needed on every forward (they accumulate), so those policies take the model's
explicit attention path; for grouped-query models it computes each KV head's query group in one matmul,
without copying keys and values per query head, and a decode step computes only the new query row's
probabilities, q Kᵀ, which attention computes anyway. A decode step's probabilities are small, so they are scored for all layers
in one batched update after the last layer (``AccumulatedScorePolicy.batch_limit``), not layer by layer:
the same element-wise operations, the same evictions, a fraction of the per-op dispatch.

Budgets: an int is tokens kept per row; a float in (0, 1] is a fraction of the prompt's length (the longest
row's, as the Decoder declares it), fixed on the first forward (as the H2O and Keyformer reference code size
their caches).

Memory: the cache starts small and grows on demand (``CachePolicy.grow``) to at most budget + slack + the
widest forward, so with chunked prefill (``prefill_chunk_size=C`` in ``generate`` / ``Decoder``) a long prompt
streams through budget + slack + C slots, evicting after every chunk; in one-shot prefill the prompt must fit whole.

A policy whose budget can never be exceeded (``budget >= `` the cache's ``max_len``, or the fraction 1.0)
asks for no attention probabilities and allocates like the plain cache, so the model keeps its fast attention
path and the output equals the plain cache's bit for bit.
"""

from __future__ import annotations

import math

import torch

from lmlab.core import native
from lmlab.core.cache import CachePolicy, KVCache
from lmlab.core.hooks import current_context
from lmlab.efficient.kv_registry import register_policy
from lmlab.errors import LmlabError


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (multiply-xorshift, full avalanche) of int64 values in [0, 2**32); every product
    stays below 2**63, so nothing overflows. Works in place on ``x`` (a fresh tensor) and returns it."""
    x.bitwise_xor_(x >> 16).mul_(0x45D9F3B).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 16).mul_(0x45D9F3B).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


def layers_gumbel_noise(seed: int, layers: torch.Tensor, query_index: torch.Tensor, key_pos: torch.Tensor,
                        group: int) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise [L', B, n_kv * group, T, S] for the layers ``layers`` [L'] at once (one
    decode step draws every layer's noise in one pass: one native call on CPU, ``lmlab.core.native``, else ~20
    integer tensor ops over all layers, the same bits),
    a pure function of (seed, layer, query head, the query's index in its row, the key's position): a row
    draws the same noise whatever shares its batch, however its cache slots are laid out and however its
    prompt is chunked (a generator drawing [B, H, T, S] would make a row's selection depend on its batch mates).

    ``query_index`` [B, T]: true token indices of the queries; ``key_pos`` [L', B, n_kv, S]: the position of
    the token in each slot of each layer and KV head (-1 for empty slots, whose probability is 0 anyway);
    ``group``: query heads per KV head.
    """
    Lp, B, n_kv, S = key_pos.shape
    T = query_index.shape[1]
    u = native.hash_uniform(seed, layers, query_index, key_pos, group)  # the same bits in one call (CPU)
    if u is None:
        u = _hash_uniform(seed, layers, query_index, key_pos, group)
    return u.log_().neg_().log_().neg_().view(Lp, B, n_kv * group, T, S)


def _hash_uniform(seed: int, layers: torch.Tensor, query_index: torch.Tensor, key_pos: torch.Tensor,
                  group: int) -> torch.Tensor:
    """The uniform noise of ``layers_gumbel_noise`` with tensor ops: [L', B, n_kv, group, T, S] in (0, 1)."""
    heads = torch.arange(key_pos.shape[2] * group, device=key_pos.device).view(1, 1, key_pos.shape[2], group, 1)
    layer = layers.to(key_pos.device).view(-1, 1, 1, 1, 1)
    base = _mix32((heads * 0x9E3779B + layer * 0x7F4A7C1 + (seed & _MASK32)) & _MASK32)  # [L', 1, n_kv, group, 1]
    base = _mix32(base ^ (query_index[None, :, None, None, :] & _MASK32))  # [L', B, n_kv, group, T]
    bits = _mix32(base[..., None] ^ (key_pos[:, :, :, None, None, :] & _MASK32))  # [L', B, n_kv, group, T, S]
    return (bits >> 8).float().add_(0.5).mul_(2.0 ** -24)  # uniform in (0, 1), 24 bits


def row_gumbel_noise(seed: int, layer: int, query_index: torch.Tensor, key_pos: torch.Tensor,
                     group: int) -> torch.Tensor:
    """``layers_gumbel_noise`` of one layer: [B, n_kv * group, T, S] for ``key_pos`` [B, n_kv, S]."""
    layers = torch.tensor([layer], dtype=torch.long)
    return layers_gumbel_noise(seed, layers, query_index, key_pos[None], group)[0]


class BudgetPolicy(CachePolicy):
    """Keeps at most ``budget`` slots per row: after every forward that overflows it, the highest-scored
    slots survive (``slot_scores``: one score per row and slot [B, n], or per layer, row, KV head and slot
    [L, B, n_kv, n] for a per-head selection), in their original order."""

    name = "budget"

    def __init__(self, budget: int | float, slack: int | None = None) -> None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise LmlabError(f"KV policy {self.name!r}: budget must be a number of tokens or a fraction, got {budget!r}")
        if isinstance(budget, float) and not 0 < budget <= 1:
            raise LmlabError(f"KV policy {self.name!r}: a fractional budget must lie in (0, 1], got {budget}")
        if isinstance(budget, int) and budget < 1:
            raise LmlabError(f"KV policy {self.name!r}: budget must be at least 1 token, got {budget}")
        if slack is not None and (isinstance(slack, bool) or not isinstance(slack, int) or slack < 0):
            raise LmlabError(f"KV policy {self.name!r}: slack must be a non-negative number of tokens or None, "
                             f"got {slack!r}")
        self.budget, self.slack = budget, slack
        self.tokens: int | None = budget if isinstance(budget, int) else None  # resolved budget
        self.max_len: int | None = None

    def slack_tokens(self) -> int:
        """Tokens the cache may hold past the budget before a block eviction (needs the resolved budget)."""
        if self.slack is not None:
            return self.slack
        return max(1, (self.tokens or 0) // 8)

    def capacity(self, max_len: int) -> int:
        """Inactive: the whole ``max_len`` (the plain cache's allocation). Active: start at the budget and
        grow on demand (``grow``), so prompt chunks and generation alike stay within budget + slack + one
        forward."""
        self.max_len = max_len
        if not self.active:
            return max_len
        if self.tokens is None:
            return min(max_len, 17)
        return min(max_len, self.tokens + self.slack_tokens() + 1)

    def grow(self, cache: KVCache, needed: int) -> int:
        limit = None if self.tokens is None else self.tokens + self.slack_tokens() + 1
        target = needed if limit is None else min(2 * cache.capacity, limit)
        return max(needed, target)  # never past budget + slack + the widest forward once the budget is known

    @property
    def active(self) -> bool:
        """Whether this policy can ever evict (if not, it needs no scores and changes nothing)."""
        if isinstance(self.budget, float):
            return self.budget < 1.0
        return self.max_len is None or self.budget < self.max_len

    def resolve(self, cache: KVCache) -> int:
        """The budget in tokens; a fraction is taken of the longest prompt (declared by the Decoder, else the
        tokens seen so far, i.e. the prompt of a one-shot prefill) on the first forward, then fixed."""
        if self.tokens is None:
            ctx = current_context()
            declared = ctx.prompt_lengths if ctx is not None else None
            prompt = int(declared.max()) if declared is not None else int(cache.next_pos.max())
            self.tokens = max(1, math.floor(self.budget * prompt))
        return self.tokens

    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        """[B, n] or [L, B, n_kv, n] float: higher = keep (empty slots are masked by the caller)."""
        raise NotImplementedError

    def evict(self, cache: KVCache) -> None:
        if not self.active:
            return
        budget = self.resolve(cache)
        uniform = cache.uniform_slots  # every row's slot count when they agree (no tensor read)
        n = uniform if uniform is not None else int(cache.n_slots.max())
        if n <= budget + self.slack_tokens():
            return  # block eviction: let the cache grow by up to `slack` tokens, then compact in one gather
        scores = self.slot_scores(cache, n)  # [B, n] or [L, B, n_kv, n]
        pos = cache.slot_pos[:, :n] if scores.dim() == 2 else cache.positions_per_head()[..., :n]
        scores = scores.masked_fill(pos < 0, float("-inf"))
        keep = scores.topk(budget, dim=-1).indices  # [..., budget]
        empty = pos.gather(-1, keep) < 0
        keep = keep.gather(-1, (keep + n * empty).argsort(dim=-1))  # real tokens first, in slot order
        self.compacted(keep)
        cache.compact(keep)
        self.after_compact(cache)

    def compacted(self, keep: torch.Tensor) -> None:
        """Called with the kept slots just before the cache compacts (policies with per-slot state)."""
        return None

    def after_compact(self, cache: KVCache) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget!r})"


@register_policy("window")
class SlidingWindow(BudgetPolicy):
    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        return cache.slot_pos[:, :n].float()


@register_policy("sinks")
class SinksAndRecent(BudgetPolicy):
    """StreamingLLM: ``n_sinks`` first tokens + the most recent; ``reindex`` "auto" (rotary models: positions
    by place in the cache, the paper's scheme), True (require it) or False (keep original positions)."""

    def __init__(self, budget: int | float, n_sinks: int = 4, reindex: bool | str = "auto",
                 slack: int | None = None) -> None:
        super().__init__(budget, slack=slack)
        if not isinstance(n_sinks, int) or n_sinks < 0:
            raise LmlabError(f"KV policy 'sinks': n_sinks must be a non-negative integer, got {n_sinks!r}")
        if isinstance(budget, int) and n_sinks >= budget:
            raise LmlabError(f"KV policy 'sinks': budget {budget} leaves no room for recent tokens after "
                             f"{n_sinks} sinks")
        if reindex not in (True, False, "auto"):
            raise LmlabError(f"KV policy 'sinks': reindex must be True, False or 'auto', got {reindex!r}")
        self.n_sinks, self.reindex = n_sinks, reindex

    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        pos = cache.slot_pos[:, :n].float()
        return torch.where((pos >= 0) & (pos < self.n_sinks), torch.full_like(pos, float("inf")), pos)

    def after_compact(self, cache: KVCache) -> None:
        rotary = cache.config.pos_type == "rotary"
        if self.reindex is True and not rotary:
            raise LmlabError(f"KV policy 'sinks': reindex=True needs rotary positions; this model has "
                             f"{cache.config.pos_type!r} positions (use reindex='auto' or False)")
        if self.reindex is False or not rotary:
            return
        slots = torch.arange(cache.capacity, device=cache.slot_pos.device).expand_as(cache.slot_pos)
        cache.reposition(torch.where(cache.slot_pos >= 0, slots, -1))  # kept tokens at 0..K-1, next at K


class AccumulatedScorePolicy(BudgetPolicy):
    """Keeps ``recent_share`` of the budget for the most recent tokens and the rest for the highest
    accumulated score. ``observe`` receives each layer's probabilities and the contributions are added per
    KV head ([L, B, n_kv, slots] state); ``per_head`` selects per layer and head (the papers), else on the sum
    over layers and heads per row.

    Batched scoring: a decode step's probabilities are small ([B, H, 1, S] per layer), and scoring them layer
    by layer costs more in per-op dispatch than in arithmetic. While one forward's probabilities over all
    layers stay under ``batch_limit`` elements, ``observe`` only holds them and ``evict`` (called once after
    the last layer) scores every layer in one pass over [L, B, H, T, S]: the same element-wise operations, so
    the same scores and the same evictions (tests/efficient/test_kv_equivalence.py). Larger forwards (prompt
    chunks) are scored per layer as they come, so memory stays one layer's probabilities."""

    recent_share = 0.5
    batch_limit = 1 << 21  # elements of [L, B, H, T, S] held for one batched update (8 MB in fp32)

    def __init__(self, budget: int | float, per_head: bool = True, slack: int | None = None) -> None:
        super().__init__(budget, slack=slack)
        if not isinstance(per_head, bool):
            raise LmlabError(f"KV policy {self.name!r}: per_head must be True or False, got {per_head!r}")
        self.per_head = per_head
        self.score: torch.Tensor | None = None  # [L, B, n_kv, capacity] accumulated per slot
        self._held: dict[int, torch.Tensor] = {}  # layer -> this forward's probabilities [B, H, T, S], not yet scored

    @property
    def needs_attention(self) -> bool:  # read by the model for every layer of every forward
        return self.active

    def contribution(self, probs: torch.Tensor, cache: KVCache, layers: torch.Tensor) -> torch.Tensor:
        """[L', B, H, T, S] per query from the attention probabilities [L', B, H, T, S] of the layers
        ``layers`` [L'] (summed over the real queries by ``_accumulate``)."""
        raise NotImplementedError

    def _score_for(self, cache: KVCache) -> torch.Tensor:
        L, B, n_kv, cap = cache.k.shape[:4]
        if self.score is None or self.score.shape[1] != B:
            self.score = torch.zeros(L, B, n_kv, cap, dtype=torch.float32, device=cache.k.device)
        elif self.score.shape[-1] < cap:  # the cache grew
            pad = self.score.new_zeros(L, B, n_kv, cap - self.score.shape[-1])
            self.score = torch.cat([self.score, pad], dim=-1)
        return self.score

    def observe(self, cache: KVCache, layer: int, probs: torch.Tensor) -> None:
        if cache.k.shape[0] * probs.numel() <= self.batch_limit:
            self._held[layer] = probs  # scored with the other layers' after the forward (``_flush``)
            return
        self._accumulate(cache, layer, [probs])

    def _accumulate(self, cache: KVCache, first: int, layer_probs: list[torch.Tensor]) -> None:
        """Add the contributions of ``layer_probs`` (one [B, H, T, S] per layer, the layers first, first + 1, ...):
        in one pass of lmlab's kernel where it applies (``native.accumulate_scores``), else with tensor ops."""
        score = self._score_for(cache)
        if self._accumulate_native(cache, score, first, layer_probs):
            return
        probs = torch.stack(layer_probs)  # [L', B, H, T, S]
        Lp, B, H, _, S = probs.shape
        n_kv = score.shape[2]
        layers = torch.arange(first, first + Lp)
        per_query = self.contribution(probs.float(), cache, layers)  # [L', B, H, T, S]
        real = cache.new_token_mask()  # [B, T] or None: right-padded queries attend to nothing real
        if real is not None:
            per_query = per_query * real[None, :, None, :, None]
        per_query_head = per_query.sum(dim=3)  # [L', B, H, S]
        score[first:first + Lp, :, :, :S] += per_query_head.view(Lp, B, n_kv, H // n_kv, S).sum(dim=3)

    def _flush(self, cache: KVCache) -> None:
        """Score the held probabilities: every layer at once when all of them are held (the usual case),
        else each held layer alone (a forward that stopped part-way)."""
        held, self._held = self._held, {}
        if not held:
            return
        if sorted(held) == list(range(cache.k.shape[0])):
            self._accumulate(cache, 0, [held[i] for i in range(len(held))])
            return
        for layer in sorted(held):
            self._accumulate(cache, layer, [held[layer]])

    def _accumulate_native(self, cache: KVCache, score: torch.Tensor, first: int,
                           layer_probs: list[torch.Tensor]) -> bool:
        """``score`` += the contributions, by ``native.accumulate_scores``; False where it does not apply (a policy
        whose contribution the kernel does not compute, no kernels, probabilities not fp32 CPU)."""
        mode = self._native_mode(cache, first, layer_probs)
        if mode is None or not score.is_cpu:
            return False
        for p in layer_probs:
            if not (type(p) is torch.Tensor and p.dtype == torch.float32 and p.is_cpu and p.is_contiguous()):
                return False
        real = cache.new_token_mask()  # [B, T] or None
        real = native.NO_TENSOR if real is None else real.to(torch.uint8).contiguous()
        return native.accumulate_scores(score, layer_probs, first, real, *mode)

    def _native_mode(self, cache: KVCache, first: int, layer_probs: list[torch.Tensor]) -> tuple | None:
        """(keyformer, seed, tau [B], query_index [B, T], key_pos [L', B, n_kv, >= S]) for the kernel, or None
        where it does not compute this policy's contribution."""
        return None

    def slot_scores(self, cache: KVCache, n: int) -> torch.Tensor:
        budget = self.resolve(cache)
        recent = int(budget * self.recent_share)
        score = self._score_for(cache)[..., :n]  # [L, B, n_kv, n]
        if self.per_head:
            pos = cache.positions_per_head()[..., :n]  # [L, B, n_kv, n]
        else:
            pos, score = cache.slot_pos[:, :n], score.sum(dim=(0, 2))  # [B, n]
        newest = pos.max(dim=-1, keepdim=True).values
        is_recent = pos > newest - recent  # the `recent` newest positions of each row (and head)
        return torch.where(is_recent, torch.full_like(score, float("inf")), score)

    def compacted(self, keep: torch.Tensor) -> None:
        if self.score is None:
            return
        L, B, n_kv, _ = self.score.shape
        full = keep if keep.dim() == 4 else keep[None, :, None, :].expand(L, B, n_kv, keep.shape[-1])
        kept = self.score.gather(3, full)
        self.score.zero_()
        self.score[..., :full.shape[-1]] = kept

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.score is not None:
            self.score = self.score[:, rows.to(self.score.device)].contiguous()

    def append_rows(self, other: "CachePolicy") -> None:
        self.score = self._merged(getattr(other, "score", None))

    def _merged(self, theirs: torch.Tensor | None) -> torch.Tensor | None:
        """Row-concatenated scores (a missing side counts as zeros; slot dims padded to the larger)."""
        mine = self.score
        if mine is None or theirs is None:
            return None  # rebuilt on the next observe: a side that never observed has no scores to keep
        cap = max(mine.shape[-1], theirs.shape[-1])
        pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:3], cap - t.shape[-1])], -1)  # noqa: E731
        return torch.cat([pad(mine), pad(theirs)], dim=1)

    def step_done(self, cache: KVCache) -> None:
        return None

    def evict(self, cache: KVCache) -> None:
        self._flush(cache)
        super().evict(cache)
        self.step_done(cache)


@register_policy("h2o")
class HeavyHitters(AccumulatedScorePolicy):
    """H2O: accumulated attention probability each key received; heavy / recent = 50 / 50."""

    def __init__(self, budget: int | float, recent_share: float = 0.5, per_head: bool = True,
                 slack: int | None = None) -> None:
        super().__init__(budget, per_head=per_head, slack=slack)
        if not 0 <= recent_share <= 1:
            raise LmlabError(f"KV policy 'h2o': recent_share must lie in [0, 1], got {recent_share}")
        self.recent_share = recent_share

    def contribution(self, probs: torch.Tensor, cache: KVCache, layers: torch.Tensor) -> torch.Tensor:
        return probs  # [L', B, H, T, S]

    def _native_mode(self, cache: KVCache, first: int, layer_probs: list[torch.Tensor]) -> tuple | None:
        if type(self).contribution is not HeavyHitters.contribution:  # a subclass with its own contribution
            return None
        return False, 0, native.NO_TENSOR, native.NO_TENSOR, native.NO_TENSOR


@register_policy("keyformer")
class Keyformer(AccumulatedScorePolicy):
    """Keyformer: accumulated Gumbel-softmax scores with a rising temperature; recent window = 30% of budget."""

    def __init__(self, budget: int | float, recent_share: float = 0.3, tau_init: float = 1.0,
                 tau_delta: float = 0.01, seed: int = 0, per_head: bool = True, slack: int | None = None) -> None:
        super().__init__(budget, per_head=per_head, slack=slack)
        if not 0 <= recent_share <= 1:
            raise LmlabError(f"KV policy 'keyformer': recent_share must lie in [0, 1], got {recent_share}")
        if tau_init <= 0 or tau_delta < 0:
            raise LmlabError("KV policy 'keyformer': tau_init must be positive and tau_delta non-negative")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LmlabError(f"KV policy 'keyformer': seed must be an integer, got {seed!r}")
        self.recent_share, self.tau_init, self.tau_delta = recent_share, tau_init, tau_delta
        self.seed = seed
        # [B] decode forwards (one new token each) per row: the paper's generation step t in
        # tau_t = tau_init + t * tau_delta. Prompt chunks do not count (the prompt is step 0 however it is
        # chunked), and a row keeps its own count when rows leave or join a running batch.
        self.row_step: torch.Tensor | None = None

    def _steps(self, B: int, device) -> torch.Tensor:
        if self.row_step is None or self.row_step.shape[0] != B:
            self.row_step = torch.zeros(B, dtype=torch.long, device=device)
        return self.row_step

    def _tau(self, B: int, device) -> torch.Tensor:
        """[B] each row's temperature tau_t = tau_init + t * tau_delta at its generation step t."""
        return self.tau_init + self._steps(B, device) * self.tau_delta

    def contribution(self, probs: torch.Tensor, cache: KVCache, layers: torch.Tensor) -> torch.Tensor:
        Lp, B, H, T, S = probs.shape
        tau = self._tau(B, probs.device).to(probs.dtype)  # [B]
        key_pos = cache.positions_per_head()[int(layers[0]):int(layers[-1]) + 1, :, :, :S]  # [L', B, n_kv, S]
        gumbel = layers_gumbel_noise(self.seed, layers, cache.token_index, key_pos, H // key_pos.shape[2])
        scores = probs.log()  # = attention logits - logsumexp per query; masked keys stay -inf
        scores = scores.add_(gumbel).div_(tau[None, :, None, None, None])  # in place: the same values, no copies
        return scores.softmax(dim=-1).nan_to_num_(0.0)  # [L', B, H, T, S]

    def _native_mode(self, cache: KVCache, first: int, layer_probs: list[torch.Tensor]) -> tuple | None:
        if type(self).contribution is not Keyformer.contribution or cache.token_index is None:
            return None
        B = layer_probs[0].shape[0]
        tau = self._tau(B, layer_probs[0].device).to(torch.float32)  # [B]
        key_pos = cache.positions_per_head()[first:first + len(layer_probs)]  # [L', B, n_kv, capacity] (a view)
        return True, self.seed, tau.contiguous(), cache.token_index.contiguous(), key_pos

    def step_done(self, cache: KVCache) -> None:
        index = cache.token_index  # [B, T] of the forward just done
        if index is None:
            return
        ctx = current_context()  # the decoder declares its phase; a bare cached forward of one token decodes
        if (ctx.phase == "decode") if ctx is not None else index.shape[1] == 1:
            self._steps(index.shape[0], index.device).add_(1)

    def select_rows(self, rows: torch.Tensor) -> None:
        super().select_rows(rows)
        if self.row_step is not None:
            self.row_step = self.row_step[rows.to(self.row_step.device)]

    def append_rows(self, other: "CachePolicy") -> None:
        super().append_rows(other)
        theirs = getattr(other, "row_step", None)
        # a side that never scored has no counts: restart at 0 on the next forward, as its scores do
        self.row_step = None if self.row_step is None or theirs is None else torch.cat([self.row_step, theirs])
