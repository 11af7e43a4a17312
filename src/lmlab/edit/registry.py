"""Editing methods by unique lowercase name (``rome``, ``memit``, ``alphaedit``): a config class per method."""

from __future__ import annotations

from lmlab.errors import LmlabError

_METHODS: dict[str, type] = {}


def register_editor(name: str):
    """Class decorator: register an editor config dataclass (with a ``run`` method) under ``name``."""
    if not name or name != name.lower():
        raise ValueError(f"editor names are lowercase, got {name!r}")

    def decorate(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"editor {name!r} is already registered")
        cls.method = name
        _METHODS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    import lmlab.edit.methods  # noqa: F401 -- registers the built-in editors


def available_editors() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_editor(name: str) -> type:
    _load_builtins()
    if name not in _METHODS:
        raise LmlabError(f"edit: unknown method {name!r} (known: {', '.join(available_editors())})")
    return _METHODS[name]
