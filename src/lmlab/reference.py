"""The reference checkpoints shipped inside the package: models that already know the quickstart world.

Six are shipped, loaded by name with ``load_reference(name)`` (docs/world.md lists them with their figures):

* ``world-llama-0.9m`` (the default): the quickstart model, facts only, 128-token context;
* ``world-llama-2m-1k`` (:data:`WORLD_NAME`): the model that knows the whole world -- a fresh 2.15M-parameter
  model trained on facts, QA, chat dialogues, attribute text and long-context retrieval, context 1,152
  tokens (``lmlab.train.world_recipe.WORLD_RECIPES``);
* ``world-llama-0.9m-1k``: the first, weaker world model (the quickstart model trained further on the same
  kinds of text; no retrieval), kept because earlier tables were measured on it;
* ``world-llama-2m-1k-v2``: the same shape trained with a copy phase first (an induction circuit, no retrieval
  yet), and its continuations that retrieve from their context: ``world-llama-2m-1k-retrieval`` and
  ``world-llama-2m-1k-retrieval-2``.

A world reference's record holds its measured quality (``lmlab.train.world_quality``); rebuild one with
``python -m lmlab.reference --name NAME --steps N`` (N from its record).

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

from lmlab.reference_names import ASSET_DIR, ASSETS, NAME, REFERENCES, WORLD_NAME, WORLD_NAMES, resolve  # noqa: F401
RECORD_FILE = "lmlab_reference.json"
QUALITY_KEYS = ("train_fact_recall", "heldout_paraphrase_recall", "two_hop_accuracy")
SUBSET = 24  # probes per list in the record's ``quality_subset`` (re-checked by tests/test_reference.py)


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


def verify_files(path: Path, record: dict) -> None:
    """Every file the record lists (at least ``model.safetensors``) must have its recorded sha256."""
    expected = dict(record.get("files_sha256") or {})
    expected.setdefault("model.safetensors", record.get("model_sha256"))
    for name, digest in sorted(expected.items()):
        file = Path(path) / name
        if not file.is_file():
            raise LmlabError(f"{file}: missing (the reference record lists it)")
        if digest is not None and sha256(file) != digest:
            raise LmlabError(f"{file}: sha256 does not match the reference record (corrupted or replaced; "
                             f"rebuild with `python -m lmlab.reference`)")


def world_of(record: dict):
    """The world a reference was trained on, rebuilt from its record (quickstart preset unless it says)."""
    from lmlab.data.world import WorldConfig, build_world

    spec = record.get("world") or {"preset": "quickstart", "seed": record["seed"]}
    return build_world(getattr(WorldConfig, spec["preset"])(seed=spec["seed"]))


def load_reference(path: str | os.PathLike = NAME, dtype=None) -> Reference:
    """A shipped model by name (default ``world-llama-0.9m``; see :data:`REFERENCES`) or from a directory
    built by this module: its model, tokenizer, world and record. Files are checked against the record's
    sha256 first, so a corrupted file is a one-line error rather than a wrong model."""
    import lmlab

    path = resolve(path)
    record = read_record(path)
    verify_files(path, record)
    model = lmlab.load(path, dtype=dtype).eval()
    tokenizer = lmlab.load_tokenizer(path)
    return Reference(model, tokenizer, world_of(record), record)


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
    _install(staged, out)
    return record


def _install(staged: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # left over from an interrupted rebuild
    if out.exists():
        os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)


def build_world_reference(out: Path | None = None, run: Path | None = None, steps: int | None = None,
                          resume: bool = False, progress: bool = True, say=print, name: str = WORLD_NAME,
                          precision: str | None = None) -> dict:
    """Train (or, with ``resume``, continue) the recipe of world reference ``name`` in ``run``, evaluate it in
    full and on the :data:`SUBSET` the tests re-check, and write checkpoint + record to ``out`` (atomically).

    ``precision`` ("fp32" / "bf16") replaces the recipe's: which one trains faster depends on the CPU
    (``benchmarks/train_precision.py``), and either gives other weights than the shipped ones, as another CPU does."""
    import platform

    import torch

    import lmlab
    from lmlab.train.world_quality import N_PER_CELL, evaluate_world_model
    from lmlab.train.world_recipe import WORLD_RECIPES, train_reference_model

    out = Path(out) if out is not None else ASSETS / name
    recipe = WORLD_RECIPES[name] if steps is None else WORLD_RECIPES[name].scaled(steps=steps)
    if precision is not None:
        recipe = recipe.scaled(precision=precision)
    with tempfile.TemporaryDirectory(prefix="lmlab-reference-") as tmp:
        run = Path(run) if run is not None else Path(tmp) / "run"
        model, tokenizer, world, report = train_reference_model(run, recipe, resume=resume, progress=progress,
                                                                evaluate=False, say=say)
        torch.set_num_threads(recipe.threads)
        say("evaluating (full, then the test subset)")
        quality = evaluate_world_model(model, tokenizer, world)
        subset = evaluate_world_model(model, tokenizer, world, subset=SUBSET, n_samples=8, n_per_cell=2,
                                      context_tokens=(1024,))
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        staged.chmod(0o755)
        for file in sorted((run / "model").iterdir()):
            shutil.copy2(file, staged / file.name)
            (staged / file.name).chmod(0o644)
    files = {f.name: sha256(f) for f in sorted(staged.iterdir())}
    record = {
        "name": out.name,
        "recipe": f"python -m lmlab.reference --name {name} --steps {recipe.steps}"
                  + (f" --precision {precision}" if precision is not None else ""),
        "recipe_fields": recipe.to_dict(), "world": {"preset": "quickstart", "seed": recipe.seed},
        "seed": recipe.seed, "steps": recipe.steps, "vocab_size": report["vocab_size"],
        "parameters": report["parameters"], "n_facts": report["n_facts"], "final_loss": report["final_loss"],
        "quality": quality, "quality_options": {"n_per_cell": N_PER_CELL}, "quality_subset": subset,
        "quality_subset_options": {"subset": SUBSET, "n_samples": 8, "n_per_cell": 2, "context_tokens": [1024]},
        "built_with": {"lmlab": lmlab.__version__, "torch": torch.__version__, "python": platform.python_version(),
                       "machine": platform.machine(), "threads": recipe.threads,
                       "train_seconds": report["train_seconds"], "tokens_per_s": report["tokens_per_s"]},
        "model_sha256": files["model.safetensors"], "files_sha256": files,
    }
    (staged / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _install(staged, out)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmlab.reference", description="Rebuild a shipped reference checkpoint.")
    p.add_argument("--name", default=NAME, help=f"which reference: {', '.join(REFERENCES)} (default: {NAME})")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the package's asset)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help=f"{NAME} only")
    p.add_argument("--run", type=Path, default=None, help="a world reference: keep the training run (checkpoints) here")
    p.add_argument("--resume", action="store_true", help="a world reference: continue the run in --run")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="a world reference: train in this precision instead of the recipe's (see "
                        "benchmarks/train_precision.py for which is faster on this CPU)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        from lmlab.train.world_recipe import WORLD_RECIPES

        unshipped = args.name in WORLD_RECIPES and args.name not in REFERENCES  # a recipe kept for its record
        if args.name not in REFERENCES and not unshipped:
            raise LmlabError(f"--name: unknown reference {args.name!r} (shipped: {', '.join(REFERENCES)})")
        if unshipped and args.out is None:
            raise LmlabError(f"--name: {args.name!r} is a recipe that is not shipped; give --out DIR to build it there")
        if args.name in WORLD_NAMES or unshipped:
            record = build_world_reference(args.out, args.run, args.steps, args.resume, progress=not args.no_progress,
                                           name=args.name, precision=args.precision)
        elif args.precision is not None:
            raise LmlabError(f"--precision: only for a world reference; {args.name!r} trains in fp32")
        else:
            record = build_reference(args.out or ASSET_DIR, args.steps or 500, args.seed,
                                     progress=not args.no_progress)
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
