"""The adapter-method registry: a unique lowercase name -> its config dataclass.

In its own module (not in ``lmlab.peft.__init__``) so that method modules (``lora``, ``adapters``,
``balora``) can register themselves without importing the package they are part of: no import cycle.
A method's settings are parsed by ``lmlab.config_io`` (``config_from_dict``), the one parsing path that
recipes, ``--set`` overrides and adapter files share.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmlab.errors import LmlabError

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator registering an adapter config dataclass under a unique lowercase name."""
    if not name or name != name.lower():
        raise ValueError(f"adapter method names are lowercase, got {name!r}")

    def decorate(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"adapter method {name!r} is already registered")
        cls.method = name
        _METHODS[name] = cls
        return cls

    return decorate


# The built-in methods' modules register themselves when imported; they are imported by name on first use of
# the registry (never at import time), so the registry does not depend on them and nothing on import order.
BUILTIN_MODULES = ("lmlab.peft.lora", "lmlab.peft.adapters", "lmlab.peft.balora")


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def available_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The config class registered as ``name``."""
    _load_builtins()
    if name not in _METHODS:
        raise LmlabError(f"unknown adapter method {name!r} (known: {', '.join(available_methods())})")
    return _METHODS[name]


def config_from_dict(d: dict[str, Any], where: str = "adapter config") -> Any:
    """A method config from ``{"method": name, **fields}`` (as in an adapter file); unknown keys are errors."""
    if not isinstance(d, dict) or "method" not in d:
        raise LmlabError(f"{where}: needs a 'method' key (one of {', '.join(available_methods())})")
    fields = dict(d)
    cls = get_method(fields.pop("method"))
    return cls.from_dict(fields, where=where)
