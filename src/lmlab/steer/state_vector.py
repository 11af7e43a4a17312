"""In-context vectors: the ICL *state vector* with inner and momentum optimisation (Li et al. 2024, "In-Context
Learning State Vector with Inner and Momentum Optimization", NeurIPS 2024, arXiv:2404.11225).

Why: a few-shot prompt costs its demonstrations' tokens at every query. The paper compresses what the
demonstrations do into one vector per layer and patches it into a zero-shot query instead.

- **Extraction.** Demonstrations are formatted ``q_1 SEP a_1 EOS q_2 SEP a_2 EOS ... q_N SEP a_N EOS dummy SEP``
  (a dummy query closes the prompt). The *state* at demonstration i is the attention activation -- the
  concatenated heads' outputs, i.e. the input of the output projection, our hook ``blocks.{l}.attn.z`` --
  at the separator token(s) of demonstration i, for each of the first L layers. One forward gives the
  trajectory v_1 .. v_N (demonstrations) and v_{N+1} (the dummy query): [N+1, L, n_sep, n_heads * d_head].
- **Injection.** Zero-shot, the query ``q SEP`` has its separator positions' ``attn.z`` at those L layers
  *replaced* by the state vector (the official code's ``add#0#1`` mode: 0 x the activation + 1 x the
  vector, applied through the output projection, which is the same as replacing its input).
- **Inner optimisation** (model soup): the uniform average of the last ``inner_window`` states of the
  trajectory; the official optimisation script averages the last 7 (``fixed`` with beta = [1] * 7).
- **Momentum optimisation**: the differences of adjacent states are read as gradients,
  g_i = v_i - v_{i-1}, and a momentum step is taken from the inner-optimised vector:
  v = v_inner + lr * sum_j w_j g_j / sum(w). The official script (``fix-one-step``) uses weights
  [1, 2, 4, 8, 16, 0] on the last six differences of [v_1 .. v_N, v_inner] (oldest first: momentum with
  decay 1/2, and weight 0 on the last difference, v_inner - v_N) and lr = 1. Those are our defaults.
- **Layers.** The paper selects L per task (zero-shot: the first 13-15 of Llama-2-7B's 32 layers, 10-14 of
  GPT-J's 28); our default is the first ceil(0.45 * n_layers) layers. Pass ``n_layers`` to choose.

Divide-and-conquer aggregation (the paper's many-example setting) is not implemented here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lmlab.core.hooks import current_context
from lmlab.errors import LmlabError
from lmlab.steer.vector import FORMAT, model_fingerprint, read_steering_file, write_steering_file

KIND = "icl_state_vector"  # the steering file's header "kind"

INNER_WINDOW = 7  # official script: "fixed" with beta = [1] * 7
MOMENTUM_WEIGHTS = (1.0, 2.0, 4.0, 8.0, 16.0, 0.0)  # official script: "fix-one-step" weight, lr 1
MOMENTUM_LR = 1.0


def default_layers(model) -> int:
    return max(1, math.ceil(0.45 * model.config.n_layers))


def _encode(tokenizer, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise LmlabError(f"in-context vector: {what} {text!r} encodes to no tokens")
    return ids


def format_demonstrations(tokenizer, demonstrations: Sequence[tuple[str, str]], query: str, separator: str,
                          eos: str) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``q_1 SEP a_1 EOS ... q SEP`` (each piece encoded on its own, so the separator's tokens are
    the same in every demonstration and in the zero-shot query) and the separator positions per example
    (the demonstrations', then the query's)."""
    sep = _encode(tokenizer, separator, "separator")
    eos_ids = tokenizer.encode(eos) if eos else []
    ids: list[int] = []
    where: list[list[int]] = []
    for q, a in demonstrations:
        ids += _encode(tokenizer, q, "demonstration input")
        where.append(list(range(len(ids), len(ids) + len(sep))))
        ids += sep + _encode(tokenizer, a, "demonstration answer") + eos_ids
    ids += _encode(tokenizer, query, "query")
    where.append(list(range(len(ids), len(ids) + len(sep))))
    return ids + sep, where


def format_query(tokenizer, query: str, separator: str) -> list[int]:
    """The zero-shot prompt ``q SEP`` encoded the way :func:`format_demonstrations` encodes it."""
    return _encode(tokenizer, query, "query") + _encode(tokenizer, separator, "separator")


@torch.no_grad()
def state_trajectory(model, tokenizer, demonstrations: Sequence[tuple[str, str]], dummy_query: str, *,
                     separator: str = " ->", eos: str = "\n", n_layers: int | None = None) -> torch.Tensor:
    """[N+1, L, n_sep, n_heads * d_head]: ``attn.z`` at each demonstration's separator, then the dummy query's."""
    if not demonstrations:
        raise LmlabError("in-context vector: give at least one demonstration (input, answer)")
    L = default_layers(model) if n_layers is None else int(n_layers)
    if not 1 <= L <= model.config.n_layers:
        raise LmlabError(f"in-context vector: n_layers must be in [1, {model.config.n_layers}], got {n_layers}")
    ids, where = format_demonstrations(tokenizer, demonstrations, dummy_query, separator, eos)
    names = [f"blocks.{i}.attn.z" for i in range(L)]
    _, acts = model.run_with_cache(torch.tensor([ids], device=model.device), names=names)
    idx = torch.tensor(where, device=model.device)  # [N+1, n_sep]
    per_layer = [acts[n][0].flatten(-2)[idx].float() for n in names]  # L x [N+1, n_sep, H*dh]
    return torch.stack(per_layer, dim=1).cpu()


def inner_optimize(trajectory: torch.Tensor, window: int = INNER_WINDOW) -> torch.Tensor:
    """Uniform average of the last ``window`` states ([N+1, ...] -> [...])."""
    if window < 1:
        raise LmlabError(f"inner optimisation: window must be >= 1, got {window}")
    return trajectory[-window:].mean(dim=0)


def momentum_optimize(trajectory: torch.Tensor, weights: Sequence[float] = MOMENTUM_WEIGHTS,
                      lr: float = MOMENTUM_LR, window: int = INNER_WINDOW) -> torch.Tensor:
    """v_inner + lr * weighted mean of the last len(weights) differences of [v_1 .. v_N, v_inner]."""
    if not weights or sum(weights) <= 0:
        raise LmlabError(f"momentum optimisation: weights must be non-empty with a positive sum, got {weights}")
    inner = inner_optimize(trajectory, window)
    path = torch.cat([trajectory[:-1], inner[None]])  # the demonstrations' states, then v_inner
    grads = path[1:] - path[:-1]  # [N, ...] g_i = v_i - v_{i-1}
    w = torch.tensor(list(weights), dtype=path.dtype)[-len(grads):]  # fewer demonstrations: the newest weights
    used = grads[-len(w):]
    total = float(w.sum())
    if total <= 0:
        return inner  # only zero weights reach this few demonstrations: no step
    step = (used * w.view(-1, *[1] * (used.dim() - 1))).sum(0) / total
    return inner + lr * step


@dataclass
class StateVector:
    """``vector`` [L, n_sep, n_heads * d_head]: replaces ``blocks.{l}.attn.z`` (l < L) at the last n_sep prompt
    positions of each row (the zero-shot query's separator). ``fingerprint``: the model it was read from."""

    vector: torch.Tensor
    fingerprint: str
    meta: dict = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        return [f"blocks.{layer}.attn.z" for layer in range(self.vector.shape[0])]

    def check(self, model, where: str = "state vector") -> None:
        from lmlab.core.hooks import hook_points

        L, _, width = self.vector.shape
        c = model.config
        points = hook_points(model)
        missing = [h for h in self.hooks if h not in points]
        if missing:
            raise LmlabError(f"{where}: hook point {missing[0]!r} does not exist in this model ({c.n_layers} layers)")
        if width != c.n_heads * c.head_dim:
            raise LmlabError(f"{where}: width {width} does not match this model's n_heads * d_head = "
                             f"{c.n_heads * c.head_dim}")
        if model_fingerprint(model) != self.fingerprint:
            raise LmlabError(f"{where}: made for model fingerprint {self.fingerprint}, this model is "
                             f"{model_fingerprint(model)} (a state vector only steers the model it was read from)")

    # -- files: the steering-vector format (lmlab.steer.vector), kind "icl_state_vector" --------------------
    def save(self, path):
        """One safetensors file naming the hook points, width and model fingerprint (atomic write)."""
        header = {"format": FORMAT, "kind": KIND, "hook": self.hooks[0], "hooks": self.hooks,
                  "width": int(self.vector.shape[-1]), "fingerprint": self.fingerprint,
                  "shape": list(self.vector.shape), "meta": self.meta}
        return write_steering_file(path, self.vector, header)

    @classmethod
    def load(cls, path, model=None) -> StateVector:
        """Read a file written by :meth:`save`; with ``model`` also check it fits that model."""
        header, tensor = read_steering_file(path)
        if header.get("kind") != KIND:
            raise LmlabError(f"{path}: not an ICL state vector (kind {header.get('kind', 'vector')!r})")
        if tensor.dim() != 3 or tensor.shape[-1] != header["width"]:
            raise LmlabError(f"{path}: state vector of shape {tuple(tensor.shape)} does not match width "
                             f"{header['width']} (expected [layers, separator tokens, width])")
        vec = cls(tensor, header["fingerprint"], header.get("meta", {}))
        if header.get("hooks", vec.hooks) != vec.hooks:
            raise LmlabError(f"{path}: hooks {header['hooks']} do not match the vector's {len(vec.hooks)} layers")
        if model is not None:
            vec.check(model, where=str(path))
        return vec

    @contextlib.contextmanager
    def apply(self, model, strength: float = 1.0, rows: Sequence[int] | None = None) -> Iterator[None]:
        """Patch the vector in for the block: z <- (1 - strength) * z + strength * v at the separator positions
        (strength 1 is the paper's replacement, 0 leaves the model unchanged). ``rows``: request ids (or batch
        indices outside the decoder); None = every row."""
        self.check(model)
        strength = float(strength)
        if not math.isfinite(strength):
            raise LmlabError(f"state vector: strength must be finite, got {strength}")
        n_sep = self.vector.shape[1]
        chosen = None if rows is None else [int(r) for r in rows]
        pairs = []
        for layer in range(self.vector.shape[0]):
            pairs.append((f"blocks.{layer}.attn.z", _patch_hook(self.vector[layer], n_sep, strength, chosen)))
        with model.hooks(pairs):
            yield


def _patch_hook(vec: torch.Tensor, n_sep: int, strength: float, rows: list[int] | None):
    def hook(z: torch.Tensor, name: str) -> torch.Tensor:  # z: [B, T, H, dh]
        if strength == 0.0:
            return z
        ctx = current_context()
        B, T, H, dh = z.shape
        if ctx is None:
            pos = torch.arange(T, device=z.device).expand(B, T)
            ends = torch.full((B,), T, device=z.device)
        else:
            pos = ctx.positions.to(z.device)  # [B, T] absolute positions
            lengths = ctx.prompt_lengths if ctx.prompt_lengths is not None else ctx.input_lengths
            if lengths is None:
                if ctx.phase == "decode":
                    return z  # a generated token: the query's separator was patched at prefill
                lengths = pos[:, -1] + 1
            ends = lengths.to(z.device)
        offset = pos - (ends[:, None] - n_sep)  # [B, T]: index into the separator's tokens
        where = (offset >= 0) & (offset < n_sep)  # [B, T]
        if rows is not None:
            ids = ctx.row_ids.to(z.device) if ctx is not None and ctx.row_ids is not None else \
                torch.arange(B, device=z.device)
            where = where & torch.isin(ids, torch.tensor(rows, device=z.device))[:, None]
        if not bool(where.any()):
            return z
        v = vec.to(z.device, z.dtype)[offset.clamp(0, n_sep - 1)].view(B, T, H, dh)  # [B, T, H, dh]
        mixed = v if strength == 1.0 else z + strength * (v - z)  # 1: the paper's exact replacement
        return torch.where(where[..., None, None], mixed, z)

    return hook


def in_context_vector(model, tokenizer, demonstrations: Sequence[tuple[str, str]], dummy_query: str, *,
                      separator: str = " ->", eos: str = "\n", n_layers: int | None = None,
                      optimize: str = "momentum", inner_window: int = INNER_WINDOW,
                      momentum_weights: Sequence[float] = MOMENTUM_WEIGHTS, lr: float = MOMENTUM_LR) -> StateVector:
    """The state vector of ``demonstrations``: ``optimize`` = "none" (the dummy query's state), "inner" or
    "momentum" (the paper's two refinements)."""
    traj = state_trajectory(model, tokenizer, demonstrations, dummy_query, separator=separator, eos=eos,
                            n_layers=n_layers)
    if optimize == "none":
        vec = traj[-1]
    elif optimize == "inner":
        vec = inner_optimize(traj, inner_window)
    elif optimize == "momentum":
        vec = momentum_optimize(traj, momentum_weights, lr, inner_window)
    else:
        raise LmlabError(f"in-context vector: optimize must be 'none', 'inner' or 'momentum', got {optimize!r}")
    return StateVector(vec, model_fingerprint(model),
                       meta={"method": "icl_state_vector", "optimize": optimize, "separator": separator,
                             "n_demonstrations": len(demonstrations), "n_layers": int(vec.shape[0])})
