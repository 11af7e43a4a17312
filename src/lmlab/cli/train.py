"""``lmlab train CONFIG [--set key=value ...] [--resume]``: train from a YAML recipe (see configs/).

Paths in the recipe are relative to the recipe file; ``--set`` paths to the working directory. The run ends
by writing ``<run.out_dir>/model`` (HF checkpoint + tokenizer). Ctrl-C writes a checkpoint; ``--resume``
continues from it and says from which step. Under ``torchrun --nproc_per_node=N -m lmlab.train CONFIG`` the same recipe runs data-parallel.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/tiny-llama-world.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in run.out_dir (refused when there is none)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from lmlab.train import run_training

    summary = run_training(args.config, args.set, resume=args.resume, progress=False if args.no_progress else None)
    print(json.dumps(summary, indent=2, default=str))
    return 0
