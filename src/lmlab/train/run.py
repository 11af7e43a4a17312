"""``run_training(config_path, overrides, resume)``: recipe -> data + model -> Trainer.fit -> summary.

The same function runs under ``torchrun --nproc_per_node=N -m lmlab.train CONFIG`` (each process builds its
rank's slice of the data; the Trainer initialises the process group from the environment).

Paths in a recipe file (``model.init_from``, ``data.path``, ``run.out_dir``) are relative to the recipe's own
directory, so a recipe works from any working directory; paths given with ``--set`` are relative to the
working directory, as any command-line path. A run ends by writing ``<run.out_dir>/model``: an HF checkpoint
with the tokenizer found beside the data (``lmlab data`` puts it there) or in ``model.init_from``, special-token
ids taken from it, its chat template and ``generation_config.json``, ready for generate/chat/finetune and
``transformers``. ``--resume`` says which step it resumed from and refuses when there is nothing to resume;
Ctrl-C finishes the current step, writes a checkpoint and exits (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmlab.config_io import coerce_value, load_config
from lmlab.errors import LmlabError
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import DistInfo, cleanup_distributed, dist_info_from_env
from lmlab.train.loop import Trainer


class RandomTokens:
    """Uniform random token windows (``data.kind: random``) for smoke tests and throughput measurements.

    Like PackedBlocks: row ``i`` of one global stream is a pure function of ``(seed, i)``; a global batch is
    the next ``batch_size * world_size`` rows and rank r takes rows ``r::world_size``, so the union of the
    ranks' rows equals the single-process batch. State is the global row cursor (world-size independent).
    """

    def __init__(self, vocab_size: int, block_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.vocab_size, self.block_size, self.seed = vocab_size, block_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = 0

    def _row(self, i: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.randint(0, self.vocab_size, (self.block_size + 1,), generator=gen)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.position + self.rank
        self.position += batch_size * self.world_size
        w = torch.stack([self._row(i) for i in range(start, self.position, self.world_size)])  # [B, T + 1]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def batches(self, batch_size: int):
        while True:
            yield self.next_batch(batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def build_data(cfg: TrainConfig, info: DistInfo) -> tuple[Any, Any, int | None]:
    """(train data, val data or None, vocab size or None) for ``cfg.data``."""
    d = cfg.data
    micro = max(1, d.batch_size // (d.grad_accum * info.world_size))
    if d.kind == "random":
        if cfg.model.vocab_size is None:
            raise LmlabError("data.kind: random needs model.vocab_size")
        v = cfg.model.vocab_size
        train = RandomTokens(v, d.block_size, d.seed, info.rank, info.world_size)
        val = lambda: RandomTokens(v, d.block_size, d.seed + 1, info.rank, info.world_size).batches(micro)  # noqa: E731
        return train, val, v
    if d.kind == "shards":
        from lmlab.data.shards import PackedBlocks, TokenShards, sequential_batches

        if not d.path:
            raise LmlabError("data.path: required for data.kind: shards (a directory written by build_shards)")
        shards = TokenShards(d.path, "train")
        train = PackedBlocks(shards, d.block_size, seed=d.seed, shuffle=d.shuffle, rank=info.rank,
                             world_size=info.world_size)
        val = None
        split = shards.index.splits.get("val")
        if split is not None and split.tokens > d.block_size:
            val_shards = TokenShards(d.path, "val")
            val = lambda: sequential_batches(val_shards, d.block_size, micro, rank=info.rank,  # noqa: E731
                                             world_size=info.world_size)
        return train, val, shards.vocab_size
    raise LmlabError(f"data.kind {d.kind!r} is not one of ['shards', 'random']")


def build_model(cfg: TrainConfig, data_vocab_size: int | None) -> nn.Module:
    """A fresh Llama-style Transformer (GPT-2 init, seeded by run.seed) or one loaded from model.init_from."""
    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer

    m = cfg.model
    if m.init_from:
        from lmlab.io.checkpoint import load_model

        model = load_model(m.init_from, dtype="float32")
        vocab = model.config.vocab_size
        if data_vocab_size is not None and data_vocab_size > vocab:
            raise LmlabError(f"model.init_from: {m.init_from} has vocab_size {vocab}, the data needs "
                             f"{data_vocab_size}")
    else:
        vocab = m.vocab_size or data_vocab_size
        if vocab is None:
            raise LmlabError("model.vocab_size: not set and the data does not say it")
        if data_vocab_size is not None and vocab < data_vocab_size:
            raise LmlabError(f"model.vocab_size {vocab} is smaller than the data's vocab_size {data_vocab_size}")
        hints = typing.get_type_hints(ModelConfig)
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        extra = {}
        for key, value in m.overrides.items():
            if key not in names:
                raise LmlabError(f"model.overrides: unknown ModelConfig field '{key}' (known: {', '.join(sorted(names))})")
            extra[key] = coerce_value(hints[key], value, f"model.overrides.{key}", "config")
        config = ModelConfig.llama_like(vocab_size=vocab, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
                                        n_kv_heads=m.n_kv_heads, d_mlp=m.d_mlp, max_seq_len=m.max_seq_len,
                                        tie_embeddings=m.tie_embeddings, **extra)
        model = Transformer(config).init_weights(seed=cfg.run.seed)
    if cfg.data.block_size > model.config.max_seq_len:
        raise LmlabError(f"data.block_size {cfg.data.block_size} exceeds the model's max_seq_len "
                         f"{model.config.max_seq_len}")
    return model.float().train()


# Fields of each recipe type that hold paths, resolved against the recipe file's directory.
RECIPE_PATH_FIELDS = ("model.init_from", "model.tokenizer", "data.path", "run.out_dir")


def recipe_path_overrides(config_path: str | Path | None) -> list[str]:
    """``--set`` lines that make the recipe's relative paths relative to the recipe file, not the working dir.

    Put before the user's own overrides, so an explicit ``--set data.path=...`` (relative to the working
    directory) still wins."""
    if config_path is None:
        return []
    from lmlab.config_io import read_yaml

    data = read_yaml(config_path)
    base = Path(config_path).resolve().parent
    out = []
    for dotted in RECIPE_PATH_FIELDS:
        section, _, key = dotted.partition(".")
        value = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            out.append(f"{dotted}={os.path.normpath(base / Path(value).expanduser())}")
    return out


def scale_warmup(optim, max_steps: int) -> None:
    """A warm-up at least as long as the run would never reach the peak learning rate (a recipe's 100 warm-up
    steps under ``--set run.max_steps=30``): scale it to a tenth of the run, saying so on stderr."""
    if optim.warmup_steps >= max_steps and optim.warmup_steps > 0:
        scaled = max(1, max_steps // 10) if max_steps > 1 else 0
        print(f"warning: optim.warmup_steps {optim.warmup_steps} >= run.max_steps {max_steps}; using "
              f"{scaled} warm-up steps (a tenth of the run); set optim.warmup_steps to choose", file=sys.stderr)
        optim.warmup_steps = scaled


def find_tokenizer(*directories: str | Path | None):
    """The tokenizer of the first directory holding a tokenizer.json (None when none does)."""
    from lmlab.core.tokenizer import load_tokenizer

    for d in directories:
        if d and (Path(d) / "tokenizer.json").is_file():
            return load_tokenizer(d)
    return None


def fit_interruptible(trainer: Trainer, resume: bool) -> dict[str, Any]:
    """``trainer.fit(resume)`` with the CLI's promises: ``--resume`` refuses when there is no checkpoint and
    says the step it resumed from; Ctrl-C lets the current step finish, writes a checkpoint there and raises
    ``LmlabError`` naming it (a second Ctrl-C interrupts at once). Under torchrun Ctrl-C is left alone."""
    from lmlab.train.checkpointing import latest_checkpoint

    main = trainer.info.is_main
    if resume:
        latest = latest_checkpoint(trainer.ckpt_root)
        if latest is None:
            raise LmlabError(f"--resume: no checkpoint in {trainer.ckpt_root} to resume from (drop --resume to "
                             f"start a new run)")
    if trainer.info.world_size > 1 or threading.current_thread() is not threading.main_thread():
        summary = trainer.fit(resume=resume)
        _say_resumed(summary, trainer, main)
        return summary
    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    plain_step = trainer.train_step

    def check_then_step():
        # checked before a step starts: the previous step is complete, logged and evaluated, and nothing of
        # the next one (data, RNG, optimizer) has been touched, so the checkpoint resumes bit-exactly
        if stop["requested"]:
            raise _StepBoundaryInterrupt
        return plain_step()

    trainer.train_step = check_then_step
    previous = signal.signal(signal.SIGINT, on_sigint)
    if resume and main:
        print(f"resuming from {latest_checkpoint(trainer.ckpt_root)}", file=sys.stderr, flush=True)
    try:
        summary = trainer.fit(resume=resume)
    except _StepBoundaryInterrupt:
        path = trainer.save_checkpoint()  # model, optimizer and data position all after step N
        raise LmlabError(f"interrupted after step {trainer.step}: checkpoint written to {path}; continue with "
                         f"--resume") from None
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer.train_step = plain_step
    _say_resumed(summary, trainer, main)
    return summary


class _StepBoundaryInterrupt(Exception):
    """Raised before the next step once Ctrl-C was pressed (not a KeyboardInterrupt: the loop's cleanup runs)."""


def _say_resumed(summary: dict[str, Any], trainer: Trainer, main: bool) -> None:
    if summary.get("resumed"):
        summary["resumed_from_step"] = summary["steps"] - summary["steps_this_run"]
        if main:
            print(f"resumed from step {summary['resumed_from_step']}", file=sys.stderr, flush=True)


def write_final_model(trainer: Trainer, tokenizer, directory: Path) -> Path | None:
    """The last checkpoint's weights as an HF model directory with the tokenizer (main rank)."""
    from lmlab.io.checkpoint import load_model, save_model

    if not trainer.info.is_main or trainer.last_checkpoint is None:
        return None
    model = load_model(trainer.last_checkpoint, dtype="float32")  # gathered: also right after FSDP
    return save_model(model, directory, tokenizer=tokenizer)


def run_training(config_path: str | None, overrides: typing.Sequence[str] = (), resume: bool = False,
                 progress: bool | None = None) -> dict[str, Any]:
    """Train from a YAML recipe plus ``--set`` overrides; returns the Trainer's summary dict, with
    ``model`` (the HF directory written at the end) and ``resumed_from_step`` when resumed."""
    cfg = load_config(TrainConfig, config_path, recipe_path_overrides(config_path) + list(overrides))
    scale_warmup(cfg.optim, cfg.run.max_steps)
    info = dist_info_from_env()
    try:
        train, val, vocab = build_data(cfg, info)
        tokenizer = find_tokenizer(cfg.data.path if cfg.data.kind == "shards" else None, cfg.model.init_from)
        if tokenizer is not None and vocab is not None and len(tokenizer) > vocab:
            raise LmlabError(f"data.path: the tokenizer beside the shards has {len(tokenizer)} tokens, the "
                             f"shards say vocab_size {vocab}")
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        model = build_model(cfg, vocab)
        if tokenizer is not None:
            from lmlab.io.hf_config import with_special_tokens

            # special-token ids in every checkpoint's config.json, not only in the final model directory
            model.config = with_special_tokens(model.config, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        trainer = Trainer(model, cfg, train, val, progress=progress)
        summary = fit_interruptible(trainer, resume)
        written = write_final_model(trainer, tokenizer, Path(cfg.run.out_dir) / "model")
        if written is not None:
            summary["model"] = str(written)
            if tokenizer is None:
                summary["model_note"] = "no tokenizer.json beside the data or in model.init_from: model has none"
        return summary
    finally:
        cleanup_distributed()
