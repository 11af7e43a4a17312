"""Per-request methods the server's config loads once: LoRA adapters and steering vectors (guides: guides.py,
KV policies: kv_policies.py).

Steering acts per row: one hook per hook point stays attached for the server's lifetime and adds
``coeff * vector`` only to the batch rows whose request asked for it (``current_context().row_mask``), so a
steered request and an unsteered one can share a batch. Adapters change the weights' forward for every row,
so requests naming different adapters never share a batch: the engine runs one adapter at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmlab.core.hooks import current_context, hook_points, hooks, run_with_cache
from lmlab.errors import LmlabError
from lmlab.serve.config import SteerSpec


def load_steering_tensor(spec: SteerSpec, name: str) -> torch.Tensor:
    """The vector of steering entry ``name``: key ``spec.tensor`` of the safetensors file (or its only key)."""
    path = Path(spec.path)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise LmlabError(f"steering '{name}': cannot read {path} as safetensors ({e})") from None
    key = spec.tensor or (next(iter(tensors)) if len(tensors) == 1 else None)
    if key is None:
        raise LmlabError(f"steering '{name}': {path} holds {sorted(tensors)}; name one with 'tensor'")
    if key not in tensors:
        raise LmlabError(f"steering '{name}': {path} has no tensor {key!r} (it has {sorted(tensors)})")
    return tensors[key]


class SteeringTable:
    """Loaded steering vectors and which request rows use them.

    ``attach(row_ids, name, coeff)`` before the rows' first forward, ``detach(row_ids)`` when they leave.
    Only the engine thread touches the table and runs the model, so it needs no lock.
    """

    def __init__(self, model, specs: dict[str, SteerSpec]) -> None:
        self.model = model
        self.specs = dict(specs)
        points = hook_points(model)
        for name, spec in specs.items():
            if spec.hook not in points:
                sample = ", ".join(list(points)[:4])
                raise LmlabError(f"steering '{name}': unknown hook point {spec.hook!r} "
                                 f"(names look like: {sample}, ...)")
        shapes = self._hook_shapes({s.hook for s in specs.values()})
        self.vectors: dict[str, torch.Tensor] = {}
        for name, spec in specs.items():
            vec = load_steering_tensor(spec, name)
            want = shapes[spec.hook]
            if tuple(vec.shape) != want:
                raise LmlabError(f"steering '{name}': tensor of shape {tuple(vec.shape)} does not match hook "
                                 f"point {spec.hook} (per-token shape {want})")
            self.vectors[name] = vec.to(device=model.device, dtype=model.dtype)
        # per lane (a decoder of the engine; each numbers its rows from 0): hook -> rid -> delta, and rid -> hook
        self._lanes: dict[int, tuple[dict[str, dict[int, torch.Tensor]], dict[int, str]]] = {}
        self.use(0)
        self._stack = contextlib.ExitStack()
        if specs:
            self._stack.enter_context(hooks(model, [(h, self._hook) for h in self._rows]))

    def _hook_shapes(self, names: set[str]) -> dict[str, tuple[int, ...]]:
        """Per-token shape (after [B, T]) of each hook point, probed with a one-token forward."""
        if not names:
            return {}
        with torch.no_grad():
            _, acts = run_with_cache(self.model, torch.zeros(1, 1, dtype=torch.long, device=self.model.device),
                                     names=sorted(names))
        return {n: tuple(a.shape[2:]) for n, a in acts.items()}

    def use(self, lane: int) -> None:
        """Select the decoder (lane) whose rows the next attach/detach and forwards refer to."""
        if lane not in self._lanes:
            self._lanes[lane] = ({s.hook: {} for s in self.specs.values()}, {})
        self._rows, self._by_row = self._lanes[lane]

    def drop_lane(self, lane: int) -> None:
        if lane != 0:
            self._lanes.pop(lane, None)
        self.use(0)

    @property
    def names(self) -> list[str]:
        return sorted(self.specs)

    def default_coeff(self, name: str) -> float:
        return self.specs[name].coeff

    def attach(self, row_ids: list[int], name: str, coeff: float) -> None:
        hook = self.specs[name].hook
        delta = coeff * self.vectors[name]  # [*per-token shape]
        for rid in row_ids:
            self._rows[hook][rid] = delta
            self._by_row[rid] = hook

    def detach(self, row_ids: list[int]) -> None:
        for rid in row_ids:
            hook = self._by_row.pop(rid, None)
            if hook is not None:
                self._rows[hook].pop(rid, None)

    @property
    def num_attached(self) -> int:
        return sum(len(by_row) for _, by_row in self._lanes.values())

    def _hook(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        table = self._rows.get(name)
        ctx = current_context()
        if not table or ctx is None or ctx.row_ids is None:
            return None
        for rid, delta in table.items():
            mask = ctx.row_mask(rid)  # [B] bool: this request's rows only
            if bool(mask.any()):
                x = x + mask.to(x.dtype).view(-1, *([1] * (x.dim() - 1))) * delta  # [B, T, ...]
        return x

    def close(self) -> None:
        self._stack.close()


class AdapterSet:
    """LoRA (or other lmlab.peft) adapters loaded into the model, inactive until the engine selects one."""

    def __init__(self, model, paths: dict[str, str]) -> None:
        from lmlab.peft import load_adapter, set_adapter

        self.model = model
        self.names = sorted(paths)
        for name, path in paths.items():
            if not Path(path).is_dir():
                raise LmlabError(f"adapter '{name}': {path} is not a directory")
            load_adapter(model, path, name, activate=False)
        if paths:
            set_adapter(model, None)
        self.active: str | None = None

    def select(self, name: str | None) -> None:
        if name == self.active:
            return
        from lmlab.peft import set_adapter

        set_adapter(self.model, name)
        self.active = name
