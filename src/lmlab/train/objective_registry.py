"""The objective registry: a unique lowercase name -> an objective factory, usable from recipes by name.

Why its own module: the registry must not depend on which packages happen to be imported. The built-in
objectives live in several packages (``sft`` in ``lmlab.finetune``, ``balora`` in ``lmlab.peft``); they are
listed here by ``module:attribute`` and imported on first use of their name, so a fresh ``lmlab train`` with
``run.objective: sft`` works without importing ``lmlab.finetune`` first. Third-party objectives register
with ``@register_objective("name")`` (they must be imported before use, as any plug-in).

An objective's own arguments (``run.objective_args`` in a recipe) are parsed through ``lmlab.config_io``,
like every other field: a factory may declare ``args_schema`` (a dataclass whose fields are its keyword
arguments); otherwise the keyword parameters of its ``__init__`` (with their annotations and defaults) are
the schema. Unknown keys and wrong types are one-line errors naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from lmlab.errors import LmlabError

# name -> "module:attribute" of the built-in objectives, imported lazily by name
BUILTIN_OBJECTIVES: dict[str, str] = {
    "causal_lm": "lmlab.train.objectives:CausalLMObjective",
    "sft": "lmlab.finetune.objectives:SFTObjective",
    "sft_regularized": "lmlab.finetune.objectives:RegularizedObjective",
    "classify": "lmlab.finetune.classify:ClassificationObjective",
    "balora": "lmlab.peft.balora:BALoRAObjective",
    "dpo": "lmlab.align.dpo:DPOObjective",
    "reward": "lmlab.align.reward:RewardObjective",
    "haf_rm": "lmlab.align.reward:HaFRMObjective",
}

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_objective(name: str) -> Callable:
    """Class/function decorator: ``@register_objective("dpo")``. Names are unique and lowercase."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"objective names are lowercase, got {name!r}")

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"objective {name!r} is already registered")
        builtin = BUILTIN_OBJECTIVES.get(name)
        if builtin is not None and builtin != f"{factory.__module__}:{factory.__qualname__}":
            raise ValueError(f"objective {name!r} is a built-in ({builtin}); pick another name")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_objectives() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILTIN_OBJECTIVES))


def objective_factory(name: str, where: str = "run.objective") -> Callable[..., Any]:
    """The factory registered as ``name``, importing a built-in's module on first use."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in BUILTIN_OBJECTIVES:
        raise LmlabError(f"{where}: unknown objective {name!r} (known: {', '.join(available_objectives())})")
    module_name, attr = BUILTIN_OBJECTIVES[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    _REGISTRY.setdefault(name, factory)  # modules may also register it themselves with the decorator
    return _REGISTRY[name]


def _signature_schema(factory: Callable[..., Any], name: str) -> type:
    """A dataclass with the keyword parameters of ``factory`` (annotation -> type, default -> default)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: accept any value for them
        hints = {}
    specs = []
    for p in inspect.signature(target).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        tp = hints.get(p.name, Any)
        if p.default is inspect.Parameter.empty:
            specs.append((p.name, tp))
        else:
            specs.append((p.name, tp, dataclasses.field(default=p.default)))
    return dataclasses.make_dataclass(f"{name}_args", specs)


def objective_schema(name: str) -> type:
    """The dataclass whose fields are ``name``'s recipe arguments: the factory's ``args_schema``, else one
    derived from the keyword parameters of its ``__init__``."""
    factory = objective_factory(name)
    schema = getattr(factory, "args_schema", None)
    return schema if schema is not None else _signature_schema(factory, name)


def parse_objective_args(name: str, args: Mapping[str, Any] | None = None,
                         where: str = "run.objective_args") -> dict[str, Any]:
    """``args`` checked and coerced through ``config_io`` against ``objective_schema(name)`` (only the keys
    given are returned; the factory's own defaults fill the rest). Builds nothing, loads nothing."""
    from lmlab.config_io import parse_fields

    schema = objective_schema(name)
    parsed = parse_fields(schema, dict(args or {}), where, f"objective {name!r}")
    if getattr(objective_factory(name), "args_schema", None) is None:
        missing = [f.name for f in dataclasses.fields(schema) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in parsed]
        if missing:
            raise LmlabError(f"{where}: objective {name!r} needs {', '.join(missing)}")
    return parsed


def build_objective(name: str, args: Mapping[str, Any] | None = None, where: str = "run.objective_args") -> Any:
    """An objective instance from its name and its recipe arguments (validated first)."""
    return objective_factory(name)(**parse_objective_args(name, args, where))


def get_objective(name: Any, **kwargs: Any) -> Any:
    """An objective instance from its registered name (a callable is passed through unchanged)."""
    if callable(name) and not isinstance(name, str):
        return name
    if not isinstance(name, str):
        raise LmlabError(f"run.objective: expected a name, got {type(name).__name__}")
    return objective_factory(name)(**kwargs)
