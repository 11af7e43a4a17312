"""The shipped reference models by name, and where they live: what both ``lmlab.reference`` (loading, building)
and the training recipe (warm starts from a shipped model) need, in a module that imports neither."""

from __future__ import annotations

import os
from pathlib import Path

from lmlab.errors import LmlabError

NAME = "world-llama-0.9m"  # the default: the quickstart model
WORLD_NAME = "world-llama-2m-1k"  # the model that knows the whole world (issue 11)
# every world reference: the first warm-started 0.9M one, session 8's copy-phase model and its continuations
# that retrieve, session 14's continuations with augmented questions and sentiment contrasts, and session 15's
# retrieval-4, which finds keys by their tokens, session 16's retrieval-5, which finds them at every depth, and
# session 17's v5, one fresh run of 26 minutes that does nearly all of it, and session 18's v6, one fresh run of
# 28 minutes that meets every target (docs/world.md)
WORLD_NAMES = (WORLD_NAME, "world-llama-0.9m-1k", "world-llama-2m-1k-v2", "world-llama-2m-1k-retrieval",
               "world-llama-2m-1k-retrieval-2", "world-llama-2m-1k-aug", "world-llama-2m-1k-retrieval-3",
               "world-llama-2m-1k-retrieval-4", "world-llama-2m-1k-retrieval-5", "world-llama-2m-1k-v5",
               "world-llama-2m-1k-v6")
ASSETS = Path(__file__).resolve().parent / "assets"
ASSET_DIR = ASSETS / NAME
REFERENCES = (NAME, *WORLD_NAMES)


def resolve(path: str | os.PathLike = NAME) -> Path:
    """A shipped reference's name (see :data:`REFERENCES`) or a directory -> its directory."""
    if isinstance(path, str) and path in REFERENCES:
        return ASSETS / path
    if Path(path).is_dir():
        return Path(path)
    if isinstance(path, str) and "/" not in path and os.sep not in path:
        raise LmlabError(f"reference: unknown name {path!r} (shipped: {', '.join(REFERENCES)})")
    raise LmlabError(f"reference: {path} is not a directory")
