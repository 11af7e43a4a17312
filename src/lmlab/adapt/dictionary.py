"""Bilingual dictionaries (source word -> target word) for WECHSEL's embedding alignment.

File format: UTF-8 text, one pair per line, ``source<TAB>target`` (or separated by a single space); blank lines
and lines starting with ``#`` are skipped.  A JSON object ``{"source": "target", ...}`` is accepted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmlab.errors import LmlabError


def read_dictionary(path: str | os.PathLike) -> dict[str, str]:
    """The dictionary in ``path``; a missing, non-UTF-8, malformed or empty file raises LmlabError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmlabError(f"dictionary {p}: file not found") from None
    except UnicodeDecodeError as err:
        raise LmlabError(f"dictionary {p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LmlabError(f"dictionary {p}: invalid JSON ({err.msg} at line {err.lineno})") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise LmlabError(f"dictionary {p}: JSON must map strings to strings")
        pairs = dict(data)
    else:
        pairs = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise LmlabError(f"dictionary {p}: line {n} must be 'source<TAB>target', got {line[:60]!r}")
            pairs.setdefault(parts[0], parts[1])
    if not pairs:
        raise LmlabError(f"dictionary {p}: no word pairs")
    return pairs
