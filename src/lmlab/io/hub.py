"""Hugging Face model ids (``org/name``) to local directories, through ``huggingface_hub``'s cache.

A path that exists is used as is. Otherwise a string shaped like a model id is looked up in the local Hugging
Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) without touching the network, then downloaded when the network is
allowed (not under ``HF_HUB_OFFLINE=1``). ``huggingface_hub`` is imported only then: the core does not need it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lmlab.errors import LmlabError

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a checkpoint directory needs; other files of a hub repo (other weight formats, images) are skipped.
_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


def looks_like_model_id(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and bool(_MODEL_ID.match(path)) and not Path(path).exists()


def resolve_model_path(path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory for ``path``: the path itself, or the cached snapshot of the model id it names."""
    if not looks_like_model_id(path):
        return Path(path)
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise LmlabError(f"{path}: no such directory (reading it as a Hugging Face model id needs huggingface_hub: "
                         f"pip install huggingface_hub)") from None
    try:
        return Path(huggingface_hub.snapshot_download(str(path), revision=revision, allow_patterns=_PATTERNS,
                                                      local_files_only=True))
    except Exception as cached_err:  # noqa: BLE001 - any failure of the cache lookup means "not cached"
        first = _first_line(cached_err)
    if constants.HF_HUB_OFFLINE:
        raise LmlabError(f"{path}: no such directory, and not a model id in the local Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}; offline: HF_HUB_OFFLINE is set; {first})")
    try:
        return Path(huggingface_hub.snapshot_download(str(path), revision=revision, allow_patterns=_PATTERNS))
    except Exception as err:  # noqa: BLE001 - network, authentication, unknown repo: one line for each
        raise LmlabError(f"{path}: no such directory, not in the local Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}) and not downloadable ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
