"""Where lmlab may write: checks that keep a user's files safe from the verbs that write directories.

Two rules. A directory that a verb replaces wholesale (``quickstart --out``) must carry the marker file an
earlier run of that verb wrote, or be empty: anything else is the user's and is refused (``--force`` overrides,
but never for the working directory, one of its parents or the home directory). And a path that must become a
directory but is an existing file is refused with one line before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lmlab.errors import LmlabError

MARKER = ".lmlab-output"


def expect_directory_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, refused when it exists as something other than a directory (nothing is written)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise LmlabError(f"{what} {p}: exists and is a file; expected a directory path")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise LmlabError(f"{what} {p}: {parent} is a file, so no directory can be made under it")
        if parent.exists():
            break
    return p


def _protected(p: Path) -> bool:
    """The working directory, its parents, the home directory and the filesystem root are never replaced."""
    resolved = p.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    return resolved == cwd or resolved in cwd.parents or resolved == home or resolved.parent == resolved


def replace_output_dir(path: str | os.PathLike, verb: str, force: bool = False) -> Path:
    """Empty ``path`` for a fresh run of ``verb`` and mark it as ours; return it.

    Replaced only when it is empty or holds the marker ``verb`` wrote there; ``force`` replaces any directory
    except a protected one (the working directory, its parents, home, root). Refused with one line otherwise.
    """
    p = expect_directory_path(path, "--out")
    if p.exists():
        if _protected(p):
            raise LmlabError(f"--out {path}: refusing to replace the working directory, one of its parents or "
                             f"the home directory; choose a new directory")
        marker = p / MARKER
        ours = marker.is_file() and _marker_verb(marker) == verb
        if any(p.iterdir()) and not ours and not force:
            raise LmlabError(f"--out {path}: exists, is not empty and was not written by `lmlab {verb}` (no {MARKER} "
                             f"file); choose a new directory, or pass --force to replace it")
        shutil.rmtree(p)
    p.mkdir(parents=True)
    (p / MARKER).write_text(json.dumps({"written_by": f"lmlab {verb}"}) + "\n", encoding="utf-8")
    return p


def _marker_verb(marker: Path) -> str | None:
    try:
        written_by = json.loads(marker.read_text(encoding="utf-8")).get("written_by", "")
    except (OSError, ValueError, AttributeError):
        return None
    return written_by.removeprefix("lmlab ") if isinstance(written_by, str) else None


def umask_mode(base: int = 0o666) -> int:
    """The mode a file created with ``open()`` gets under the current umask (mkstemp would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask
