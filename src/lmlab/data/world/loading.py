"""Load a written world back: its config, and the world rebuilt from it (checked against its facts).

Why a module of its own: :mod:`writer` is used by ``World.write`` and loading needs ``build_world``, so
keeping both in one module made ``world`` and ``writer`` import each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmlab.data.world.config import WorldConfig
from lmlab.data.world.world import World, build_world
from lmlab.errors import LmlabError


def load_config(directory: str | os.PathLike) -> WorldConfig:
    """The ``WorldConfig`` saved in ``directory/world_config.json``."""
    path = Path(directory) / "world_config.json"
    if not path.is_file():
        raise LmlabError(f"directory: {path} not found (not a written world?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LmlabError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    return WorldConfig.from_dict(data)


def load_world(directory: str | os.PathLike, verify: bool = True) -> World:
    """Rebuild the world saved in ``directory`` from its config.

    With ``verify`` the rebuilt facts must equal ``facts.json`` byte for byte; a mismatch means the
    files came from a different lmlab version (generation changed), which would silently change the
    ground truth, so it is an error.
    """
    world = build_world(load_config(directory))
    if verify:
        path = Path(directory) / "facts.json"
        expected = [f.to_dict() for f in world.facts]
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))["facts"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise LmlabError(f"directory: {path} is missing or unreadable") from None
        if saved != expected:
            raise LmlabError(f"directory: {path} does not match the world rebuilt from world_config.json "
                             "(written by a different lmlab version?)")
    return world
