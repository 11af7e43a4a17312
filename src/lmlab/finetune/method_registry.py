"""Fine-tuning methods by name: what a recipe's ``methods:`` section may name, each with its settings.

A recipe lists the methods to combine, each under its own name with its own settings::

    methods:
      lora: {r: 8, alpha: 16}       # any adapter method of lmlab.peft.registry (lora, balora, ...)
      migu: {ratio: 0.5}            # MIGU's gradient mask
      interpolate: {alpha: 0.5}     # WiSE-FT merge with the base model after training

Settings are parsed by ``lmlab.config_io`` into the method's config dataclass (unknown key or wrong type:
one line naming ``methods.<name>.<key>``). Nothing listed = full fine-tuning. Methods that choose which
weights train (``role = "params"``: the adapters, HFT) exclude each other.

A method object (``method_class(config)``) may define ``prepare(model)`` (before the Trainer is built),
``callbacks() -> list`` (Trainer callbacks, e.g. HFT's per-step re-selection) and ``finish(model, base)``
(after training; ``base`` is a copy of the model before training when ``needs_base``). ``finish`` runs in
role order: "gradient", then "params", then "merge".
"""

from __future__ import annotations

import importlib
from typing import Any

from lmlab.errors import LmlabError

# name -> "module:attribute" of the built-in non-adapter methods, imported when named
BUILTIN_METHODS: dict[str, str] = {
    "hft": "lmlab.finetune.hft:HalfFineTuning",
    "migu": "lmlab.finetune.migu:MIGU",
    "interpolate": "lmlab.finetune.interpolation:WeightInterpolation",
}
ROLES = ("gradient", "params", "merge")  # also the order in which finish() runs

_REGISTRY: dict[str, type] = {}


def register_finetune_method(name: str):
    """Class decorator for a method with ``config_class``, ``role`` and the optional hooks above."""
    if not name or name != name.lower():
        raise ValueError(f"fine-tuning method names are lowercase, got {name!r}")

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"fine-tuning method {name!r} is already registered")
        if getattr(cls, "role", None) not in ROLES or not hasattr(cls, "config_class"):
            raise ValueError(f"fine-tuning method {name!r} needs config_class and a role in {ROLES}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_finetune_methods() -> list[str]:
    from lmlab.peft.registry import available_methods

    return sorted(set(_REGISTRY) | set(BUILTIN_METHODS) | set(available_methods()))


class AdapterMethod:
    """An adapter method of ``lmlab.peft`` (LoRA, BA-LoRA, bottleneck adapters) as a fine-tuning method:
    attached before training; merged into the weights after it when the recipe's ``merge_adapter`` is set
    and the adapter is mergeable (saving then writes a plain checkpoint, else the adapter alone)."""

    role = "params"
    needs_base = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.merge = True

    def prepare(self, model: Any) -> None:
        from lmlab.peft import add_adapter

        add_adapter(model, self.config)

    def finish(self, model: Any, base: Any = None) -> None:
        if self.merge and self.mergeable(model):
            from lmlab.peft import merge_and_unload

            merge_and_unload(model)

    @staticmethod
    def mergeable(model: Any) -> bool:
        from lmlab.peft import adapted_modules

        return all(getattr(a, "mergeable", False) for _, _, slot in adapted_modules(model) for a in slot.values())


def method_class(name: str, where: str = "methods") -> tuple[type, type]:
    """(method class, its config dataclass) for ``name``: a registered or built-in method, else an adapter."""
    if name not in _REGISTRY and name in BUILTIN_METHODS:
        module_name, attr = BUILTIN_METHODS[name].split(":")
        _REGISTRY.setdefault(name, getattr(importlib.import_module(module_name), attr))
    if name in _REGISTRY:
        cls = _REGISTRY[name]
        return cls, cls.config_class
    from lmlab.peft.registry import available_methods, get_method

    if name in available_methods():
        return AdapterMethod, get_method(name)
    raise LmlabError(f"{where}: unknown fine-tuning method {name!r} (known: {', '.join(available_finetune_methods())})")


def parse_method_config(name: str, settings: Any, where: str = "methods") -> Any:
    """``settings`` (a mapping, or null for all defaults) -> the method's config dataclass, via config_io."""
    from lmlab.config_io import parse_dataclass

    _, config_class = method_class(name, where)
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise LmlabError(f"{where}.{name}: expected a mapping of settings, got {settings!r}")
    config = parse_dataclass(config_class, settings, f"{where}.{name}", "finetune config")
    if hasattr(config, "validate"):
        config.validate()
    return config


def build_methods(methods: dict[str, Any], where: str = "methods") -> list[Any]:
    """Method objects for a recipe's ``methods`` mapping (validated; at most one ``params`` method)."""
    built, params = [], []
    for name, settings in methods.items():
        cls, _ = method_class(name, where)
        method = cls(parse_method_config(name, settings, where))
        if method.role == "params":
            params.append(name)
        built.append(method)
    if len(params) > 1:
        raise LmlabError(f"{where}: {' and '.join(params)} both choose which weights train; use one of them")
    return built
