"""``lmlab align CONFIG [--set key=value ...]``: DPO, or a reward model (Bradley-Terry / HaF-RM), on preference
pairs (see configs/align-*.yaml and lmlab.align.recipe). Writes ``<run.out_dir>/model`` (DPO) or
``<run.out_dir>/reward_model`` and ``align_config.yaml``, and prints a JSON summary with held-out pair accuracy.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/align-dpo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from lmlab.align.recipe import AlignConfig, run_align
    from lmlab.config_io import load_config, read_yaml
    from lmlab.train.run import recipe_path_overrides

    if args.threads:
        torch.set_num_threads(args.threads)
    # paths in the recipe are relative to the recipe file; "world:<split>" data names are not paths
    world_data = str((read_yaml(args.config).get("data") or {}).get("path", "")).startswith("world:")
    paths = [o for o in recipe_path_overrides(args.config) if not (world_data and o.startswith("data.path="))]
    cfg = load_config(AlignConfig, args.config, paths + list(args.set))
    summary = run_align(cfg, progress=False if args.no_progress else None)
    print(json.dumps(summary, indent=2, default=str))
    return 0
