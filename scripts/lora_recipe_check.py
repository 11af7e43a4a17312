"""Do the shipped fine-tuning recipes work at their defaults? Full SFT vs LoRA, through ``lmlab finetune``'s
own code path (``run_finetune``) with nothing but the paths set.

Task: the forgetting table's new task (scripts/forgetting_table.py): each of the world's people gets a pet
named after a world city, as ChatML SFT; 60 conversations. Base: the shipped reference model (= quickstart at
its defaults). Reported per run: final training loss (mean of the last 10 steps) and new-task accuracy
(greedy answer is exactly ``{pet}<|im_end|>``, cache-free decoding, all 60 facts).

    python scripts/lora_recipe_check.py                                   # both recipes at their defaults
    python scripts/lora_recipe_check.py --only lora --lora-set optim.lr=5e-3 --lora-set method.lora_r=16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _forgetting_table():
    spec = importlib.util.spec_from_file_location("forgetting_table", ROOT / "scripts" / "forgetting_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["full", "lora"], default=None)
    ap.add_argument("--lora-set", action="append", default=[], help="extra override for the LoRA run")
    ap.add_argument("--full-set", action="append", default=[], help="extra override for the full-SFT run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None, help="run.seed and data.seed (default: the recipe's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lmlab
    from lmlab.cli.finetune import run_finetune
    from lmlab.config_io import load_config
    from lmlab.finetune.config import FinetuneConfig
    from lmlab.reference import ASSET_DIR, load_reference
    from lmlab.train.run import recipe_path_overrides

    ft = _forgetting_table()
    ref = load_reference()
    people = sorted({f.subject for f in ref.world.facts if f.relation == "born_in"})
    cities = sorted({f.subject for f in ref.world.facts if f.relation == "city_in"})
    facts, convs = ft.build_task(people, cities)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chat = Path(tmp) / "pets.jsonl"
        chat.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
        for kind in ("full", "lora"):
            if args.only and kind != args.only:
                continue
            recipe = ROOT / "configs" / ("finetune-sft.yaml" if kind == "full" else "finetune-lora.yaml")
            sets = [f"model.init_from={ASSET_DIR}", f"data.path={chat}", f"run.out_dir={Path(tmp) / kind}",
                    "run.progress=false", "run.log_every=1"]
            if args.seed is not None:
                sets += [f"run.seed={args.seed}", f"data.seed={args.seed}"]
            extra = args.full_set if kind == "full" else args.lora_set
            cfg = load_config(FinetuneConfig, recipe, recipe_path_overrides(recipe) + sets + extra)
            t0 = time.perf_counter()
            summary = run_finetune(cfg, progress=False)
            seconds = time.perf_counter() - t0
            metrics = (Path(tmp) / kind / "metrics.jsonl").read_text().splitlines()
            losses = [json.loads(line)["loss"] for line in metrics]
            model = lmlab.load(summary["model"]).float().eval()
            acc = ft.new_task_accuracy(model, ref.tokenizer, facts)
            rows.append({"recipe": recipe.name, "overrides": extra, "steps": summary["steps"], "lr": cfg.optim.lr,
                         "lora_r": cfg.method.lora_r if kind == "lora" else None,
                         "lora_alpha": cfg.method.lora_alpha if kind == "lora" else None,
                         "final_loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
                         "new_task_accuracy": round(acc, 3), "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
