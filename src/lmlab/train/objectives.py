"""Training objectives: ``objective(model, batch) -> (loss, metrics)``, registered by a unique lowercase name.

The loop knows nothing about what a batch means; an objective does. Causal LM is here; SFT (masked
prompt tokens), reward modelling and DPO register themselves the same way from their own modules::

    @register_objective("dpo")
    class DPOObjective:
        def __init__(self, beta: float = 0.1): ...
        def __call__(self, model, batch): return loss, {"reward_margin": ...}

``loss`` is a scalar tensor, a mean over the micro-batch's *loss units* (tokens with a target for the
token-level objectives, rows otherwise); ``metrics`` maps names to floats or 0-d tensors. An objective says
how many units its loss averages over with ``loss_units(batch) -> int`` (default: the number of rows). The
Trainer uses it to weight micro-batches so that a step's loss is the mean over all units of the *global*
batch (all micro-batches, all ranks): a token-level mean stays a token-level mean under gradient
accumulation and DDP. ``batch_tokens(batch) -> int`` (optional) counts input tokens for tokens/s.
The registry itself lives in ``lmlab.train.objective_registry`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.train.objective_registry import available_objectives, get_objective, register_objective  # noqa: F401

IGNORE_INDEX = -100  # the label value every objective treats as "no loss here" (HF / PyTorch convention)


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]: ...


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(inputs, targets, extra model kwargs) from a ``(inputs, targets)`` pair or a mapping with
    ``input_ids`` / ``labels`` (``targets``) and optional ``segment_ids``."""
    if isinstance(batch, Mapping):
        inputs = batch["input_ids"]
        targets = batch["labels"] if "labels" in batch else batch["targets"]
        extra = {k: v for k, v in batch.items() if k == "segment_ids" and v is not None}
        return inputs, targets, extra
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1], {}
    raise LmlabError(f"batch must be (inputs, targets) or a mapping with input_ids/labels, got {type(batch).__name__}")


def batch_rows(batch: Any) -> int:
    """Leading dimension of the batch's first tensor (1 for a batch without tensors)."""
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
    elif isinstance(batch, Mapping) and batch:
        first = next(iter(batch.values()))
    else:
        first = batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def count_targets(batch: Any) -> int:
    """Positions that carry a loss (target != IGNORE_INDEX): the units of a token-level mean."""
    return int((split_batch(batch)[1] != IGNORE_INDEX).sum())


def loss_units(objective: Any, batch: Any) -> int:
    """How many units ``objective``'s loss on ``batch`` is a mean over (``objective.loss_units`` or rows)."""
    fn = getattr(objective, "loss_units", None)
    return int(fn(batch)) if fn is not None else batch_rows(batch)


def batch_tokens(batch: Any, objective: Any = None) -> int:
    """Input tokens in a batch (for tokens/s): ``objective.batch_tokens`` if it has one, else the ``input_ids``
    of a pair / mapping, plus every ``*_input_ids`` tensor of a mapping (pairwise batches: chosen + rejected)."""
    fn = getattr(objective, "batch_tokens", None)
    if fn is not None:
        return int(fn(batch))
    if isinstance(batch, Mapping):
        return int(sum(v.numel() for k, v in batch.items() if isinstance(v, torch.Tensor)
                       and (k == "input_ids" or str(k).endswith("_input_ids"))))
    try:
        return int(split_batch(batch)[0].numel())
    except (LmlabError, KeyError, AttributeError, IndexError):
        return 0


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose target is not IGNORE_INDEX, computed in fp32.

    A batch with no target at all gives 0 (with a zero gradient), not PyTorch's NaN mean over nothing: the
    Trainer weights each micro-batch by its target count, and 0 x NaN would poison the whole step."""
    # logits: [B, T, V], targets: [B, T]  (targets already shifted: targets[t] = inputs[t+1])
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


class CausalLMObjective:
    """Next-token prediction. The batch's targets are the inputs shifted by one (as the packers produce);
    the loss is the mean over positions whose target is not IGNORE_INDEX."""

    def loss_units(self, batch: Any) -> int:
        return count_targets(batch)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs, targets, extra = split_batch(batch)
        logits = model(inputs, **extra)
        loss = token_cross_entropy(logits, targets)
        return loss, {}
