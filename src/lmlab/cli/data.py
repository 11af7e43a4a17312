"""``lmlab data INPUT... --out DIR``: text/JSONL/Parquet files or directories -> token shards + tokenizer.

Trains a byte-level BPE tokenizer on the inputs unless ``--tokenizer DIR`` gives one. DIR then holds
``index.json``, ``train_*.bin``, ``val_*.bin`` and the tokenizer files: point a recipe's ``data.path`` at it
(``configs/pretrain-my-text.yaml``) and ``lmlab train`` ends with a model directory that has the tokenizer.
"""

from __future__ import annotations

import argparse

from lmlab.data.prepare import DEFAULT_VAL_FRACTION, DEFAULT_VOCAB_SIZE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt / .jsonl / .parquet files, directories or globs")
    p.add_argument("--out", required=True, help="shard directory to write (a previous one is replaced)")
    p.add_argument("--tokenizer", default=None, help="directory with tokenizer.json to use instead of training one")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="BPE vocabulary size when training one")
    p.add_argument("--min-frequency", type=int, default=2, help="BPE: minimum pair count for a merge")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="share of documents held out for validation")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    p.add_argument("--split", choices=["file", "paragraph", "line"], default="file",
                   help=".txt document boundary: whole file, blank-line paragraph, or line")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation assignment")


def run(args: argparse.Namespace) -> int:
    from lmlab.data.prepare import prepare_corpus
    from lmlab.errors import LmlabError

    if not 0.0 <= args.val_fraction < 1.0:
        raise LmlabError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    index, tokenizer = prepare_corpus(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                                      min_frequency=args.min_frequency, val_fraction=args.val_fraction,
                                      text_field=args.text_field, split=args.split, seed=args.seed)
    train, val = index.splits["train"], index.splits.get("val")
    print(f"wrote {args.out}: {index.num_documents} documents; train {train.tokens} tokens ({train.documents} docs), "
          f"val {val.tokens if val else 0} tokens ({val.documents if val else 0} docs); tokenizer {len(tokenizer)} "
          f"tokens")
    print(f"next: lmlab train configs/pretrain-my-text.yaml --set data.path={args.out} --set run.out_dir=runs/my-model")
    return 0
