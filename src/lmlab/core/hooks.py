"""Hook points: identity modules at fixed names, the same vocabulary for every architecture.

Names: ``embed``, ``blocks.{i}.resid_pre|resid_mid|resid_post``, ``blocks.{i}.attn.q|k|v|pattern|z|out``,
``blocks.{i}.mlp.pre|post|out``, ``ln_final``, ``logits``. A hook is ``fn(tensor, name) -> tensor | None``;
returning None keeps the tensor. Hooks are installed by a context manager that always removes them.

Position-aware hooks: during a forward, :func:`current_context` returns a :class:`HookContext` with the
absolute positions of the tokens being computed, the phase (``"prefill"``, ``"decode"`` or ``"forward"``
for a cache-less call), and, when the decoder runs the forward, the request id and prompt length of every
batch row. So one plain ``fn(x, name)`` hook can add a vector at prompt positions only (the same logits
cached and uncached), at generated positions, at given indices, or to one request of a running batch::

    def steer(x, name):                      # x: [B, T, d_model]
        ctx = current_context()
        return x + vec * ctx.prompt_mask()[..., None]          # prompt positions of every row

A cache-less forward over prompt + generated tokens does not know where each prompt ends: declare it with
``with forward_context(prompt_lengths=...)`` (the decoder declares phase, request ids and prompt lengths
the same way).
"""

from __future__ import annotations

import contextlib
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from lmlab.errors import LmlabError

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]

BLOCK_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z",
               "attn.out", "mlp.pre", "mlp.post", "mlp.out")

# Shapes, for docs and error messages: B batch, T new tokens, S keys (cache + new).
HOOK_SHAPES = {
    "embed": "[B, T, d_model]", "resid_pre": "[B, T, d_model]", "resid_mid": "[B, T, d_model]",
    "resid_post": "[B, T, d_model]", "attn.q": "[B, T, n_heads, d_head] (before rotary)",
    "attn.k": "[B, T, n_kv_heads, d_head] (before rotary)", "attn.v": "[B, T, n_kv_heads, d_head]",
    "attn.pattern": "[B, n_heads, T, S]", "attn.z": "[B, T, n_heads, d_head]", "attn.out": "[B, T, d_model]",
    "mlp.pre": "[B, T, d_mlp]", "mlp.post": "[B, T, d_mlp] (input of the down projection)",
    "mlp.out": "[B, T, d_model]", "ln_final": "[B, T, d_model]", "logits": "[B, T, vocab]",
}


class HookPoint:
    """Identity unless hooks are attached; ``active`` lets the model skip work nobody observes.

    A plain object, not an nn.Module: hook points are not parameters, never appear in a state dict, and
    their names (``embed``) may equal a module's name without clashing.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fns:
            return x
        for fn in self.fns:
            out = fn(x, self.name)
            if out is not None:
                x = out
        return x


@dataclass(frozen=True)
class HookContext:
    """What the current forward computes; read it inside a hook with :func:`current_context`.

    - ``positions`` [B, T]: absolute position of every token of this forward (per row; with a KV cache they
      continue the row's sequence, so position p is the same token cached or not).
    - ``phase``: ``"prefill"`` (a cached forward that writes prompt tokens), ``"decode"`` (one generated token
      per row) or ``"forward"`` (no cache).
    - ``row_ids`` [B] (LongTensor) or None: the decoder's request id of each batch row.
    - ``prompt_lengths`` [B] or None: each row's unpadded prompt length, when declared.
    - ``input_lengths`` [B] or None: real tokens per row of a right-padded (ragged) prefill.
    - ``token_index`` [B, T] or None: each token's true index in its row's sequence, when it differs from
      ``positions`` (a cache policy that re-indexes positions, as StreamingLLM does after an eviction);
      the prompt / generated masks use it.
    """

    positions: torch.Tensor
    phase: str
    row_ids: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None
    input_lengths: torch.Tensor | None = None
    token_index: torch.Tensor | None = None

    def prompt_mask(self) -> torch.Tensor:
        """[B, T] bool, True at prompt positions. Without declared prompt lengths: every position of a
        prefill or cache-less forward counts as prompt, no position of a decode step does."""
        if self.prompt_lengths is not None:
            index = self.positions if self.token_index is None else self.token_index
            return index < self.prompt_lengths.to(index.device)[:, None]
        return torch.full_like(self.positions, self.phase != "decode", dtype=torch.bool)

    def generated_mask(self) -> torch.Tensor:
        """[B, T] bool, True at generated positions (the complement of :meth:`prompt_mask`)."""
        return ~self.prompt_mask()

    def row_mask(self, request_id: int) -> torch.Tensor:
        """[B] bool, True for the batch row of request ``request_id`` (all False if absent or unknown)."""
        if self.row_ids is None:
            return torch.zeros(self.positions.shape[0], dtype=torch.bool, device=self.positions.device)
        return self.row_ids.to(self.positions.device) == request_id


_CURRENT: ContextVar[HookContext | None] = ContextVar("lmlab_hook_context", default=None)
_DECLARED: ContextVar[dict | None] = ContextVar("lmlab_forward_info", default=None)


def current_context() -> HookContext | None:
    """The :class:`HookContext` of the forward now running (None outside a forward)."""
    return _CURRENT.get()


@contextlib.contextmanager
def forward_context(*, phase: str | None = None, row_ids: torch.Tensor | None = None,
                    prompt_lengths: torch.Tensor | None = None) -> Iterator[None]:
    """Declare facts about the forwards run inside the block that the model cannot infer: the phase,
    the request id of each row ``row_ids`` [B], each row's prompt length ``prompt_lengths`` [B]."""
    if phase is not None and phase not in ("prefill", "decode", "forward"):
        raise LmlabError(f"forward_context: phase must be 'prefill', 'decode' or 'forward', got {phase!r}")
    token = _DECLARED.set({"phase": phase, "row_ids": row_ids, "prompt_lengths": prompt_lengths})
    try:
        yield
    finally:
        _DECLARED.reset(token)


def enter_forward(positions: torch.Tensor, cache_empty: bool | None, input_lengths: torch.Tensor | None,
                  token_index: torch.Tensor | None = None):
    """Called by the model at the start of a forward (``cache_empty`` None = no cache); returns a token for
    :func:`exit_forward`. ``token_index``: the tokens' true indices when they differ from ``positions``."""
    declared = _DECLARED.get() or {}
    phase = declared.get("phase")
    if phase is None:
        if cache_empty is None:
            phase = "forward"
        else:
            phase = "prefill" if cache_empty or positions.shape[1] > 1 else "decode"
    ctx = HookContext(positions=positions, phase=phase, row_ids=declared.get("row_ids"),
                      prompt_lengths=declared.get("prompt_lengths"), input_lengths=input_lengths,
                      token_index=token_index)
    return _CURRENT.set(ctx)


def exit_forward(token) -> None:
    _CURRENT.reset(token)


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """The model's hook points by name (the Transformer keeps them in ``model.hook_points``)."""
    points = getattr(model, "hook_points", None)
    if not isinstance(points, dict):
        raise LmlabError(f"{type(model).__name__} has no hook points")
    return points


def resolve(points: dict[str, HookPoint], pattern: str | Callable[[str], bool]) -> list[str]:
    """Names matching an exact name, a regex (full match) or a predicate; an unknown name is an error."""
    if callable(pattern):
        found = [n for n in points if pattern(n)]
    elif pattern in points:
        found = [pattern]
    else:
        regex = re.compile(pattern)
        found = [n for n in points if regex.fullmatch(n)]
    if not found:
        sample = ", ".join(list(points)[:6])
        raise LmlabError(f"unknown hook point {pattern!r} (names look like: {sample}, ...)")
    return found


@contextlib.contextmanager
def hooks(model: nn.Module, pairs: Iterable[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[None]:
    """Attach ``(name_or_pattern, fn)`` hooks for the duration of a ``with`` block; always removed."""
    points = hook_points(model)
    attached: list[tuple[HookPoint, HookFn]] = []
    try:
        for pattern, fn in pairs:
            for name in resolve(points, pattern):
                points[name].fns.append(fn)
                attached.append((points[name], fn))
        yield
    finally:
        for point, fn in reversed(attached):
            point.fns.remove(fn)


def run_with_cache(model: nn.Module, *args, names: Iterable[str | Callable[[str], bool]] | None = None,
                   detach: bool = True, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(*args, **kwargs)`` and keep the activations at ``names`` (all hook points if None).

    Only what is asked is kept, so caching one layer of a large model costs one layer of memory.
    """
    points = hook_points(model)
    wanted = list(points) if names is None else [n for pattern in names for n in resolve(points, pattern)]
    store: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, name: str) -> None:
        store[name] = x.detach() if detach else x

    with hooks(model, [(name, keep) for name in dict.fromkeys(wanted)]):
        out = model(*args, **kwargs)
    return out, store
