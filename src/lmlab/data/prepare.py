"""Your own text to training shards: files or directories -> tokenizer (given or trained) -> token shards.

What ``lmlab data`` runs. The output directory holds the shards of ``lmlab.data.shards.build_shards`` (a
``train`` and a ``val`` split, chosen per document by a seeded hash) *and* the tokenizer files, so a training
recipe needs only ``data.path`` and the trained model directory gets the tokenizer from there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

# A held-out share large enough for a stable validation loss on a small corpus, small enough not to starve
# training; build_shards assigns documents, so a corpus of few large files should use --split paragraph.
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_VOCAB_SIZE = 8192


def documents(inputs: Sequence[str | os.PathLike], text_field: str = "text", split: str = "file") -> Iterator[str]:
    """The documents of every input (file, directory or glob), in the order given."""
    from lmlab.data.corpus import read_documents

    iterators = [read_documents(path, text_field=text_field, split=split) for path in inputs]  # path errors now
    for it in iterators:
        yield from it


def prepare_corpus(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, tokenizer: Any = None,
                   vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2,
                   val_fraction: float = DEFAULT_VAL_FRACTION, text_field: str = "text", split: str = "file",
                   seed: int = 0) -> tuple[Any, Any]:
    """Tokenise ``inputs`` into ``out_dir``; returns ``(ShardIndex, tokenizer)``.

    ``tokenizer``: a loaded tokenizer (or a directory holding tokenizer.json); None trains a byte-level BPE
    of ``vocab_size`` on the inputs (``lmlab.core.tokenizer.train_bpe``). An existing ``out_dir`` is replaced
    only when it is a previous shard directory (``build_shards`` refuses anything else)."""
    from lmlab.core.tokenizer import load_tokenizer, train_bpe
    from lmlab.data.shards import build_shards

    if not inputs:
        raise LmlabError("give at least one input file or directory")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LmlabError(f"--out {out}: exists and is a file; expected a directory path")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if tokenizer is None:
        tokenizer = train_bpe(documents(inputs, text_field, split), vocab_size=vocab_size, min_frequency=min_frequency)
    index = build_shards(documents(inputs, text_field, split), tokenizer, out, val_fraction=val_fraction, seed=seed)
    tokenizer.save(out)
    return index, tokenizer
