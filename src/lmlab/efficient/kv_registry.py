"""The registry of KV-cache eviction policies, by lowercase name: ``kv_policy(name, budget=...)`` builds one."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from lmlab.errors import LmlabError

_POLICIES: dict[str, type] = {}


def register_policy(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in _POLICIES:
            raise LmlabError(f"KV policy {name!r} is registered twice")
        cls.name = name
        _POLICIES[name] = cls
        return cls

    return decorate


def available_policies() -> list[str]:
    importlib.import_module("lmlab.efficient.kv_policies")  # the built-ins register themselves (by name: no cycle)

    return sorted(_POLICIES)


def kv_policy(name: str, budget: int | float, **options: Any):
    """A fresh ``CachePolicy`` for ``lmlab.generate(..., cache_policy=...)``.

    ``budget``: tokens kept per row (an int >= 1), or a fraction in (0, 1] of the prompt's length (the
    papers' "KV cache budget"; resolved once, on the prompt, then fixed for the whole generation).
    ``options``: the policy's own settings (e.g. ``n_sinks`` for "sinks", ``seed`` for "keyformer").
    """
    names = available_policies()
    if name not in _POLICIES:
        raise LmlabError(f"unknown KV policy {name!r} (available: {', '.join(names)})")
    return _POLICIES[name](budget=budget, **options)
