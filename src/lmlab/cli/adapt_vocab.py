"""``lmlab adapt-vocab SRC OUT``: extend a checkpoint's vocabulary or swap its tokenizer, initialising the new
embedding rows (WECHSEL, mean, random; overlap copying), and write an HF checkpoint + tokenizer to OUT.

  --extend FILE             new tokens, one per line (init: subword_mean | mean | random)
  --target-tokenizer DIR    swap to this tokenizer (init: wechsel | mean | random); wechsel needs --dictionary
                            (source<TAB>target per line) and --source-text/--target-text files
  --config FILE             a recipe (configs/adapt-*.yaml, fields of ``lmlab.adapt.recipe.AdaptVocabRecipe``);
                            ``--set key=value`` and the flags above override it
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    # every flag defaults to None: only the flags given override the --config recipe (FLAGS maps them to fields)
    p.add_argument("src", nargs="?", help="source checkpoint directory (config.json + model.safetensors + tokenizer.json)")
    p.add_argument("out", nargs="?", help="output directory for the adapted checkpoint and tokenizer")
    p.add_argument("--config", metavar="FILE", help="YAML recipe, e.g. configs/adapt-wechsel-swap.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    p.add_argument("--extend", metavar="FILE", help="text file of new tokens, one per line")
    p.add_argument("--target-tokenizer", metavar="DIR", help="tokenizer directory to swap to")
    p.add_argument("--init", default=None,
                   help="extend: subword_mean (default) | mean | random; swap: wechsel (default) | mean | random")
    p.add_argument("--dictionary", metavar="FILE", help="bilingual dictionary for wechsel (source<TAB>target lines)")
    p.add_argument("--source-text", nargs="+", default=None, help="source-language text files (wechsel)")
    p.add_argument("--target-text", nargs="+", default=None, help="target-language text files (wechsel)")
    p.add_argument("--text-field", default=None, help="JSONL/parquet field holding the text (default text)")
    p.add_argument("--no-copy-overlap", dest="copy_overlap", action="store_false", default=None,
                   help="swap: do not copy rows of tokens shared by both vocabularies (pure WECHSEL)")
    p.add_argument("--neighbors", type=int, default=None, help="wechsel k (paper default 10)")
    p.add_argument("--temperature", type=float, default=None, help="wechsel softmax temperature (paper default 0.1)")
    p.add_argument("--seed", type=int, default=None)


FLAGS = {"src": "src", "out": "out", "extend": "extend", "target_tokenizer": "target_tokenizer", "init": "init",
         "dictionary": "dictionary", "source_text": "source_text", "target_text": "target_text",
         "text_field": "text_field", "copy_overlap": "copy_overlap", "neighbors": "wechsel.neighbors",
         "temperature": "wechsel.temperature", "seed": "seed"}


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
    from lmlab.adapt import extend_vocabulary, read_dictionary, swap_tokenizer
    from lmlab.adapt.recipe import load_recipe

    given = {field: getattr(args, name) for name, field in FLAGS.items() if getattr(args, name) is not None}
    r = load_recipe(args.config, list(args.set), given)
    src, out = Path(r.src), Path(r.out)
    if out.exists() and out.resolve() == src.resolve():
        raise LmlabError("OUT must differ from SRC (adapting in place would overwrite the source checkpoint)")
    if not (src / "tokenizer.json").exists():
        raise LmlabError(f"SRC {src}: no tokenizer.json (the source tokenizer is needed)")
    model, tokenizer = lmlab.load(src), lmlab.load_tokenizer(src)
    if r.extend:
        init = r.init or "subword_mean"
        model, tokenizer = extend_vocabulary(model, tokenizer, _read_tokens(r.extend), init=init, seed=r.seed)
    else:
        init = r.init or "wechsel"
        target = lmlab.load_tokenizer(r.target_tokenizer)
        kwargs = {}
        if init == "wechsel":
            if not r.dictionary:
                raise LmlabError("--init wechsel needs --dictionary FILE (source<TAB>target word pairs)")
            kwargs = {"dictionary": read_dictionary(r.dictionary),
                      "source_texts": _read_texts(r.source_text, r.text_field, "--source-text"),
                      "target_texts": _read_texts(r.target_text, r.text_field, "--target-text"),
                      "config": r.wechsel}
        model = swap_tokenizer(model, tokenizer, target, init, copy_overlap=r.copy_overlap, seed=r.seed, **kwargs)
        tokenizer = target
    lmlab.save(model, out, tokenizer=tokenizer)
    print(f"wrote {out}: vocabulary {model.config.vocab_size} ({init})", file=sys.stderr)
    return 0
