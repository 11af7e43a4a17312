"""A steering vector: a direction (or a short sequence of them) added to one hook point's activations.

Why a file of its own: a vector is only meaningful for the model and hook point it was read from, so it
carries its hook name, width and the model's fingerprint, and refuses to be applied anywhere else. On disk it
is one safetensors file (tensor ``vector``) whose header metadata holds the JSON description; never a pickle.

Applying is a context manager over position-aware hooks (``lmlab.core.hooks.current_context``)::

    with vec.apply(model, coeff=4.0, positions="front", rows=[1]):
        out = generate(model, prompts, ...)      # only request 1 is steered

``positions``: ``"front"`` (ActAdd: row i of a [n, d] vector is added at absolute position i, so the first n
prompt positions; a [d] vector at position 0 only), ``"all"``, ``"prompt"``, ``"generated"``, or a list of
absolute positions. For every choice but "front" a sequence vector is collapsed to the mean of its rows.
``rows``: request ids (in ``generate`` the output row index); None = every row. In a forward run outside the
decoder, rows are batch indices. With ``num_samples`` > 1 the shared prefill reports only each prompt's first
sample id, so steer all samples of a prompt or none (a later sample's rows are steered from its first token on).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmlab.core.hooks import current_context, hook_points
from lmlab.errors import LmlabError

FORMAT = "lmlab.steering_vector/1"
KIND = "vector"  # header "kind" (absent in older files): "vector" here, "icl_state_vector" in state_vector.py
POSITION_MODES = ("front", "all", "prompt", "generated")


def model_fingerprint(model) -> str:
    """sha256 (first 16 hex) of the model config: same architecture, width and vocabulary -> same print."""
    cfg = model.config.to_dict()
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class SteeringVector:
    """``vector`` [n, d_model] (a sequence, ActAdd) or [d_model] (a direction) for hook ``hook``."""

    vector: torch.Tensor
    hook: str
    fingerprint: str
    meta: dict = field(default_factory=dict)  # provenance: method, prompts, layer, ...

    @property
    def width(self) -> int:
        return int(self.vector.shape[-1])

    # -- checking ------------------------------------------------------------------------------------------
    def check(self, model, where: str = "steering vector") -> None:
        points = hook_points(model)
        if self.hook not in points:
            raise LmlabError(f"{where}: hook point {self.hook!r} does not exist in this model "
                             f"(names look like: {', '.join(list(points)[:4])}, ...)")
        d = model.config.d_model
        if self.width != d:
            raise LmlabError(f"{where}: width {self.width} does not match the model's d_model {d}")
        fp = model_fingerprint(model)
        if self.fingerprint != fp:
            raise LmlabError(f"{where}: made for model fingerprint {self.fingerprint}, this model is {fp} "
                             "(a vector only steers the model it was read from)")

    # -- applying ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def apply(self, model, coeff: float = 1.0, positions: str | Sequence[int] = "front",
              rows: Sequence[int] | None = None) -> Iterator[None]:
        """Add ``coeff`` x the vector at ``positions`` of rows ``rows`` for the duration of the block."""
        self.check(model)
        coeff = float(coeff)
        if not torch.isfinite(torch.tensor(coeff)):
            raise LmlabError(f"steering coeff must be finite, got {coeff}")
        if isinstance(positions, str):
            if positions not in POSITION_MODES:
                raise LmlabError(f"steering positions must be one of {', '.join(POSITION_MODES)} or a list of "
                                 f"ints, got {positions!r}")
        else:
            positions = sorted({int(p) for p in positions})
            if not positions or positions[0] < 0:
                raise LmlabError(f"steering positions: expected non-negative ints, got {positions}")
        hook = _steering_hook(self.vector, coeff, positions, None if rows is None else [int(r) for r in rows])
        with model.hooks([(self.hook, hook)]):
            yield

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file (atomically: temp file + rename)."""
        header = {"format": FORMAT, "hook": self.hook, "width": self.width, "fingerprint": self.fingerprint,
                  "shape": list(self.vector.shape), "meta": self.meta}
        return write_steering_file(path, self.vector, header)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> SteeringVector:
        """Read a file written by :meth:`save`; with ``model`` also check it fits that model."""
        header, tensor = read_steering_file(path)
        if header.get("kind", KIND) != KIND:
            raise LmlabError(f"{path}: a steering file of kind {header['kind']!r}, not a vector (read it with "
                             "lmlab.steer.load_steering)")
        if tensor.dim() not in (1, 2) or tensor.shape[-1] != header["width"]:
            raise LmlabError(f"{path}: vector of shape {tuple(tensor.shape)} does not match width {header['width']}")
        vec = cls(tensor, header["hook"], header["fingerprint"], header.get("meta", {}))
        if model is not None:
            vec.check(model, where=str(path))
        return vec


def write_steering_file(path: str | os.PathLike, tensor: torch.Tensor, header: dict) -> Path:
    """One safetensors file: tensor ``vector`` and the JSON ``header`` as metadata; atomic (temp + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({"vector": tensor.detach().float().contiguous().cpu()}, tmp, metadata={"lmlab": json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_steering_file(path: str | os.PathLike) -> tuple[dict, torch.Tensor]:
    """(header, tensor) of a steering file, checked for its format and the fields every kind has."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("lmlab", "null"))
            tensor = f.get_tensor("vector") if "vector" in f.keys() else None
    except FileNotFoundError:
        raise LmlabError(f"{path}: no such steering-vector file") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is one line
        raise LmlabError(f"{path}: not a safetensors steering-vector file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or tensor is None:
        raise LmlabError(f"{path}: not an lmlab steering vector (expected metadata format {FORMAT!r} and a "
                         "'vector' tensor)")
    for key in ("hook", "width", "fingerprint"):
        if key not in header:
            raise LmlabError(f"{path}: metadata lacks {key!r}")
    return header, tensor


def _steering_hook(vector: torch.Tensor, coeff: float, positions, rows: list[int] | None):
    seq = vector if vector.dim() == 2 else vector[None]  # [n, d]
    flat = seq.mean(dim=0)  # [d], for every mode but "front"
    cache: dict = {}

    def hook(x: torch.Tensor, name: str) -> torch.Tensor:  # x: [B, T, d]
        ctx = current_context()
        B, T, _ = x.shape
        if ctx is None:
            pos = torch.arange(T, device=x.device).expand(B, T)
        else:
            pos = ctx.positions.to(x.device)  # [B, T] absolute positions
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = (seq.to(x.device, x.dtype), flat.to(x.device, x.dtype))
        s, f = cache[key]
        if positions == "front":
            n = s.shape[0]
            where = pos < n  # [B, T]
            add = s[pos.clamp(max=n - 1)] * where[..., None]  # [B, T, d]
        else:
            if positions == "all":
                where = torch.ones_like(pos, dtype=torch.bool)
            elif positions == "prompt":
                where = ctx.prompt_mask() if ctx is not None else torch.ones_like(pos, dtype=torch.bool)
            elif positions == "generated":
                where = ctx.generated_mask() if ctx is not None else torch.zeros_like(pos, dtype=torch.bool)
            else:
                where = torch.isin(pos, torch.tensor(positions, device=pos.device))
            add = f * where[..., None].to(x.dtype)  # [B, T, d]
        if rows is not None:
            if ctx is not None and ctx.row_ids is not None:
                ids = ctx.row_ids.to(x.device)
            else:
                ids = torch.arange(B, device=x.device)
            chosen = torch.isin(ids, torch.tensor(rows, device=x.device))  # [B]
            add = add * chosen[:, None, None].to(x.dtype)
        out = x + coeff * add
        # the next norm squares the residual in fp32: refuse a coefficient that overflows it
        if not bool(torch.isfinite(out.float().pow(2).sum(dim=-1)).all()):
            raise LmlabError(f"steering coeff {coeff} at {name} makes activations non-finite (use a smaller coeff)")
        return out

    return hook
