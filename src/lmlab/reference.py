"""The reference checkpoint shipped inside the package: a model that already knows the quickstart world.

Why: method work (editing a fact, steering, compressing the cache, ...) needs a model whose knowledge is
known, and training one takes minutes. ``load_reference()`` returns it at once, with the world it was
trained on (regenerated from its seed; the world is deterministic) and the quality recorded when it was built.

It is exactly what ``lmlab quickstart`` trains at its defaults (``lmlab.train.world_recipe.train_world_model``:
0.9M-parameter Llama-style model, BPE tokenizer, 500 steps). Rebuild it -- after a change to the world, the
recipe or the trainer -- with

    python -m lmlab.reference --out src/lmlab/assets/world-llama-0.9m

``tests/test_reference.py`` checks that the shipped files still reach the recorded quality and that the
recipe, re-run from scratch, still reaches it too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

NAME = "world-llama-0.9m"
ASSET_DIR = Path(__file__).resolve().parent / "assets" / NAME
RECORD_FILE = "lmlab_reference.json"
QUALITY_KEYS = ("train_fact_recall", "heldout_paraphrase_recall", "two_hop_accuracy")


@dataclass
class Reference:
    model: Any  # lmlab Transformer, eval mode
    tokenizer: Any  # lmlab Tokenizer
    world: Any  # lmlab.data.world World the model was trained on
    record: dict  # recipe, quality at build time, versions, checksum


def read_record(path: Path = ASSET_DIR) -> dict:
    file = Path(path) / RECORD_FILE
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise LmlabError(f"{file}: no reference record here (build one with `python -m lmlab.reference --out "
                         f"{path}`)") from None
    except json.JSONDecodeError as e:
        raise LmlabError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None


def load_reference(path: Path = ASSET_DIR, dtype=None) -> Reference:
    """The shipped model, its tokenizer, its world and its record."""
    import lmlab
    from lmlab.data.world import WorldConfig, build_world

    record = read_record(path)
    model = lmlab.load(path, dtype=dtype).eval()
    tokenizer = lmlab.load_tokenizer(path)
    world = build_world(WorldConfig.quickstart(seed=record["seed"]))
    return Reference(model, tokenizer, world, record)


def sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def build_reference(out: Path = ASSET_DIR, steps: int = 500, seed: int = 0, progress: bool = True) -> dict:
    """Train the recipe from scratch and write the checkpoint + record to ``out`` (replaced atomically)."""
    import platform

    import torch

    import lmlab
    from lmlab.train.world_recipe import train_world_model

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the quickstart default; the record states it
    with tempfile.TemporaryDirectory(prefix="lmlab-reference-") as tmp:
        _, _, _, report = train_world_model(Path(tmp) / "run", steps=steps, seed=seed, progress=progress)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        staged.chmod(0o755)
        for file in sorted((Path(tmp) / "run" / "model").iterdir()):
            shutil.copy2(file, staged / file.name)
            (staged / file.name).chmod(0o644)
    record = {
        "name": NAME,
        "recipe": f"lmlab quickstart --steps {steps} --seed {seed} --vocab-size {report['vocab_size']} --threads 1",
        "seed": seed, "steps": steps, "vocab_size": report["vocab_size"], "parameters": report["parameters"],
        "n_facts": report["n_facts"], "final_loss": report["final_loss"],
        "quality": {k: report[k] for k in QUALITY_KEYS},
        "built_with": {"lmlab": lmlab.__version__, "torch": torch.__version__, "python": platform.python_version(),
                       "machine": platform.machine(), "seconds": report["seconds"]},
        "model_sha256": sha256(staged / "model.safetensors"),
    }
    (staged / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # left over from an interrupted rebuild
    if out.exists():
        os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmlab.reference", description="Rebuild the shipped reference checkpoint.")
    p.add_argument("--out", type=Path, default=ASSET_DIR, help=f"output directory (default: {ASSET_DIR})")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        record = build_reference(args.out, args.steps, args.seed, progress=not args.no_progress)
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
