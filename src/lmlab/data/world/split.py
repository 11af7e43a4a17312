"""Train/validation split by content: a text's split is a function of the text itself.

Why: splitting by document index lets an exact duplicate (the same fact sentence in two documents, the
same dialogue drawn twice) land on both sides, so validation loss would reward memorisation. Hashing the
content instead (SHA-256 of ``"<seed>:<text>"``) sends every copy of a text to the same split, and the
split of a text never depends on what else is in the corpus.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation")


def content_split(text: str, seed: int, validation_fraction: float) -> str:
    """"validation" for about ``validation_fraction`` of distinct texts, else "train"."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "validation" if u < validation_fraction else "train"
