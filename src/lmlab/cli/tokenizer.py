"""``lmlab tokenizer OUT FILE...``: train a byte-level BPE tokenizer (HF ``tokenizers``) and save it.

Inputs are positional after OUT, or given one per ``--files`` (repeatable), so ``--files a.jsonl OUT`` and
``OUT a.jsonl b.txt`` both work: ``--files`` takes exactly one path and can no longer swallow OUT.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="directory to write tokenizer.json + tokenizer_config.json into")
    p.add_argument("inputs", nargs="*", metavar="FILE", help=".txt / .jsonl / .parquet files or directories")
    p.add_argument("--files", action="append", default=[], metavar="FILE",
                   help="one more input file or directory (repeatable)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--text-field", default="text", help="JSONL/parquet field holding the text")


def run(args: argparse.Namespace) -> int:
    from lmlab.core.tokenizer import train_bpe
    from lmlab.data.prepare import documents
    from lmlab.errors import LmlabError
    from lmlab.io.output_paths import expect_directory_path

    paths = list(args.files) + list(args.inputs)
    if not paths:
        raise LmlabError("give input files after OUT (or with --files FILE)")
    expect_directory_path(args.out, "OUT")
    tokenizer = train_bpe(documents(paths, text_field=args.text_field), vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency)
    tokenizer.save(args.out)
    print(f"wrote {args.out}: {len(tokenizer)} tokens")
    return 0
