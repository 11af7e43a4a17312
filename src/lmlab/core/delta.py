"""``WeightDelta``: named additive changes to a model's parameters, applied and reverted exactly.

What editing (ROME, MEMIT, AlphaEdit), task vectors and merging have in common: a set of ``param name ->
tensor`` that is added to a model's weights. The object is plain data (tensors + JSON metadata) that can be
scaled, added, saved and loaded; ``apply(model)`` adds it in place and ``revert(model)`` undoes it.

Exactness: ``(w + d) - d != w`` in floating point, so ``apply`` keeps the original values of the touched
parameters and ``revert`` copies them back, bit for bit. To keep that safe under sequential edits, ``revert``
checks (by a digest) that each touched parameter still holds what ``apply`` left there; otherwise a later
change would be silently undone, so it refuses and names the parameter (revert later deltas first).

Refused before anything changes, naming the parameter: unknown names, wrong shapes, non-finite values, two
names of one tied tensor (it would be changed twice), applying the same delta twice to one model. Prepacked
inference copies (``lmlab.core.linear.pack_for_inference``) of touched layers are dropped on apply and revert.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import numbers
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from lmlab.errors import LmlabError

FORMAT = "lmlab.weight_delta"
FORMAT_VERSION = 1
TENSORS_FILE = "delta.safetensors"
META_FILE = "delta.json"


def _digest(t: torch.Tensor) -> str:
    """A content hash of a tensor (bytes, dtype and shape), to notice that a weight changed since apply."""
    flat = t.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    h = hashlib.blake2b(raw.cpu().numpy().tobytes(), digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    return h.hexdigest()


def _writing(tensors: list[torch.Tensor]):
    """The context in which ``tensors`` may be written in place: inference-mode tensors only allow it inside
    ``torch.inference_mode``; normal ones under ``no_grad`` (so autograd records nothing)."""
    if any(t.is_inference() for t in tensors):
        return torch.inference_mode()
    return torch.no_grad()


def _drop_packed(model: nn.Module, params: list[torch.Tensor]) -> None:
    """Drop the prepacked inference copy of every Linear holding one of ``params`` (tied ones included)."""
    from lmlab.core.linear import Linear

    ids = {id(p) for p in params}
    for module in model.modules():
        if isinstance(module, Linear) and id(module.weight) in ids:
            module._packed = None


class WeightDelta:
    """``{param name: delta tensor}`` plus JSON ``metadata``; ``apply`` / ``revert`` change a model in place.

    >>> delta = WeightDelta({"blocks.3.mlp.down_proj.weight": d}, metadata={"method": "rome"})
    >>> delta.apply(model); ...; delta.revert(model)      # bit-exact original weights
    >>> (0.5 * delta + other).save("out/delta")            # delta.safetensors + delta.json
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(tensors, Mapping) or not tensors:
            raise LmlabError("WeightDelta: needs a non-empty mapping of parameter name -> tensor")
        clean: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if not isinstance(name, str) or not name:
                raise LmlabError(f"WeightDelta: parameter names must be non-empty strings, got {name!r}")
            if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
                raise LmlabError(f"WeightDelta: {name} must be a floating-point tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
            clean[name] = t.detach().clone()
        self._tensors = clean
        self.metadata: dict[str, Any] = dict(metadata or {})
        # model -> {name: (original value, digest of the applied value)}; weak, so a dropped model is forgotten
        self._applied: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------------------------------ mapping
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def items(self):
        return self._tensors.items()

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self._tensors.values())
        return f"WeightDelta({len(self)} tensors, {n} values, names={self.names()[:4]}{'...' if len(self) > 4 else ''})"

    # -------------------------------------------------------------------------------------- arithmetic
    def __mul__(self, factor: float) -> "WeightDelta":
        if not isinstance(factor, numbers.Real) or isinstance(factor, bool):
            return NotImplemented
        return WeightDelta({n: t * float(factor) for n, t in self._tensors.items()},
                           {"op": "scale", "factor": float(factor), "of": self.metadata})

    __rmul__ = __mul__

    def __neg__(self) -> "WeightDelta":
        return self * -1.0

    def __add__(self, other: "WeightDelta") -> "WeightDelta":
        if not isinstance(other, WeightDelta):
            return NotImplemented
        out = dict(self._tensors)
        for name, t in other.items():
            if name in out:
                if out[name].shape != t.shape:
                    raise LmlabError(f"WeightDelta +: {name} has shape {list(out[name].shape)} in one delta and "
                                     f"{list(t.shape)} in the other")
                out[name] = out[name] + t.to(out[name].device)
            else:
                out[name] = t
        return WeightDelta(out, {"op": "add", "terms": [self.metadata, other.metadata]})

    def __sub__(self, other: "WeightDelta") -> "WeightDelta":
        if not isinstance(other, WeightDelta):
            return NotImplemented
        return self + (-other)

    # ---------------------------------------------------------------------------------- apply / revert
    def _resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter of ``model`` for every entry, after checking names, shapes, values and ties."""
        params = dict(model.named_parameters(remove_duplicate=False))
        found: dict[str, nn.Parameter] = {}
        for name, t in self._tensors.items():
            if name not in params:
                close = difflib.get_close_matches(name, list(params), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise LmlabError(f"WeightDelta: {name} is not a parameter of this {type(model).__name__}{hint}")
            p = params[name]
            if p.shape != t.shape:
                raise LmlabError(f"WeightDelta: {name} has shape {list(p.shape)} in the model but "
                                 f"{list(t.shape)} in the delta")
            if not bool(torch.isfinite(t).all()):
                raise LmlabError(f"WeightDelta: {name} holds NaN or infinite values")
            found[name] = p
        by_tensor: dict[int, list[str]] = {}
        for name, p in found.items():
            by_tensor.setdefault(id(p), []).append(name)
        for names in by_tensor.values():
            if len(names) > 1:
                raise LmlabError(f"WeightDelta: {' and '.join(names)} are one tied tensor; the delta would change "
                                 "it twice (keep one of the names)")
        return found

    def apply(self, model: nn.Module) -> "WeightDelta":
        """Add the delta to ``model``'s parameters in place (all checks first: nothing changes on an error)."""
        if model in self._applied:
            raise LmlabError("WeightDelta: already applied to this model (revert it first)")
        params = self._resolve(model)
        record: dict[str, tuple[torch.Tensor, str]] = {}
        with _writing(list(params.values())):
            for name, p in params.items():
                original = p.detach().clone()
                d = self._tensors[name].to(device=p.device)
                if p.dtype in (torch.float32, torch.float64):
                    p.add_(d.to(p.dtype))
                else:  # half precision: add in fp32, round once
                    p.copy_((p.float() + d.float()).to(p.dtype))
                record[name] = (original, _digest(p))
        _drop_packed(model, list(params.values()))
        self._applied[model] = record
        return self

    def is_applied(self, model: nn.Module) -> bool:
        return model in self._applied

    def revert(self, model: nn.Module) -> "WeightDelta":
        """Restore the exact values the touched parameters had before ``apply(model)``.

        Refused (nothing restored) if the delta is not applied to ``model`` or a touched parameter changed
        since (for example another delta applied later touches it: revert that one first)."""
        record = self._applied.get(model)
        if record is None:
            raise LmlabError("WeightDelta: not applied to this model, nothing to revert")
        params = dict(model.named_parameters(remove_duplicate=False))
        for name, (_, digest) in record.items():
            if name not in params or _digest(params[name]) != digest:
                raise LmlabError(f"WeightDelta: {name} changed since this delta was applied (revert later "
                                 "changes first); nothing reverted")
        with _writing([params[n] for n in record]):
            for name, (original, _) in record.items():
                params[name].copy_(original)
        _drop_packed(model, [params[n] for n in record])
        del self._applied[model]
        return self

    # ------------------------------------------------------------------------------------- save / load
    def save(self, directory: str | Path) -> Path:
        """Write ``delta.safetensors`` + ``delta.json`` into ``directory`` (created; each file atomic)."""
        from lmlab.io.atomic import atomic_save_safetensors, atomic_write_json

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise LmlabError(f"WeightDelta.save: {directory} exists and is not a directory")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise LmlabError(f"WeightDelta.save: metadata is not JSON-serialisable ({e})") from None
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": FORMAT_VERSION,
                "tensors": {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                            for n, t in self._tensors.items()},
                "metadata": self.metadata}
        atomic_save_safetensors(directory / TENSORS_FILE, self._tensors)
        atomic_write_json(directory / META_FILE, meta)  # last: a directory with delta.json is complete
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "WeightDelta":
        """Read a delta written by :meth:`save` (safetensors + JSON only; nothing is unpickled)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, tensor_path = directory / META_FILE, directory / TENSORS_FILE
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise LmlabError(f"WeightDelta.load: {p} not found (expected {META_FILE} + {TENSORS_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LmlabError(f"WeightDelta.load: {meta_path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LmlabError(f"WeightDelta.load: {meta_path} is not an lmlab weight delta (format != {FORMAT!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise LmlabError(f"WeightDelta.load: {meta_path} has version {meta.get('version')!r}, "
                             f"this lmlab reads {FORMAT_VERSION}")
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError) as e:
            raise LmlabError(f"WeightDelta.load: {tensor_path} is not a readable safetensors file ({e})") from None
        declared = meta.get("tensors", {})
        if set(declared) != set(tensors):
            raise LmlabError(f"WeightDelta.load: {tensor_path} holds {sorted(tensors)} but {meta_path} declares "
                             f"{sorted(declared)}")
        for name, info in declared.items():
            if list(tensors[name].shape) != info.get("shape"):
                raise LmlabError(f"WeightDelta.load: {name} has shape {list(tensors[name].shape)} in {tensor_path} "
                                 f"but {info.get('shape')} in {meta_path}")
        return cls(tensors, meta.get("metadata") or {})
