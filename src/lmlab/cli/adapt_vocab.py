"""``lmlab adapt-vocab SRC OUT``: extend a checkpoint's vocabulary or swap its tokenizer, initialising the new
embedding rows (WECHSEL, mean, random; overlap copying), and write an HF checkpoint + tokenizer to OUT.

  --extend FILE             new tokens, one per line (init: subword_mean | mean | random)
  --target-tokenizer DIR    swap to this tokenizer (init: wechsel | mean | random); wechsel needs --dictionary
                            (source<TAB>target per line) and --source-text/--target-text files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory (config.json + model.safetensors + tokenizer.json)")
    p.add_argument("out", help="output directory for the adapted checkpoint and tokenizer")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--extend", metavar="FILE", help="text file of new tokens, one per line")
    mode.add_argument("--target-tokenizer", metavar="DIR", help="tokenizer directory to swap to")
    p.add_argument("--init", default=None,
                   help="extend: subword_mean (default) | mean | random; swap: wechsel (default) | mean | random")
    p.add_argument("--dictionary", metavar="FILE", help="bilingual dictionary for wechsel (source<TAB>target lines)")
    p.add_argument("--source-text", nargs="+", default=[], help="source-language text files (wechsel)")
    p.add_argument("--target-text", nargs="+", default=[], help="target-language text files (wechsel)")
    p.add_argument("--text-field", default="text", help="JSONL/parquet field holding the text")
    p.add_argument("--no-copy-overlap", action="store_true",
                   help="swap: do not copy rows of tokens shared by both vocabularies (pure WECHSEL)")
    p.add_argument("--neighbors", type=int, default=10, help="wechsel k (paper default 10)")
    p.add_argument("--temperature", type=float, default=0.1, help="wechsel softmax temperature (paper default 0.1)")
    p.add_argument("--seed", type=int, default=0)


def _read_tokens(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LmlabError(f"--extend {path}: file not found") from None
    except UnicodeDecodeError:
        raise LmlabError(f"--extend {path}: not UTF-8 text") from None
    tokens = [line.strip() for line in lines if line.strip()]
    if not tokens:
        raise LmlabError(f"--extend {path}: no tokens (expected one token per line)")
    return tokens


def _read_texts(paths: list[str], field: str, flag: str) -> list[str]:
    from lmlab.data.corpus import read_documents

    if not paths:
        raise LmlabError(f"{flag}: init wechsel needs text files to build static embeddings")
    return [doc for path in paths for doc in read_documents(path, text_field=field, split="line")]


def run(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.adapt import (
        WechselConfig,
        extend_vocabulary,
        read_dictionary,
        swap_tokenizer,
    )

    src, out = Path(args.src), Path(args.out)
    if out.exists() and out.resolve() == src.resolve():
        raise LmlabError("OUT must differ from SRC (adapting in place would overwrite the source checkpoint)")
    if not (src / "tokenizer.json").exists():
        raise LmlabError(f"SRC {src}: no tokenizer.json (the source tokenizer is needed)")
    model, tokenizer = lmlab.load(src), lmlab.load_tokenizer(src)
    if args.extend:
        init = args.init or "subword_mean"
        model, tokenizer = extend_vocabulary(model, tokenizer, _read_tokens(args.extend), init=init, seed=args.seed)
    else:
        init = args.init or "wechsel"
        target = lmlab.load_tokenizer(args.target_tokenizer)
        kwargs = {}
        if init == "wechsel":
            if not args.dictionary:
                raise LmlabError("--init wechsel needs --dictionary FILE (source<TAB>target word pairs)")
            kwargs = {"dictionary": read_dictionary(args.dictionary),
                          "source_texts": _read_texts(args.source_text, args.text_field, "--source-text"),
                          "target_texts": _read_texts(args.target_text, args.text_field, "--target-text"),
                          "config": WechselConfig(neighbors=args.neighbors, temperature=args.temperature)}
        model = swap_tokenizer(model, tokenizer, target, init, copy_overlap=not args.no_copy_overlap,
                               seed=args.seed, **kwargs)
        tokenizer = target
    lmlab.save(model, out, tokenizer=tokenizer)
    print(f"wrote {out}: vocabulary {model.config.vocab_size} ({init})", file=sys.stderr)
    return 0
