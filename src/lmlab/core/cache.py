"""KV cache: an object passed into ``forward``, preallocated, with per-row lengths and an eviction policy.

Keys are stored after rotary embedding, so a cached key never needs its position again except to build the
attention mask; each slot records the token position it holds (``slot_pos``), which is what lets a policy
evict slots (sliding window, sinks + recent, heavy hitters) without breaking causality or positions.
"""

from __future__ import annotations

import copy

import torch

from lmlab.core.config import ModelConfig
from lmlab.errors import LmlabError


class CachePolicy:
    """Decides which cached tokens to keep. The base class keeps everything.

    Subclasses override ``capacity`` (slots to allocate for a requested length), ``observe`` (sees each
    layer's attention probabilities [B, n_heads, T, S] when ``needs_attention`` is True, which makes the
    model take the eager attention path) and ``evict`` (called after every forward; may call
    ``cache.compact``).

    State: a ``KVCache`` never mutates the policy object it is given; it works on ``policy.fresh()`` (a deep
    copy by default), so one configured policy can be handed to many caches and generations without one
    generation's accumulated scores leaking into the next (read a cache's live state from ``cache.policy``).
    A policy that keeps per-row state (scores per batch row) also overrides ``select_rows`` and
    ``append_rows``, which the cache calls when rows leave or join a running batch (continuous batching).
    """

    needs_attention = False

    def fresh(self) -> "CachePolicy":
        """A copy without shared mutable state, for one new cache (override if a deep copy is wrong or costly)."""
        return copy.deepcopy(self)

    def capacity(self, max_len: int) -> int:
        return max_len

    def observe(self, cache: "KVCache", layer: int, probs: torch.Tensor) -> None:
        return None

    def evict(self, cache: "KVCache") -> None:
        return None

    def select_rows(self, rows: torch.Tensor) -> None:
        """The cache kept only batch rows ``rows`` [B'] (in that order)."""
        return None

    def append_rows(self, other: "CachePolicy") -> None:
        """The rows of another cache (whose policy is ``other``) were appended after this cache's rows."""
        return None


class KVCache:
    """Preallocated keys/values for every layer: ``k``, ``v`` of shape [n_layers, B, n_kv_heads, capacity, d_head].

    Per row b: ``n_slots[b]`` slots are filled, ``next_pos[b]`` tokens have been seen (they differ once a
    policy evicts), ``slot_pos[b, j]`` is the position of the token in slot j (-1 = empty).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", policy: CachePolicy | None = None) -> None:
        if batch_size < 1 or max_len < 1:
            raise LmlabError(f"KVCache: batch_size and max_len must be positive, got {batch_size}, {max_len}")
        self.config = config
        self.policy = policy.fresh() if policy is not None else CachePolicy()
        self.capacity = self.policy.capacity(max_len)
        shape = (config.n_layers, batch_size, config.kv_heads, self.capacity, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_pos = torch.full((batch_size, self.capacity), -1, dtype=torch.long, device=device)
        self.n_slots = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._uniform: int | None = 0  # common n_slots when every row has the same (fast paths), else None
        self._all_real = True  # the current forward's new tokens are all real (no right padding)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def is_empty(self) -> bool:
        """True when no row holds a token (decided without reading tensors)."""
        return self._uniform == 0

    # -- the model calls these, in this order, once per forward ------------------------------------------
    def begin(self, n_new: int, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve slots for ``n_new`` tokens per row; returns (positions [B, T], slots [B, T]).

        ``lengths`` [B] says how many of the T tokens are real per row (right padding); padded tokens get
        a slot that stays marked empty and is reused by the row's next real token.
        """
        ar = torch.arange(n_new, device=self.k.device)
        positions = self.next_pos[:, None] + ar  # [B, T]
        slots = self.n_slots[:, None] + ar  # [B, T]
        # the common case (every row at the same slot count) is decided in Python, without reading tensors
        needed = self._uniform + n_new if self._uniform is not None else int(slots.max()) + 1
        if needed > self.capacity:
            raise LmlabError(f"KV cache is full: capacity {self.capacity} tokens, needs {needed}")
        self._all_real = lengths is None or bool((lengths == n_new).all())
        if lengths is None and self._uniform is not None:
            self.slot_pos[:, self._uniform:needed] = positions
        else:
            real = ar[None, :] < lengths[:, None] if lengths is not None else torch.ones_like(slots, dtype=torch.bool)
            self.slot_pos.scatter_(1, slots, torch.where(real, positions, -1))
        self._pending = lengths if lengths is not None else torch.full_like(self.n_slots, n_new)
        self._slots, self._n_new = slots, n_new
        return positions, slots

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, T, n_kv, d_head] of the reserved slots; return this layer's keys/values [B, n_kv, S, d_head]."""
        if self._uniform is not None:
            s0 = self._uniform
            self.k[layer, :, :, s0:s0 + self._n_new] = k.transpose(1, 2)
            self.v[layer, :, :, s0:s0 + self._n_new] = v.transpose(1, 2)
        else:
            rows = torch.arange(self.batch_size, device=k.device)[:, None]
            self.k[layer][rows, :, self._slots] = k
            self.v[layer][rows, :, self._slots] = v
        used = self.used_slots()
        return self.k[layer, :, :, :used], self.v[layer, :, :, :used]

    def used_slots(self) -> int:
        if self._uniform is not None:
            return self._uniform + self._n_new
        return int(self._slots.max()) + 1

    def mask(self, positions: torch.Tensor, window: int | None) -> torch.Tensor | None:
        """Boolean attention mask [B, 1, T, S] (True = may attend), or None when causal attention is exact
        (T == 1 over a dense cache, or T == S on an empty one)."""
        used = self.used_slots()
        if self._uniform is not None and window is None and self._all_real:
            if self._n_new == 1 and self._slots_dense(used):
                return None  # one new token per row, every slot valid and in the past
            if self._uniform == 0:
                return None  # prefill of an empty cache: plain causal attention over the new tokens
        key_pos = self.slot_pos[:, None, None, :used]  # [B, 1, 1, S]
        query_pos = positions[:, None, :, None]  # [B, 1, T, 1]
        allowed = (key_pos >= 0) & (key_pos <= query_pos)
        if window is not None:
            allowed &= query_pos - key_pos < window
        return allowed

    def _slots_dense(self, used: int) -> bool:
        return bool((self.slot_pos[:, :used] >= 0).all())

    def end(self) -> None:
        """Advance the row lengths after all layers have written, then let the policy evict."""
        self.n_slots += self._pending
        self.next_pos += self._pending
        if self._uniform is not None and self._all_real:
            self._uniform += self._n_new  # every row grew by the same n_new
        else:
            first = int(self.n_slots[0])
            self._uniform = first if bool((self.n_slots == first).all()) else None
        self.policy.evict(self)

    # -- for policies and users ----------------------------------------------------------------------------
    def compact(self, keep: torch.Tensor) -> None:
        """Keep only slots ``keep`` [B, K] (ascending slot indices per row) in every layer, packed to the front."""
        rows = torch.arange(self.batch_size, device=keep.device)[:, None]
        n_keep = keep.shape[1]
        for store in (self.k, self.v):
            for layer in range(store.shape[0]):
                store[layer, :, :, :n_keep] = store[layer][rows, :, keep].transpose(1, 2)  # [B, n_kv, K, d_head]
        kept_pos = self.slot_pos.gather(1, keep)
        self.slot_pos.fill_(-1)
        self.slot_pos[:, :n_keep] = kept_pos
        self.n_slots.fill_(n_keep)
        self._uniform = n_keep

    def fork(self, repeats: int = 1) -> "KVCache":
        """An independent copy; with ``repeats`` > 1 each row is repeated (best-of-N from one prefix)."""
        new = copy.copy(self)
        new.policy = copy.deepcopy(self.policy)
        take = lambda t, dim: t.repeat_interleave(repeats, dim=dim) if repeats > 1 else t.clone()  # noqa: E731
        new.k, new.v = take(self.k, 1), take(self.v, 1)
        new.slot_pos, new.n_slots, new.next_pos = take(self.slot_pos, 0), take(self.n_slots, 0), take(self.next_pos, 0)
        return new

    def reset(self) -> None:
        """Forget everything (keeps the allocation)."""
        self.slot_pos.fill_(-1)
        self.n_slots.zero_()
        self.next_pos.zero_()
        self._uniform = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` [B'] (drop finished sequences from a batch; may reorder or repeat)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        for name in ("k", "v"):
            setattr(self, name, getattr(self, name)[:, rows].contiguous())
        self.slot_pos, self.n_slots, self.next_pos = self.slot_pos[rows], self.n_slots[rows], self.next_pos[rows]
        self._refresh_uniform()
        self.policy.select_rows(rows)

    def append_rows(self, other: "KVCache") -> None:
        """Append the rows of ``other`` (same model, dtype, device) after this cache's rows: a prefilled request
        joins a running batch. The slot dimension grows to the larger of the two capacities."""
        if (other.k.shape[0], other.k.shape[2], other.k.shape[4]) != (self.k.shape[0], self.k.shape[2], self.k.shape[4]):
            raise LmlabError(f"KVCache.append_rows: cache shapes {tuple(other.k.shape)} and {tuple(self.k.shape)} "
                             "are not of the same model")
        if other.k.dtype != self.k.dtype or other.k.device != self.k.device:
            raise LmlabError(f"KVCache.append_rows: dtype/device {other.k.dtype}/{other.k.device} differ from "
                             f"{self.k.dtype}/{self.k.device}")
        cap = max(self.capacity, other.capacity)
        mine, theirs = self._padded_to(cap), other._padded_to(cap)
        self.k = torch.cat([mine[0], theirs[0]], dim=1)  # [L, B + B', n_kv, cap, d_head]
        self.v = torch.cat([mine[1], theirs[1]], dim=1)
        self.slot_pos = torch.cat([mine[2], theirs[2]], dim=0)  # [B + B', cap]
        self.n_slots = torch.cat([self.n_slots, other.n_slots])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.capacity = cap
        self._refresh_uniform()
        self.policy.append_rows(other.policy)

    def _padded_to(self, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v, slot_pos) with the slot dimension padded with empty slots up to ``cap``."""
        extra = cap - self.capacity
        if extra == 0:
            return self.k, self.v, self.slot_pos
        pad_kv = lambda t: torch.cat([t, t.new_zeros(*t.shape[:3], extra, t.shape[4])], dim=3)  # noqa: E731
        return pad_kv(self.k), pad_kv(self.v), torch.cat([self.slot_pos, self.slot_pos.new_full((self.batch_size, extra), -1)], 1)

    def _refresh_uniform(self) -> None:
        first = int(self.n_slots[0]) if self.batch_size else 0
        self._uniform = first if bool((self.n_slots == first).all()) else None
