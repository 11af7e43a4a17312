"""A step's loss is the token-level mean over the WHOLE global batch: rows with 3, 58, 3 and 58 assistant
tokens give the same loss, gradients and parameters with grad_accum 1, 2, 4 and with 2 DDP processes.
(Averaging per-micro-batch means, the old behaviour, weights a 3-token row like a 58-token row.)"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmlab.train.loop import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from uneven_sft import ACCUM_ORDER, DDP_ORDER, UnevenRows, config, uneven_model, uneven_rows  # noqa: E402

HERE = Path(__file__).parent


def _reference():
    """Token-level mean CE over all four rows in one forward and its gradients; and the gradients of the
    mean of the two micro-batch means (what grad_accum=2 used to compute)."""
    out = []
    for old in (False, True):
        model = uneven_model()
        rows = uneven_rows()
        logits = model(rows["input_ids"])  # [4, T, V]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows["labels"].reshape(-1), ignore_index=-100,
                             reduction="none").reshape(rows["labels"].shape)  # [4, T]
        n = torch.tensor(ACCUM_ORDER, dtype=torch.float32)
        per_row = ce.sum(1)  # [4]
        loss = (0.5 * (per_row[:2].sum() / n[:2].sum() + per_row[2:].sum() / n[2:].sum()) if old
                else ce.sum() / n.sum())
        loss.backward()
        out += [float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}]
    return out


def _fit_capturing_grads(trainer):
    """Run ``trainer.fit()``, keeping the gradients the optimizer step sees: (summary, {name: grad})."""
    grads = {}
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.update({n: p.grad.clone() for n, p in trainer.module.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    return trainer.fit(), grads


def _step(tmp_path, accum):
    trainer = Trainer(uneven_model(), config(tmp_path / f"acc{accum}", accum), UnevenRows())
    _, grads = _fit_capturing_grads(trainer)
    return trainer, grads


def test_grad_accumulation_is_token_level_mean_over_global_batch(tmp_path):
    ref_loss, ref_grads, _, old_grads = _reference()
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
    gap = float((flat(old_grads) - flat(ref_grads)).norm() / flat(ref_grads).norm())
    assert gap > 0.2, gap  # the rows are uneven enough that the old per-micro-batch mean is far off
    params = {}
    for accum in (1, 2, 4):
        trainer, grads = _step(tmp_path, accum)
        assert abs(trainer.step_losses[0] - ref_loss) <= 1e-5, accum
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=0, atol=1e-6, msg=f"grad_accum={accum}: {name}")
        params[accum] = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    fresh = uneven_model().state_dict()
    for name, p1 in params[1].items():
        for accum in (2, 4):
            torch.testing.assert_close(params[accum][name], p1, rtol=0, atol=1e-6, msg=f"{accum}: {name}")
    assert max(float((params[1][k] - fresh[k]).abs().max()) for k in fresh) > 1e-3  # the step moved weights


def test_ddp_two_processes_uneven_tokens_equal_one_process(tmp_path):
    # rank 0 holds the 3-token rows, rank 1 the 58-token rows; 2 steps of 2 micro-batches per rank (no_sync too)
    trainer = Trainer(uneven_model(), config(tmp_path / "single", 1, 2), UnevenRows(DDP_ORDER))
    trainer.fit()
    single = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    single_losses = list(trainer.step_losses)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    for accum in (2,):
        out = tmp_path / f"ddp{accum}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "ddp_uneven_worker.py"), str(out), str(accum), "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses = json.loads((out / "losses.json").read_text())
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single_losses), rtol=0, atol=1e-5)
        ddp = load_file(str(out / "params.safetensors"))
        for name, p in single.items():
            torch.testing.assert_close(ddp[name], p, rtol=0, atol=1e-6, msg=f"ddp grad_accum={accum}: {name}")


def test_a_micro_batch_without_targets_contributes_nothing(tmp_path):
    """Rows (0, 0) then (58, 58) with grad_accum 2: the first micro-batch has no target at all. Its loss must
    be 0 with a zero gradient (PyTorch's mean over nothing is NaN, and NaN x weight 0 stopped the run), so the
    step equals the token-level mean over the second micro-batch alone."""
    order = (0, 0, 58, 58)
    model = uneven_model()
    rows = uneven_rows(order)
    logits = model(rows["input_ids"])  # [4, T, V]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows["labels"].reshape(-1), ignore_index=-100)
    ref.backward()
    ref_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    cfg = config(tmp_path / "empty", 2)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, objective="causal_lm"))  # sft already guarded
    summary, grads = _fit_capturing_grads(Trainer(uneven_model(), cfg, UnevenRows(order)))
    assert abs(summary["final_loss"] - float(ref)) < 1e-5
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-6), name
