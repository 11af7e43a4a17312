"""KV cache: an object passed into ``forward``, preallocated, with per-row lengths and an eviction policy.

Keys are stored after rotary embedding, so a cached key never needs its position again except to build the
attention mask; each slot records the token position it holds (``slot_pos``), which is what lets a policy
evict slots (sliding window, sinks + recent, heavy hitters) without breaking causality or positions.

What eviction policies get from the cache (lmlab.efficient.kv_policies):

- ``compact(keep)`` with one selection per row ([B, K]) or one per layer and KV head ([L, B, n_kv, K], as H2O
  and Keyformer select); per-head positions are then kept in ``head_pos``.
- ``reposition(new_pos)``: give cached tokens new positions by re-rotating their (already rotated) keys by
  the position difference, as StreamingLLM assigns positions by place in the cache.
- a cache that grows on demand (``CachePolicy.grow``) up to ``max_len``, so a bounded policy allocates its
  budget plus one prefill chunk, not the whole prompt.
"""

from __future__ import annotations

import copy

import torch

from lmlab.core.config import ModelConfig
from lmlab.core.rope import apply_rotary, inverse_frequencies
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
        """Slots to allocate up front for rows of up to ``max_len`` tokens."""
        return max_len

    def grow(self, cache: "KVCache", needed: int) -> int:
        """The new allocation when a forward needs ``needed`` slots (<= ``cache.max_len``) but only
        ``cache.capacity`` exist. The default does not grow (the cache then reports that it is full)."""
        return cache.capacity

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
        self.max_len = max(max_len, self.capacity)  # the most slots a row may ever need (growth stops there)
        shape = (config.n_layers, batch_size, config.kv_heads, self.capacity, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_pos = torch.full((batch_size, self.capacity), -1, dtype=torch.long, device=device)
        self.n_slots = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        # tokens each row has seen: equals next_pos unless a policy re-indexed positions (StreamingLLM), so
        # hooks can tell prompt from generated tokens by their true index in the sequence
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.token_index: torch.Tensor | None = None  # [B, T] true index of the current forward's tokens
        # [L, B, n_kv, capacity] position per layer/head/slot once a per-head compaction made them differ
        # (None: every layer and head holds slot_pos); slot_pos then holds, per slot, the largest of them
        # (what the causal mask needs: every kept token lies in the past of every new one)
        self.head_pos: torch.Tensor | None = None
        self._uniform: int | None = 0  # common n_slots when every row has the same (fast paths), else None
        self._all_real = True  # the current forward's new tokens are all real (no right padding)
        self._views: tuple | None = None  # (k, v, inference mode, per-layer views of k, of v): see _layer_views

    def __getstate__(self) -> dict:  # copies never carry the per-layer views (of the original's storage)
        state = dict(self.__dict__)
        state["_views"] = None
        return state

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def uniform_slots(self) -> int | None:
        """Every row's filled-slot count when all rows agree, else None (known without reading tensors)."""
        return self._uniform

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
        self.token_index = self.seen[:, None] + ar  # [B, T]
        slots = self.n_slots[:, None] + ar  # [B, T]
        # the common case (every row at the same slot count) is decided in Python, without reading tensors
        needed = self._uniform + n_new if self._uniform is not None else int(slots.max()) + 1
        if needed > self.capacity and needed <= self.max_len:
            self._resize(max(self.capacity, min(self.max_len, self.policy.grow(self, needed))))
        if needed > self.capacity:
            raise LmlabError(f"KV cache is full: capacity {self.capacity} tokens, needs {needed}")
        self._all_real = lengths is None or bool((lengths == n_new).all())
        if lengths is None and self._uniform is not None:
            self.slot_pos[:, self._uniform:needed] = positions
        else:
            real = ar[None, :] < lengths[:, None] if lengths is not None else torch.ones_like(slots, dtype=torch.bool)
            self.slot_pos.scatter_(1, slots, torch.where(real, positions, -1))
        if self.head_pos is not None:  # new tokens hold the same position in every layer and head
            rows = torch.arange(self.batch_size, device=slots.device)[:, None]
            new = self.slot_pos[rows, slots]  # [B, T]
            self.head_pos[:, rows, :, slots] = new[:, :, None, None]  # indexed as [B, T, L, n_kv]
        self._pending = lengths if lengths is not None else torch.full_like(self.n_slots, n_new)
        self._slots, self._n_new = slots, n_new
        return positions, slots

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, *,
              heads_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, T, n_kv, d_head] of the reserved slots; return this layer's keys/values [B, n_kv, S, d_head].

        ``heads_first``: k and v are given as [B, n_kv, T, d_head] (a decode step's projections viewed that way
        directly, with no transpose)."""
        if torch.is_grad_enabled():  # (see _layer_views)
            k_store, v_store = self.k[layer], self.v[layer]  # [B, n_kv, capacity, d_head]
        else:
            k_layers, v_layers = self._layer_views()
            k_store, v_store = k_layers[layer], v_layers[layer]  # [B, n_kv, capacity, d_head]
        if not heads_first:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, n_kv, T, d_head]
        if self._uniform is not None:
            s0 = self._uniform
            k_store.narrow(2, s0, self._n_new).copy_(k)
            v_store.narrow(2, s0, self._n_new).copy_(v)
        else:
            rows = torch.arange(self.batch_size, device=k.device)[:, None]
            k_store[rows, :, self._slots] = k.transpose(1, 2)
            v_store[rows, :, self._slots] = v.transpose(1, 2)
        used = self.used_slots()
        if used == self.capacity:
            return k_store, v_store
        return k_store.narrow(2, 0, used), v_store.narrow(2, 0, used)

    def _layer_views(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Per-layer views ``k[i]``, ``v[i]`` [B, n_kv, capacity, d_head], made once per allocation of ``k``/``v``
        and autograd mode (every write of every layer would otherwise index the 5-d store afresh: ~4 aten ops).

        Called with grad mode off only: autograd forbids writing in place, with grad on, into a view made with it
        off (and likewise across inference mode, which is part of the key); ``write`` indexes afresh with grad on."""
        mode = torch.is_inference_mode_enabled()
        views = self._views
        if views is None or views[0] is not self.k or views[1] is not self.v or views[2] != mode:
            L = self.k.shape[0]
            views = self._views = (self.k, self.v, mode, tuple(self.k[i] for i in range(L)),
                                   tuple(self.v[i] for i in range(L)))
        return views[3], views[4]

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

    def new_token_mask(self) -> torch.Tensor | None:
        """[B, T] bool, True at the real (not right-padded) tokens of the current forward; None when all are
        real. Policies use it to ignore the attention of padded queries."""
        if self._all_real:
            return None
        return torch.arange(self._n_new, device=self.k.device)[None, :] < self._pending[:, None]

    def _slots_dense(self, used: int) -> bool:
        return bool((self.slot_pos[:, :used] >= 0).all())

    def end(self) -> None:
        """Advance the row lengths after all layers have written, then let the policy evict."""
        self.n_slots += self._pending
        self.next_pos += self._pending
        self.seen += self._pending
        if self._uniform is not None and self._all_real:
            self._uniform += self._n_new  # every row grew by the same n_new
        else:
            first = int(self.n_slots[0])
            self._uniform = first if bool((self.n_slots == first).all()) else None
        self.policy.evict(self)

    # -- for policies and users ----------------------------------------------------------------------------
    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the slots ``keep``, packed to the front: [B, K] (one selection per row, for every layer and
        head) or [L, B, n_kv, K] (one per layer and KV head, as H2O and Keyformer select).

        Within each selection, real tokens come first in slot order and empty slots (a row with fewer real
        tokens than K) last, so every layer and head of a row holds its real tokens in slots 0..n-1 and the
        row's ``n_slots`` becomes n (rows may then differ: a ragged cache).
        """
        L, B, n_kv, cap, d_head = self.k.shape
        per_head = keep.dim() == 4
        if per_head:
            if tuple(keep.shape[:3]) != (L, B, n_kv):
                raise LmlabError(f"KVCache.compact: a per-head selection must be [{L}, {B}, {n_kv}, K], "
                                 f"got {list(keep.shape)}")
            if any(self.config.window_for_layer(i) is not None for i in range(L)):
                raise LmlabError("KVCache.compact: per-head selection on a model with sliding-window layers is "
                                 "not supported (the window mask is per row); select per row instead")
        elif keep.dim() != 2 or keep.shape[0] != B:
            raise LmlabError(f"KVCache.compact: keep must be [{B}, K] or [{L}, {B}, {n_kv}, K], got {list(keep.shape)}")
        full = keep if per_head else keep[None, :, None, :].expand(L, B, n_kv, keep.shape[-1])  # [L, B, n_kv, K]
        pos = self.positions_per_head().gather(3, full)  # [L, B, n_kv, K]
        order = (full + cap * (pos < 0)).argsort(dim=3)  # real tokens first, in slot order
        full, pos = full.gather(3, order), pos.gather(3, order)
        K = full.shape[-1]
        idx = full[..., None].expand(L, B, n_kv, K, d_head)
        for store in (self.k, self.v):
            store[:, :, :, :K] = store.gather(3, idx)  # [L, B, n_kv, K, d_head]
        n_real = (pos[0, :, 0] >= 0).sum(dim=1)  # [B]: the same for every layer and head
        self.slot_pos.fill_(-1)
        if per_head:
            self.head_pos = torch.full((L, B, n_kv, cap), -1, dtype=torch.long, device=self.k.device)
            self.head_pos[..., :K] = pos
            self.slot_pos[:, :K] = pos.amax(dim=(0, 2))  # [B, K]: real slots stay >= 0, empty ones -1
        else:
            self.head_pos = None
            self.slot_pos[:, :K] = pos[0, :, 0]
        self.n_slots.copy_(n_real)
        self._refresh_uniform()

    def positions_per_head(self) -> torch.Tensor:
        """[L, B, n_kv, capacity] position of the token each layer/head/slot holds (-1 = empty)."""
        if self.head_pos is not None:
            return self.head_pos
        L, B, n_kv = self.k.shape[:3]
        return self.slot_pos[None, :, None, :].expand(L, B, n_kv, self.capacity)

    def reposition(self, new_pos: torch.Tensor) -> None:
        """Give the cached tokens new positions ``new_pos`` [B, capacity] (-1 where a slot is empty) and make
        each row's next token follow its largest one; rotary keys are re-rotated by the difference (RoPE is a
        rotation, so rotating a key cached at position p by p' - p equals rotating it at p' afresh, up to
        float rounding). StreamingLLM does this to place the kept tokens at their cache positions."""
        if self.config.pos_type == "rotary":
            if self.head_pos is not None:
                raise LmlabError("KVCache.reposition: the cache holds per-head selections; reposition needs one "
                                 "position per row and slot")
            real = self.slot_pos >= 0
            shift = torch.where(real, new_pos - self.slot_pos, 0)  # [B, cap]
            if bool((shift != 0).any()):
                freqs = inverse_frequencies(self.config).to(self.k.device)  # static frequencies
                angles = shift.float()[..., None] * freqs  # [B, cap, rot_dim/2]
                if self.config.rope_style == "half":
                    angles = torch.cat((angles, angles), dim=-1)
                else:
                    angles = torch.repeat_interleave(angles, 2, dim=-1)
                cos, sin = angles.cos().to(self.k.dtype), angles.sin().to(self.k.dtype)  # [B, cap, rot_dim]
                for layer in range(self.k.shape[0]):
                    keys = self.k[layer].transpose(1, 2)  # [B, cap, n_kv, d_head]
                    self.k[layer] = apply_rotary(keys, cos, sin, self.config.rope_style).transpose(1, 2)
        self.slot_pos.copy_(torch.where(self.slot_pos >= 0, new_pos, -1))
        self.next_pos.copy_(self.slot_pos.max(dim=1).values.clamp(min=-1) + 1)

    def _resize(self, capacity: int) -> None:
        """Reallocate every per-slot tensor to ``capacity`` slots (growth only)."""
        self.k, self.v, self.slot_pos, self.head_pos = self._padded_to(capacity)
        self.capacity = capacity

    def fork(self, repeats: int = 1) -> "KVCache":
        """An independent copy; with ``repeats`` > 1 each row is repeated (best-of-N from one prefix)."""
        new = copy.copy(self)
        new.policy = copy.deepcopy(self.policy)
        take = lambda t, dim: t.repeat_interleave(repeats, dim=dim) if repeats > 1 else t.clone()  # noqa: E731
        new.k, new.v = take(self.k, 1), take(self.v, 1)
        new.slot_pos, new.n_slots, new.next_pos = take(self.slot_pos, 0), take(self.n_slots, 0), take(self.next_pos, 0)
        new.seen = take(self.seen, 0)
        new.head_pos = None if self.head_pos is None else take(self.head_pos, 1)
        if repeats > 1:  # per-row policy state (accumulated scores) follows the repeated rows
            new.policy.select_rows(torch.arange(self.batch_size, device=self.k.device).repeat_interleave(repeats))
        return new

    def reset(self) -> None:
        """Forget everything (keeps the allocation)."""
        self.slot_pos.fill_(-1)
        self.head_pos = None
        self.n_slots.zero_()
        self.next_pos.zero_()
        self.seen.zero_()
        self._uniform = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` [B'] (drop finished sequences from a batch; may reorder or repeat)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        for name in ("k", "v"):
            setattr(self, name, getattr(self, name)[:, rows].contiguous())
        self.slot_pos, self.n_slots, self.next_pos = self.slot_pos[rows], self.n_slots[rows], self.next_pos[rows]
        self.seen = self.seen[rows]
        if self.head_pos is not None:
            self.head_pos = self.head_pos[:, rows].contiguous()
        self._refresh_uniform()
        self.policy.select_rows(rows)

    def append_rows(self, other: "KVCache") -> None:
        """Append the rows of ``other`` (same model, dtype, device) after this cache's rows: a prefilled request
        joins a running batch. The slot dimension grows to the larger of the two capacities."""
        layout = lambda c: (c.k.shape[0], c.k.shape[2], c.k.shape[4])  # noqa: E731 - layers, kv heads, d_head
        if layout(other) != layout(self):
            raise LmlabError(f"KVCache.append_rows: cache shapes {tuple(other.k.shape)} and {tuple(self.k.shape)} "
                             "are not of the same model")
        if other.k.dtype != self.k.dtype or other.k.device != self.k.device:
            raise LmlabError(f"KVCache.append_rows: dtype/device {other.k.dtype}/{other.k.device} differ from "
                             f"{self.k.dtype}/{self.k.device}")
        cap = max(self.capacity, other.capacity)
        mine, theirs = self._padded_to(cap, with_heads=True), other._padded_to(cap, with_heads=True)
        self.k = torch.cat([mine[0], theirs[0]], dim=1)  # [L, B + B', n_kv, cap, d_head]
        self.v = torch.cat([mine[1], theirs[1]], dim=1)
        self.slot_pos = torch.cat([mine[2], theirs[2]], dim=0)  # [B + B', cap]
        both = self.head_pos is not None or other.head_pos is not None
        self.head_pos = torch.cat([mine[3], theirs[3]], dim=1) if both else None  # [L, B + B', n_kv, cap]
        self.n_slots = torch.cat([self.n_slots, other.n_slots])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.seen = torch.cat([self.seen, other.seen])
        self.capacity = cap
        self.max_len = max(self.max_len, other.max_len)
        self._refresh_uniform()
        self.policy.append_rows(other.policy)

    def _padded_to(self, cap: int, with_heads: bool = False):
        """(k, v, slot_pos, head_pos) with the slot dimension padded with empty slots up to ``cap``; head_pos
        stays None unless ``with_heads`` (then it is materialised from slot_pos)."""
        extra = cap - self.capacity
        head = self.positions_per_head() if with_heads else self.head_pos
        if extra == 0:
            return self.k, self.v, self.slot_pos, head
        pad_kv = lambda t: torch.cat([t, t.new_zeros(*t.shape[:3], extra, t.shape[4])], dim=3)  # noqa: E731
        empty = self.slot_pos.new_full((self.batch_size, extra), -1)
        if head is not None:
            head = torch.cat([head, head.new_full((*head.shape[:3], extra), -1)], dim=3)
        return pad_kv(self.k), pad_kv(self.v), torch.cat([self.slot_pos, empty], 1), head

    def _refresh_uniform(self) -> None:
        first = int(self.n_slots[0]) if self.batch_size else 0
        self._uniform = first if bool((self.n_slots == first).all()) else None
