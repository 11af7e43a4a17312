"""Training GenARM's autoregressive reward model from preference pairs (Xu et al. 2024, arXiv:2410.08193, eq. 6).

Why: GenARM decodes with ``base + (1/beta) * log pi_r`` (:class:`lmlab.control.GenARM`), which needs a reward
that factorises over tokens. The paper parametrises the reward of a whole response as a sum of token
log-probabilities of a causal LM, r(x, y) = beta_r * sum_t log pi_r(y_t | x, y_<t), and fits pi_r with the
Bradley-Terry loss on preference pairs:

    L = -log sigmoid( beta_r * ( sum_t log pi_r(y_w,t | x, y_w,<t) - sum_t log pi_r(y_l,t | x, y_l,<t) ) )

(DPO's loss without a reference model). beta_r = 0.05 is the official HH-RLHF setting (the released
checkpoints are named ``...arm-HH-epoch_1-beta_0.05-lr_5e-4``); lr 5e-4 there is for LoRA on a 7B model.
Batches are lmlab.align's pair batches (chosen rows first, then rejected; ``completion_mask`` marks the
scored response tokens), so the tokenisation is trl's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.align.dpo import pair_logps
from lmlab.errors import LmlabError

BETA_R = 0.05


def arm_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta_r: float = BETA_R) -> torch.Tensor:
    """[B] GenARM loss per pair from summed response log-probabilities under the ARM."""
    return -F.logsigmoid(beta_r * (chosen_logps - rejected_logps))


class GenARMObjective:
    """``objective(model, batch) -> (loss, metrics)`` for lmlab's Trainer: the mean ARM loss over the pairs."""

    def __init__(self, beta_r: float = BETA_R) -> None:
        if not (math.isfinite(beta_r) and beta_r > 0):
            raise LmlabError(f"genarm: beta_r must be finite and > 0, got {beta_r}")
        self.beta_r = float(beta_r)

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2  # pairs

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        chosen, rejected = pair_logps(model, batch)  # [B], [B]
        loss = arm_loss(chosen, rejected, self.beta_r)
        r_c, r_r = self.beta_r * chosen.detach(), self.beta_r * rejected.detach()
        return loss.mean(), {"rewards/accuracy": (r_c > r_r).float().mean(), "rewards/margin": (r_c - r_r).mean()}


@dataclass(frozen=True)
class ARMTrainReport:
    steps: int
    loss_first: float
    loss_last: float


def train_arm(model: nn.Module, pairs: Sequence, pad_token_id: int, *, steps: int = 100, micro_batch: int = 8,
              lr: float = 5e-4, beta_r: float = BETA_R, seed: int = 0) -> ARMTrainReport:
    """Fit ``model`` (a causal LM sharing the base's tokenizer, trained in place) as an ARM on tokenised pairs
    (``lmlab.align.preference_data.tokenize_record``) with AdamW; a plain loop, for recipes and scripts."""
    from lmlab.align.preference_data import PreferenceData

    if steps < 1:
        raise LmlabError(f"train_arm: steps must be >= 1, got {steps}")
    data = PreferenceData(pairs, pad_token_id, seed=seed)
    objective = GenARMObjective(beta_r)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    size = min(micro_batch, len(pairs))
    while len(losses) < steps:
        for batch in data.batches(size):
            loss, _ = objective(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
    model.eval()
    return ARMTrainReport(steps, losses[0], losses[-1])
