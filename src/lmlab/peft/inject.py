"""Attach adapters to modules selected by name patterns, leaving the base modules untouched.

An adapted module keeps its class, its parameters and their state-dict names. Its adapters live in a child
``AdapterSlot`` (a ModuleDict) named ``adapters``, so their keys read ``<module>.adapters.<name>.<param>``,
and act through one forward hook (adds ``adapter(x, y)`` to the output ``y``) and one forward pre-hook
(adapters placed before the module rewrite its input). At most one adapter per model is active; with none
active, or adapters disabled, a forward is bit-for-bit the base model's.

Merging (LoRA only) adds ``scaling * B @ A`` to the base weight in place and records the merged name in
the slot, so the hook skips it; unmerging subtracts the same tensor.

Target patterns follow peft: a string is a regex that must match the whole module name; a list matches a
module whose name equals an entry or ends with ``"." + entry``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lmlab.errors import LmlabError

SLOT = "adapters"  # child-module name holding a module's adapters
_HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------- configs

@dataclass
class AdapterConfig:
    """Base of every method config. Subclasses declare ``target_modules`` and their hyperparameters."""

    method: ClassVar[str] = ""

    def accepts(self, module: nn.Module, model: nn.Module) -> bool:
        """Whether this method can wrap ``module`` (LoRA: nn.Linear only)."""
        return isinstance(module, nn.Linear)

    def build(self, module: nn.Module, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def validate(self) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d.get("target_modules"), tuple):
            d["target_modules"] = list(d["target_modules"])
        return {"method": self.method, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "adapter config") -> "AdapterConfig":
        """Build from plain values through ``lmlab.config_io`` (the one coercion path: unknown keys and wrong
        types are one-line errors naming the key; YAML's ``5e-1`` string becomes a float), then validate."""
        from lmlab.config_io import parse_dataclass

        cfg = parse_dataclass(cls, dict(d), "", where)
        cfg.validate()
        return cfg


# ------------------------------------------------------------------------------------------ slot + hooks

class AdapterSlot(nn.ModuleDict):
    """The adapters of one module, by name, plus which one is active / merged and whether any is enabled."""

    def __init__(self) -> None:
        super().__init__()
        self._active: str | None = None
        self._merged: str | None = None
        self._enabled = True

    def current(self) -> nn.Module | None:
        """The adapter the forward must apply (active, enabled, and not already merged into the weight)."""
        if not self._enabled or self._active is None or self._active == self._merged or self._active not in self:
            return None
        return self[self._active]


def _slot(module: nn.Module) -> AdapterSlot | None:
    s = module._modules.get(SLOT)
    return s if isinstance(s, AdapterSlot) else None


def _output_hook(module: nn.Module, args: tuple, output: torch.Tensor):
    slot = _slot(module)
    adapter = slot.current() if slot is not None else None
    if adapter is None or adapter.position == "input":
        return None
    x = args[0]
    dtype = output.dtype
    delta = adapter(x.to(adapter.dtype), output.to(adapter.dtype) if adapter.position == "output" else None)
    return output + delta.to(dtype)


def _input_hook(module: nn.Module, args: tuple):
    slot = _slot(module)
    adapter = slot.current() if slot is not None else None
    if adapter is None or adapter.position != "input":
        return None
    x = args[0]
    return (x + adapter(x.to(adapter.dtype), None).to(x.dtype),) + tuple(args[1:])


def _install_hooks(module: nn.Module) -> None:
    if _output_hook not in module._forward_hooks.values():
        module.register_forward_hook(_output_hook)
    if _input_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_input_hook)


def _remove_hooks(module: nn.Module) -> None:
    for hooks, fn in ((module._forward_hooks, _output_hook), (module._forward_pre_hooks, _input_hook)):
        for key in [k for k, v in hooks.items() if v is fn]:
            del hooks[key]


# ------------------------------------------------------------------------------------- target matching

def _is_inside_slot(name: str) -> bool:
    return f".{SLOT}." in f".{name}."


def pattern_matches(patterns: str | Sequence[str], name: str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def match_modules(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Names of the modules ``config.target_modules`` selects and the method can wrap (error if none)."""
    patterns = config.target_modules
    if not patterns:
        raise LmlabError(f"{config.method}: target_modules is empty")
    if not isinstance(patterns, str) and not all(isinstance(p, str) for p in patterns):
        raise LmlabError(f"{config.method}: target_modules must be a regex string or a list of names, got {patterns!r}")
    found = [n for n, m in model.named_modules() if n and not _is_inside_slot(n)
             and pattern_matches(patterns, n) and config.accepts(m, model)]
    if not found:
        available = [n for n, m in model.named_modules() if n and not _is_inside_slot(n) and config.accepts(m, model)]
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in available})
        raise LmlabError(f"{config.method}: target_modules {patterns!r} match no module it can adapt; "
                         f"available suffixes: {suffixes}; e.g. {available[:6]}")
    return found


# ------------------------------------------------------------------------------------- model operations

def adapter_configs(model: nn.Module) -> dict[str, AdapterConfig]:
    """The model's adapters by name -> their configs (kept on the model as ``model.adapter_configs``)."""
    if not hasattr(model, "adapter_configs"):
        model.adapter_configs = {}
    return model.adapter_configs


def adapted_modules(model: nn.Module, name: str | None = None) -> Iterator[tuple[str, nn.Module, AdapterSlot]]:
    """(module name, module, slot) for every adapted module (holding adapter ``name`` if given)."""
    for mod_name, module in model.named_modules():
        slot = _slot(module)
        if slot is not None and (name is None or name in slot):
            yield mod_name, module, slot


def list_adapters(model: nn.Module) -> list[str]:
    return list(adapter_configs(model))


def active_adapter(model: nn.Module) -> str | None:
    return getattr(model, "active_adapter_name", None)


def require_adapter(model: nn.Module, name: str) -> None:
    """LmlabError unless the model has an adapter called ``name``."""
    if name not in adapter_configs(model):
        raise LmlabError(f"no adapter named {name!r} on this model (adapters: {list_adapters(model) or 'none'})")


def check_new_name(model: nn.Module, name: str) -> None:
    """Adapter names are ModuleDict keys: no dots, no leading underscore, not a module attribute name."""
    if not isinstance(name, str) or not name or "." in name or name.startswith("_"):
        raise LmlabError(f"adapter name must be a non-empty string without dots or a leading '_', got {name!r}")
    if hasattr(AdapterSlot, name):
        raise LmlabError(f"adapter name {name!r} is reserved (an attribute of torch modules); pick another")
    if name in adapter_configs(model):
        raise LmlabError(f"an adapter named {name!r} already exists (delete_adapter it first)")


def attach(model: nn.Module, module_name: str, adapter_name: str, adapter: nn.Module) -> None:
    """Put ``adapter`` into the slot of ``module_name`` (creating the slot and hooks on first use)."""
    module = model.get_submodule(module_name)
    slot = _slot(module)
    if slot is None:
        slot = AdapterSlot()
        module.add_module(SLOT, slot)
        _install_hooks(module)
    if adapter_name in slot:
        raise LmlabError(f"{module_name} already has an adapter named {adapter_name!r}")
    adapter.train(module.training)  # follow the model's train/eval mode (dropout)
    slot[adapter_name] = adapter
    slot._active = active_adapter(model)


def adapter_dtype(module: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    """Adapters of fp16/bf16 modules train in fp32 unless told otherwise (peft's autocast_adapter_dtype)."""
    if dtype is not None:
        return dtype
    ref = next(module.parameters(), None)  # the module's own weight comes before any adapter's
    base = ref.dtype if ref is not None else torch.float32
    return torch.float32 if base in _HALF else base


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def add_adapter(model: nn.Module, config: AdapterConfig, name: str = "default", *, freeze_base: bool = True,
                dtype: torch.dtype | None = None, activate: bool = True) -> list[str]:
    """Attach a new adapter ``name`` built from ``config`` to every module it targets; returns their names.

    With ``freeze_base`` only this adapter's parameters keep ``requires_grad``. The adapter becomes the
    active one unless ``activate=False``.
    """
    check_new_name(model, name)
    config.validate()
    targets = match_modules(model, config)
    for mod_name in targets:
        module = model.get_submodule(mod_name)
        adapter = config.build(module, model).to(device=_device(module), dtype=adapter_dtype(module, dtype))
        attach(model, mod_name, name, adapter)
    adapter_configs(model)[name] = config
    if activate or active_adapter(model) is None:
        set_adapter(model, name)
    if freeze_base:
        mark_trainable(model, name)
    return targets


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make ``name`` the active adapter (None: no adapter, the base model). Unmerges a merged other one."""
    if name is not None:
        require_adapter(model, name)
    for _, module, slot in adapted_modules(model):
        if slot._merged is not None and slot._merged != name:
            _unmerge_slot(module, slot)
        slot._active = name if name is not None and name in slot else None
    model.active_adapter_name = name


def mark_trainable(model: nn.Module, name: str | None) -> None:
    """Freeze every parameter except adapter ``name``'s (None: freeze everything)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if name is None:
        return
    require_adapter(model, name)
    for _, _, slot in adapted_modules(model, name):
        for p in slot[name].parameters():
            p.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_state_dict(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors keyed ``<module>.<param>`` (the module's own names, without the slot)."""
    name = name or active_adapter(model)
    require_adapter(model, name)
    out = {}
    for mod_name, _, slot in adapted_modules(model, name):
        for pname, t in slot[name].state_dict().items():
            out[f"{mod_name}.{pname}"] = t
    return out


def delete_adapter(model: nn.Module, name: str, *, unmerge: bool = True) -> None:
    """Remove adapter ``name`` everywhere; if it was active, no adapter is active.

    A merged adapter is unmerged first, unless ``unmerge=False`` (its update then stays in the weights).
    """
    require_adapter(model, name)
    for _, module, slot in list(adapted_modules(model, name)):
        if slot._merged == name:
            if unmerge:
                _unmerge_slot(module, slot)
            else:
                slot._merged = None
        del slot[name]
        if slot._active == name:
            slot._active = None
        if len(slot) == 0:
            delattr(module, SLOT)
            _remove_hooks(module)
    del adapter_configs(model)[name]
    if active_adapter(model) == name:
        model.active_adapter_name = None


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model: inside, every adapter is off (a merged adapter is unmerged first, and stays so)."""
    slots = list(adapted_modules(model))
    previous = [slot._enabled for _, _, slot in slots]
    for _, module, slot in slots:
        if slot._merged is not None:
            _unmerge_slot(module, slot)
        slot._enabled = False
    try:
        yield
    finally:
        for (_, _, slot), was in zip(slots, previous):
            slot._enabled = was


def _shared_weight(model: nn.Module, module_name: str, weight: torch.Tensor) -> str | None:
    for n, p in model.named_parameters(remove_duplicate=False):
        if p is weight and not n.startswith(module_name + "."):
            return n
    return None


def merge_adapter(model: nn.Module, name: str | None = None) -> None:
    """Fold adapter ``name`` (default: the active one) into the base weights; it becomes active."""
    name = name or active_adapter(model)
    if name is None:
        raise LmlabError("merge_adapter: no adapter is active and no name was given")
    require_adapter(model, name)
    set_adapter(model, name)
    todo = [(n, m, s) for n, m, s in adapted_modules(model, name) if s._merged != name]
    for mod_name, module, slot in todo:
        adapter = slot[name]
        if not getattr(adapter, "mergeable", False):
            raise LmlabError(f"adapter {name!r} ({type(adapter).__name__} on {mod_name}) cannot be merged into "
                             "the weights: only linear adapters (LoRA) can")
        shared = _shared_weight(model, mod_name, module.weight)
        if shared is not None:
            raise LmlabError(f"cannot merge adapter {name!r} into {mod_name}.weight: it is tied to {shared} "
                             "(merging would change both); keep it unmerged or untie the weights")
    for _, module, slot in todo:
        with torch.no_grad():
            module.weight.add_(slot[name].delta_weight().to(module.weight.dtype))
        slot._merged = name


def _unmerge_slot(module: nn.Module, slot: AdapterSlot) -> None:
    with torch.no_grad():
        module.weight.sub_(slot[slot._merged].delta_weight().to(module.weight.dtype))
    slot._merged = None


def unmerge_adapter(model: nn.Module) -> None:
    """Subtract every merged adapter from the base weights (the inverse of ``merge_adapter``)."""
    for _, module, slot in adapted_modules(model):
        if slot._merged is not None:
            _unmerge_slot(module, slot)


def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """Merge adapter ``name`` (default: active) into the weights and remove every adapter: a plain model."""
    merge_adapter(model, name)
    for _, module, _ in list(adapted_modules(model)):
        delattr(module, SLOT)
        _remove_hooks(module)
    model.adapter_configs = {}
    model.active_adapter_name = None
    for p in model.parameters():
        p.requires_grad_(True)
    return model
