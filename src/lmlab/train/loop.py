"""The Trainer: one plain loop (micro-batches -> clip -> AdamW step), evaluation, logging, checkpoints, resume.

Data protocol (no dependency on a particular loader):

- ``train_data``: an object with ``batches(micro_batch_size) -> iterator`` (e.g. ``lmlab.data.shards.
  PackedBlocks``, which also slices by rank), or any iterable of ready micro-batches for this rank;
- ``data_state``: an object with ``state_dict()`` / ``load_state_dict()`` holding the data position;
  defaults to ``train_data`` when it has both. Without one, resume replays (skips) the consumed batches;
- ``val_data``: a callable returning a fresh iterable of batches, an object with ``batches(n)`` (its
  state, if any, is rewound before each evaluation, so every evaluation sees the same batches), or a
  re-iterable such as a list. ``run.eval_batches`` batches are used (0 = all).

A batch is whatever the objective understands; the causal-LM objective takes ``(inputs, targets)``.

Loss normalisation: an objective's loss is a mean over its micro-batch's loss units (``loss_units``: tokens
with a target for causal LM / SFT, rows otherwise). A step weights micro-batch ``i`` of rank ``r`` by
``n_ri / N`` with ``N`` the units of the whole global batch (all micro-batches, all ranks, one all-reduce
before the forwards), so the step's loss and gradient are exactly those of one big batch, also when rows
carry very different numbers of loss tokens.

Callbacks: objects with any of ``on_step_start(trainer)`` (before the step's first forward; ``trainer.step``
is the number of optimizer steps done so far) and ``on_step_end(trainer, metrics)`` (after the optimizer
step). Half Fine-Tuning redraws its frozen half this way.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmlab.config_io import save_config
from lmlab.errors import LmlabError
from lmlab.train import checkpointing as ck
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import (all_reduce_mean, barrier, gather_objects, init_distributed, resolve_device,
                                     unwrap_model, wrap_model, dist_info_from_env)
from lmlab.train.metrics import MetricsLogger
from lmlab.train.objective_registry import build_objective
from lmlab.train.objectives import Objective, batch_rows, batch_tokens, loss_units
from lmlab.train.optim import build_optimizer, make_schedule, set_lr


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """``Trainer(model, config, train_data, val_data).fit(resume=False) -> summary dict``."""

    def __init__(self, model: nn.Module, config: TrainConfig, train_data: Any, val_data: Any = None, *,
                 objective: str | Objective | None = None, data_state: Any = None,
                 progress: bool | None = None, callbacks: list[Any] | tuple[Any, ...] = ()) -> None:
        self.cfg = config
        run = config.run
        self.device = resolve_device(run.device, dist_info_from_env())
        self.info = init_distributed(config.distributed.backend, self.device)
        self.fsdp = self.info.enabled and config.distributed.strategy == "fsdp"
        world = self.info.world_size
        if config.data.batch_size % (config.data.grad_accum * world):
            raise LmlabError(f"data.batch_size {config.data.batch_size} is not divisible by data.grad_accum "
                             f"{config.data.grad_accum} x world size {world}")
        self.micro_batch = config.data.batch_size // (config.data.grad_accum * world)
        self.module = unwrap_model(model).to(self.device)
        self.module.train()
        self.model = wrap_model(self.module, config.distributed.strategy, self.info, self.device)
        if objective is None or isinstance(objective, str):
            name = run.objective if objective is None else objective
            self.objective = build_objective(name, run.objective_args if name == run.objective else {})
        else:
            self.objective = objective
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not (hasattr(cb, "on_step_start") or hasattr(cb, "on_step_end")):
                raise LmlabError(f"callback {type(cb).__name__} has neither on_step_start nor on_step_end")
        self.optimizer = build_optimizer(self.model, config.optim)
        self.lr_at = make_schedule(config.optim, run.max_steps)
        self.train_data, self.val_data = train_data, val_data
        self.data_state = data_state if data_state is not None else (
            train_data if hasattr(train_data, "state_dict") and hasattr(train_data, "load_state_dict") else None)
        self._val_state0 = val_data.state_dict() if hasattr(val_data, "state_dict") else None
        self.out_dir = Path(run.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.progress = run.progress if progress is None else progress
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if run.precision == "bf16"
                         else nullcontext())
        self.step = 0
        self.tokens_seen = 0
        self.micro_batches_seen = 0
        self.best_val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.step_losses: list[float] = []  # every step's loss in this fit() call
        self._train_iter = None

    # ------------------------------------------------------------------------------------------- data
    def _new_train_iter(self):
        if hasattr(self.train_data, "batches"):
            return iter(self.train_data.batches(self.micro_batch))
        return iter(self.train_data)

    def _next_batch(self) -> Any:
        if self._train_iter is None:
            self._train_iter = self._new_train_iter()
        try:
            batch = next(self._train_iter)
        except StopIteration:  # a finite iterable: start the next epoch
            self._train_iter = self._new_train_iter()
            try:
                batch = next(self._train_iter)
            except StopIteration:
                raise LmlabError("train data yields no batches") from None
        self.micro_batches_seen += 1
        return to_device(batch, self.device)

    def _val_batches(self):
        data = self.val_data
        if self._val_state0 is not None:
            data.load_state_dict(self._val_state0)
        if hasattr(data, "batches"):
            it = data.batches(self.micro_batch)
        elif callable(data):
            it = data()
        else:
            it = data
        n = self.cfg.run.eval_batches
        return itertools.islice(it, n) if n > 0 else iter(it)

    # ------------------------------------------------------------------------------------------- steps
    def _sync_context(self, last_micro: bool):
        if self.fsdp:
            self.model.set_requires_gradient_sync(last_micro)
            return nullcontext()
        if self.info.enabled and not last_micro:
            return self.model.no_sync()
        return nullcontext()

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the (all-reduced) step metrics."""
        k, world = self.cfg.data.grad_accum, self.info.world_size
        for cb in self.callbacks:
            if hasattr(cb, "on_step_start"):
                cb.on_step_start(self)
        lr = self.lr_at(self.step)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        batches = [self._next_batch() for _ in range(k)]
        units = [loss_units(self.objective, b) for b in batches]
        tokens = sum(batch_tokens(b, self.objective) for b in batches)
        # units of the global batch: every micro-batch of every rank (sum over ranks = mean * world)
        counts = all_reduce_mean(torch.tensor([float(sum(units)), float(tokens)], dtype=torch.float64,
                                              device=self.device), self.info) * world
        global_units, global_tokens = float(counts[0]), int(round(float(counts[1])))
        denom = max(global_units, 1.0)  # no unit anywhere: every loss is 0 x 0, the step only decays weights
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for i, (batch, n) in enumerate(zip(batches, units)):
            weight = n / denom  # this micro-batch's share of the global batch's units
            with self._sync_context(i == k - 1):
                with self.autocast:
                    loss, metrics = self.objective(self.model, batch)
                # DDP / FSDP average gradients over ranks, hence x world: the sum over ranks is what we want
                (loss * (weight * world)).backward()
            loss_sum += loss.detach().float() * weight
            for name, value in metrics.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=self.device).detach()
                metric_sums[name] = metric_sums.get(name, 0.0) + value * weight
        names = sorted(metric_sums)
        packed = torch.stack([loss_sum] + [metric_sums[n] for n in names])
        packed = (all_reduce_mean(packed, self.info) * world).tolist()  # sums of the weighted shares
        step_loss = packed[0]
        if not math.isfinite(step_loss):
            self._stop(f"non-finite loss ({step_loss}) at step {self.step + 1}")
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            self._stop(f"non-finite gradient norm ({grad_norm}) at step {self.step + 1}")
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += global_tokens
        out = {"loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens": global_tokens,
               "loss_units": global_units}
        out.update(zip(names, packed[1:]))
        for cb in self.callbacks:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(self, out)
        return out

    def _stop(self, what: str) -> None:
        last = ck.latest_checkpoint(self.ckpt_root)
        raise LmlabError(f"{what}; last good checkpoint: {last if last is not None else 'none'}. "
                         f"Lower optim.lr, check the data, or resume from it with --resume")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Mean loss (weighted by each batch's loss units, as in training) and perplexity on
        ``run.eval_batches`` validation batches."""
        if self.val_data is None:
            return None
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum of loss*units, units]
        try:
            for batch in self._val_batches():
                batch = to_device(batch, self.device)
                units = loss_units(self.objective, batch) if batch_rows(batch) else 0
                if units == 0:
                    continue
                with self.autocast:
                    loss, _ = self.objective(self.model, batch)
                total += torch.stack([loss.detach().double() * units, torch.tensor(float(units), device=self.device,
                                                                                    dtype=torch.float64)])
        finally:
            self.model.train()
        total = all_reduce_mean(total, self.info)
        if float(total[1]) == 0:
            return None
        val_loss = float(total[0] / total[1])
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    # ------------------------------------------------------------------------------------- checkpoints
    def _collect_state(self) -> tuple[dict, dict, dict]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(self.model, options=opts)
            named = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        else:
            model_state = self.module.state_dict()
            named = ck.named_optimizer_state(self.optimizer, self.module)
        tensors, rest = ck.split_optimizer_state(named) if self.info.is_main else ({}, {})
        return model_state, tensors, rest

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` (main rank; collective under FSDP) and return its path."""
        model_state, opt_tensors, opt_rest = self._collect_state()
        rngs = gather_objects(ck.rng_state(), self.info)
        data_states = gather_objects(self.data_state.state_dict() if self.data_state is not None else None,
                                     self.info)
        final = self.ckpt_root / ck.step_dir_name(self.step)
        if self.info.is_main:
            state = {"step": self.step, "tokens_seen": self.tokens_seen, "micro_batches_seen": self.micro_batches_seen,
                     "best_val_loss": self.best_val_loss, "world_size": self.info.world_size,
                     "lr": self.lr_at(max(0, self.step - 1)), "rng": rngs, "data_state": data_states}
            ck.write_checkpoint(self.ckpt_root, self.step, self.module, model_state, opt_tensors, opt_rest, state,
                                self.cfg.run.keep_last)
        barrier(self.info)
        self.last_checkpoint = final
        return final

    def resume(self) -> bool:
        """Load the latest complete checkpoint (all ranks); False when there is none."""
        latest = ck.latest_checkpoint(self.ckpt_root)
        if latest is None:
            return False
        loaded = ck.read_checkpoint(latest, self.module)  # validates every file before anything is applied
        st = loaded["trainer_state"]
        named_opt = ck.join_optimizer_state(loaded["opt_tensors"], loaded["opt_rest"])
        try:
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                     set_optimizer_state_dict)
                opts = StateDictOptions(full_state_dict=True)
                set_model_state_dict(self.model, loaded["model_state"], options=opts)
                set_optimizer_state_dict(self.model, self.optimizer, named_opt, options=opts)
            else:
                self.module.load_state_dict(loaded["model_state"])
                self.optimizer.load_state_dict(
                    ck.indexed_optimizer_state(self.optimizer, self.module, named_opt, latest / "optimizer.json"))
        except (RuntimeError, KeyError, ValueError) as err:
            if isinstance(err, LmlabError):
                raise
            raise LmlabError(f"{latest}: checkpoint does not match this model/optimizer "
                             f"({str(err).splitlines()[0]})") from err
        self.step = int(st["step"])
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.best_val_loss = st.get("best_val_loss")
        same_world = st.get("world_size") == self.info.world_size
        rngs = st.get("rng") or []
        if same_world and len(rngs) == self.info.world_size:
            ck.set_rng_state(rngs[self.info.rank])
        else:  # different world size: per-rank streams cannot be restored; derive fresh ones
            self._seed(self.cfg.run.seed + 7919 * self.step)
        data_states = st.get("data_state") or [None]
        self._train_iter = None
        if self.data_state is not None and data_states[0] is not None:
            self.data_state.load_state_dict(data_states[self.info.rank] if same_world else data_states[0])
            self.micro_batches_seen = int(st.get("micro_batches_seen", 0))
        else:  # no position object: replay the consumed micro-batches of this rank
            self._train_iter = self._new_train_iter()
            for _ in range(int(st.get("micro_batches_seen", 0))):
                self._next_batch()
        self.last_checkpoint = latest
        return True

    # ------------------------------------------------------------------------------------------- fit
    def _seed(self, seed: int) -> None:
        seed = seed + self.info.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _log_line(self, row: dict[str, Any]) -> None:
        parts = [f"step {row['step']}/{self.cfg.run.max_steps}"]
        for key in ("loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s"):
            if key in row:
                parts.append(f"{key} {row[key]:.4g}")
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def fit(self, resume: bool = False, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``run.max_steps``; with ``resume=True`` continue from the latest checkpoint if any.

        ``stop_at=N`` ends this call after step N (with a checkpoint there), as a preemption would; the
        schedule still follows ``run.max_steps``, so a later ``fit(resume=True)`` continues the same run.
        """
        run = self.cfg.run
        end = run.max_steps if stop_at is None else min(stop_at, run.max_steps)
        existing = ck.latest_checkpoint(self.ckpt_root)
        if not resume and existing is not None:
            raise LmlabError(f"{self.ckpt_root} already holds checkpoints (latest {existing.name}); pass "
                             f"resume=True (--resume) to continue, or choose another run.out_dir")
        resumed = self.resume() if resume else False
        if not resumed:
            self._seed(run.seed)
        if self._train_iter is None:
            self._train_iter = self._new_train_iter()
        main = self.info.is_main
        metrics = MetricsLogger(self.out_dir, enabled=main, tensorboard=run.tensorboard)
        metrics.truncate_after(self.step)
        if main:
            save_config(self.cfg, self.out_dir / "config.yaml")
        tty = sys.stderr.isatty()
        bar = None
        if self.progress and main and tty:
            from tqdm.auto import tqdm
            bar = tqdm(total=run.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        start_step, wall0 = self.step, time.perf_counter()
        train_time, run_tokens = 0.0, 0
        window: list[dict[str, float]] = []
        window_time, last = 0.0, None
        try:
            while self.step < end:
                t0 = time.perf_counter()
                out = self.train_step()
                dt = time.perf_counter() - t0
                train_time, window_time = train_time + dt, window_time + dt
                run_tokens += int(out["tokens"])
                self.step_losses.append(out["loss"])
                window.append(out)
                last = out
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{out['tokens'] / max(dt, 1e-9):,.0f}")
                final = self.step == end
                row: dict[str, Any] = {}
                if (run.log_every and self.step % run.log_every == 0) or final:
                    row = {"step": self.step, "loss": sum(w["loss"] for w in window) / len(window),
                           "lr": out["lr"], "grad_norm": out["grad_norm"], "tokens": self.tokens_seen,
                           "tokens_per_s": sum(w["tokens"] for w in window) / max(window_time, 1e-9),
                           "elapsed_s": time.perf_counter() - wall0}
                    for key in out:
                        if key not in ("loss", "lr", "grad_norm", "tokens", "loss_units"):
                            row[key] = sum(w[key] for w in window) / len(window)
                    if final:  # a resumed finished run reports this row: keep the last step's own loss
                        row["last_step_loss"] = out["loss"]
                    window, window_time = [], 0.0
                if self.val_data is not None and ((run.eval_every and self.step % run.eval_every == 0)
                                               or self.step == run.max_steps):
                    ev = self.evaluate()
                    if ev is not None:
                        row = {"step": self.step, **row, **ev}
                        if self.best_val_loss is None or ev["val_loss"] < self.best_val_loss:
                            self.best_val_loss = ev["val_loss"]
                if row:
                    metrics.log(row)
                    if bar is None and self.progress and main:
                        self._log_line(row)
                if (run.ckpt_every and self.step % run.ckpt_every == 0) or final:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            metrics.plot()
            metrics.close()
        return {"steps": self.step, "steps_this_run": self.step - start_step, "resumed": resumed,
                "final_loss": last["loss"] if last else None,
                "final_val_loss": next((r["val_loss"] for r in reversed(metrics.rows) if "val_loss" in r), None),
                "best_val_loss": self.best_val_loss, "tokens_seen": self.tokens_seen,
                "tokens_per_s": run_tokens / train_time if train_time else 0.0,
                "wall_time_s": time.perf_counter() - wall0, "out_dir": str(self.out_dir),
                "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None}
