"""Write the files the adapt-vocab recipes (configs/adapt-*.yaml) read, for a shipped world model moved to one
of the world's derived languages: the base checkpoint, a target-language BPE tokenizer of the same size, a
bilingual dictionary (a random half of the lexicon words seen in the text, as in scripts/adapt_world.py), the
source/target texts and a list of new tokens (the derived language's most frequent words).

Usage: ``PYTHONPATH=src python scripts/adapt_world_files.py --model world-llama-2m-1k [--lang lang_a] [--root .]``
then ``lmlab adapt-vocab --config configs/adapt-wechsel-swap.yaml`` (or adapt-extend.yaml).
Writes ``runs/adapt/base``, ``runs/adapt/target-tokenizer`` and ``runs/adapt/data/*`` under ``--root``.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import lmlab
from lmlab.adapt.wechsel import split_words
from lmlab.core.tokenizer import train_bpe
from lmlab.reference import load_reference
from lmlab.reference_names import WORLD_NAME


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=WORLD_NAME)
    ap.add_argument("--lang", default="lang_a")
    ap.add_argument("--new-tokens", type=int, default=200, help="how many target words the extension recipe adds")
    ap.add_argument("--root", default=".", help="the directory holding configs/ (recipe paths are ../runs/adapt/...)")
    args = ap.parse_args()
    ref = load_reference(args.model)
    root = Path(args.root) / "runs" / "adapt"
    base = ref.world.training_documents()
    target = [ref.world.translate(d, args.lang) for d in base]
    seen = {w for s in split_words(base) for w in s}
    lexicon = ref.world.languages[args.lang].lexicon
    used = sorted(b for b in lexicon if b in seen)
    random.Random(0).shuffle(used)
    lmlab.save(ref.model, root / "base", tokenizer=ref.tokenizer)
    train_bpe(target, len(ref.tokenizer)).save(root / "target-tokenizer")
    write_text(root / "data" / "dictionary.tsv", "".join(f"{b}\t{lexicon[b]}\n" for b in used[: len(used) // 2]))
    write_text(root / "data" / "source.txt", "\n".join(base) + "\n")
    write_text(root / "data" / "target.txt", "\n".join(target) + "\n")
    words = Counter(w for d in target for w in d.replace(".", " ").split())
    fresh = [w for w, _ in words.most_common() if ref.tokenizer.token_to_id(w) is None][: args.new_tokens]
    write_text(root / "data" / "new-tokens.txt", "\n".join(fresh) + "\n")
    print(f"wrote {root}: base {args.model}, {args.lang} tokenizer, {len(used) // 2} dictionary pairs, "
          f"{len(fresh)} new tokens")


if __name__ == "__main__":
    main()
