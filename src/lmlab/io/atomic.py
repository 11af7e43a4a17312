"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Each file is written to a temporary name in its own directory, flushed to disk, and moved into place with
``os.replace`` (atomic on POSIX within one file system).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lmlab.io.output_paths import umask_mode


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the parent directory must exist), readable as any file the user
    creates (mkstemp's temporary file is 0600; the result gets the umask's mode, like ``open()``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented UTF-8 JSON (NaN and infinities refused: they are not JSON)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` (name -> contiguous CPU tensor) as a safetensors file, atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata))
