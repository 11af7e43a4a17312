"""Fine-tuning objectives, registered by name in ``lmlab.train.objective_registry``.

- ``sft``: next-token loss on assistant tokens only (labels from :mod:`lmlab.finetune.sft`), with the packed
  rows' ``segment_ids`` and restarted ``positions`` passed to the model. The loss is the mean over assistant
  tokens; ``loss_units`` tells the Trainer how many, so that under gradient accumulation and DDP the step's
  loss is the mean over the assistant tokens of the whole global batch (a token-level mean, as HF/TRL's
  ``num_items_in_batch`` normalisation).
- ``sft_regularized``: ``sft`` (or any objective) plus regularisers such as :mod:`lmlab.finetune.ewc` and
  :mod:`lmlab.finetune.hierarchical` (each a ``penalty(model) -> tensor``; the Trainer's unit weighting
  counts a penalty once per step), and hooks called before every forward. Build it in code:
  ``RegularizedObjective(SFTObjective(), [ewc])``. Per-optimizer-step work (HFT's re-selection) is a
  Trainer callback, not a hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.train.objectives import IGNORE_INDEX, count_targets, loss_units, split_batch


def sft_token_losses(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token cross-entropies over trained positions, number of trained positions)."""
    inputs, targets, extra = split_batch(batch)
    if isinstance(batch, Mapping) and batch.get("positions") is not None:
        extra["positions"] = batch["positions"]
    logits = model(inputs, **extra)  # [B, T, V]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (targets != IGNORE_INDEX).sum()


class SFTObjective:
    """Mean cross-entropy over assistant tokens (``labels != -100``) of the micro-batch (0 when it has none).

    No data-dependent Python branches, so ``torch.func.vmap`` can run it per example (EWC's Fisher)."""

    def loss_units(self, batch: Any) -> int:
        return count_targets(batch)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        total, n = sft_token_losses(model, batch)
        return total / n.clamp_min(1), {"assistant_tokens": n.detach().float()}


class RegularizedObjective:
    """``base(model, batch)`` + Σ regulariser penalties; ``hooks`` get ``before_forward(model)`` first."""

    def __init__(self, base: Any = None, regularizers: Sequence[Any] = (), hooks: Sequence[Any] = ()) -> None:
        self.base = base if base is not None else SFTObjective()
        self.regularizers, self.hooks = list(regularizers), list(hooks)
        for r in self.regularizers:
            if not hasattr(r, "penalty"):
                raise LmlabError(f"regularizer {type(r).__name__} has no penalty(model) method")
        for h in self.hooks:
            if not hasattr(h, "before_forward"):
                raise LmlabError(f"hook {type(h).__name__} has no before_forward(model) method (per-step "
                                 "selections such as HalfFineTuning are Trainer callbacks: Trainer(callbacks=[...]))")

    def loss_units(self, batch: Any) -> int:
        return loss_units(self.base, batch)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        for h in self.hooks:
            h.before_forward(model)
        loss, metrics = self.base(model, batch)
        metrics = dict(metrics)
        metrics["task_loss"] = loss.detach()
        for r in self.regularizers:
            pen = r.penalty(model)
            metrics[f"{r.name}_penalty"] = pen.detach()
            loss = loss + pen
        return loss, metrics
