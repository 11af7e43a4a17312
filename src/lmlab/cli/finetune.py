"""``lmlab finetune CONFIG [--set key=value ...]``: supervised fine-tuning on chat JSONL (see configs/finetune-*.yaml).

Loss on assistant tokens only, conversations packed with segment-restricted attention; the recipe's
``methods`` (any of ``lmlab.finetune.method_registry``: lora / balora / adapters / hft, migu, interpolate,
each with its settings under its name; none = full fine-tuning). Writes ``<run.out_dir>/model`` (HF checkpoint +
tokenizer) and ``<run.out_dir>/config.yaml``. Recipe paths are relative to the recipe file, ``--set`` paths to
the working directory. Ctrl-C writes a checkpoint; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/finetune-sft.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in run.out_dir (refused when there is none)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")


def run_finetune(cfg, progress: bool | None = None, resume: bool = False) -> dict:
    import copy
    from pathlib import Path

    import torch

    import lmlab
    from lmlab.config_io import save_config
    from lmlab.finetune import SFTData, load_chat_jsonl
    from lmlab.finetune.method_registry import ROLES
    from lmlab.io.output_paths import expect_directory_path
    from lmlab.train.config import DataSection, TrainConfig
    from lmlab.train.loop import Trainer
    from lmlab.train.run import fit_interruptible, scale_warmup

    expect_directory_path(cfg.run.out_dir, "run.out_dir")
    scale_warmup(cfg.optim, cfg.run.max_steps)
    torch.manual_seed(cfg.run.seed)
    model = lmlab.load(cfg.model.init_from).float()
    tok = lmlab.load_tokenizer(cfg.model.tokenizer or cfg.model.init_from)
    d = cfg.data
    if d.block_size > model.config.max_seq_len:
        from lmlab.errors import LmlabError
        raise LmlabError(f"data.block_size {d.block_size} exceeds the model's max_seq_len {model.config.max_seq_len}")
    data = SFTData(load_chat_jsonl(d.path), tok, d.block_size, pack=d.pack, shuffle=d.shuffle, seed=d.seed,
                   truncate=d.truncate)
    methods = cfg.build_methods()
    base = copy.deepcopy(model) if any(m.needs_base for m in methods) else None
    callbacks = []
    for m in methods:
        if hasattr(m, "prepare"):
            m.prepare(model)
        if hasattr(m, "callbacks"):
            callbacks += m.callbacks()
    tcfg = TrainConfig(data=DataSection(kind="random", block_size=d.block_size, batch_size=d.batch_size,
                                        grad_accum=d.grad_accum, shuffle=d.shuffle, seed=d.seed),
                       optim=cfg.optim, run=cfg.run)
    out = Path(cfg.run.out_dir)
    save_config(cfg, out / "finetune_config.yaml")
    summary = fit_interruptible(Trainer(model, tcfg, data, progress=progress, callbacks=callbacks), resume)
    for role in ROLES:  # gradient masks off, then adapters merged, then merges with the base
        for m in methods:
            if m.role == role and hasattr(m, "finish"):
                m.finish(model, base)
    from lmlab.peft import list_adapters

    if not list_adapters(model):
        lmlab.save(model.eval(), out / "model", tokenizer=tok)
        summary["model"] = str(out / "model")
    else:
        from lmlab.peft import save_adapter
        save_adapter(model, out / "adapter")
        summary["adapter"] = str(out / "adapter")
    summary["conversations_rows"] = len(data)
    summary["assistant_tokens"] = data.n_assistant_tokens
    return summary


def run(args: argparse.Namespace) -> int:
    import torch

    from lmlab.config_io import load_config
    from lmlab.finetune.config import FinetuneConfig
    from lmlab.train.run import recipe_path_overrides

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(FinetuneConfig, args.config, recipe_path_overrides(args.config) + list(args.set))
    summary = run_finetune(cfg, progress=False if args.no_progress else None, resume=args.resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0
