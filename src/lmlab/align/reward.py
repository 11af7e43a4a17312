"""Reward models: a scalar head on the transformer, trained on preference pairs.

* **Bradley–Terry** (Ouyang et al. 2022, InstructGPT Eq. 1; trl's ``RewardTrainer``): ``−log σ(r(x, y_w) − r(x, y_l)
  − m)`` with an optional per-pair margin ``m`` and trl's optional centring term ``c · mean((r_w + r_l)²)``
  (Eisenstein et al. 2023), which keeps rewards near zero.
* **HaF-RM** (Liu et al. 2024, "HAF-RM: A Hybrid Alignment Framework for Reward Model Training",
  arXiv:2407.04185): the reward model keeps its policy layer (the lm_head) next to the reward head, and the
  shared decoder (the "internal preference model") is supervised twice: the sequence-level reward loss above
  on the reward head, plus ``α`` times a token-level policy loss, DPO's loss on the lm_head's log-probabilities
  against the frozen initial model: ``L = L_reward + α · L_DPO``. The paper treats ``α`` as a hyperparameter;
  ``α = 1`` and DPO's ``β = 0.1`` are our defaults. Both heads read one decoder forward.

The model is :class:`lmlab.finetune.classify.SequenceClassifier` with ``n_labels=1``: the last real token's
final hidden state through a bias-free linear head, as HF's ``*ForSequenceClassification``. Saved as an HF
checkpoint (the decoder) plus ``reward_head.safetensors`` and ``reward_head.json``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmlab.align.dpo import dpo_loss
from lmlab.core.logprobs import logprobs_from_residual
from lmlab.errors import LmlabError
from lmlab.finetune.classify import ClassifierConfig, SequenceClassifier

HEAD_FILE, HEAD_META = "reward_head.safetensors", "reward_head.json"


def reward_model(backbone: nn.Module, seed: int | None = 0) -> SequenceClassifier:
    """A scalar reward head (``n_labels=1``) on ``backbone``; the head is drawn N(0, 0.02²) from ``seed``."""
    rm = SequenceClassifier(backbone, ClassifierConfig(n_labels=1))
    if seed is not None:
        with torch.no_grad():
            rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=torch.Generator().manual_seed(seed))
                                  * 0.02)
    return rm.to(next(backbone.parameters()).device)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coefficient: float | None = None) -> torch.Tensor:
    """Mean pairwise loss over [B] chosen / rejected rewards."""
    diff = r_chosen - r_rejected - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(diff).mean()
    if center_coefficient:
        loss = loss + center_coefficient * torch.mean((r_chosen + r_rejected) ** 2)
    return loss


def _pair_rewards(rm: SequenceClassifier, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return rm(batch["input_ids"], batch["attention_mask"])[:, 0].float().chunk(2)


def _metrics(r_c: torch.Tensor, r_r: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"accuracy": (r_c > r_r).float().mean().detach(), "margin": (r_c - r_r).mean().detach(),
            "reward/mean": torch.cat([r_c, r_r]).mean().detach()}


class RewardObjective:
    """Bradley–Terry on pair batches (``lmlab.align.preference_data``); the model is a ``reward_model``."""

    def __init__(self, center_coefficient: float = 0.0) -> None:
        self.center_coefficient = center_coefficient

    def loss_units(self, batch) -> int:
        return batch["input_ids"].shape[0] // 2

    def batch_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def __call__(self, model: nn.Module, batch):
        r_c, r_r = _pair_rewards(model, batch)
        loss = bradley_terry_loss(r_c, r_r, batch.get("margin"), self.center_coefficient)
        return loss, _metrics(r_c, r_r)


class HaFRMObjective(RewardObjective):
    """HaF-RM's hybrid loss: Bradley–Terry on the reward head + ``alpha`` x DPO on the policy head, one forward."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.1, center_coefficient: float = 0.0) -> None:
        super().__init__(center_coefficient)
        if alpha < 0 or beta <= 0:
            raise LmlabError(f"haf_rm: alpha must be >= 0 and beta > 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta
        self.reference: nn.Module | None = None  # the decoder as it was at the first step

    def __call__(self, model: nn.Module, batch):
        rm = getattr(model, "module", model)
        decoder = rm.model
        if self.reference is None:
            self.reference = copy.deepcopy(decoder).eval().requires_grad_(False)
        ids, mask, scored = batch["input_ids"], batch["attention_mask"], batch["completion_mask"].bool()
        residual = decoder(ids, attention_mask=mask, stop_at_layer=decoder.config.n_layers)  # [2B, T, d]
        hidden = decoder.hook_points["ln_final"](decoder.ln_final(residual))
        last = (mask.long() * torch.arange(1, ids.shape[1] + 1, device=ids.device)).argmax(-1)
        r_c, r_r = rm.score(hidden[torch.arange(ids.shape[0], device=ids.device), last])[:, 0].float().chunk(2)
        reward_loss = bradley_terry_loss(r_c, r_r, batch.get("margin"), self.center_coefficient)
        logp = logprobs_from_residual(decoder, residual, ids, scored).sum(-1)  # [2B]
        with torch.no_grad():
            ref_residual = self.reference(ids, attention_mask=mask, stop_at_layer=decoder.config.n_layers)
            ref_logp = logprobs_from_residual(self.reference, ref_residual, ids, scored).sum(-1)
        pc, pr = logp.chunk(2)
        rc, rr = ref_logp.chunk(2)
        policy_loss, _, _ = dpo_loss(pc, pr, rc, rr, self.beta)
        policy_loss = policy_loss.mean()
        metrics = _metrics(r_c, r_r)
        metrics.update({"loss/reward": reward_loss.detach(), "loss/policy": policy_loss.detach()})
        return reward_loss + self.alpha * policy_loss, metrics


@torch.no_grad()
def score(rm: SequenceClassifier, sequences: list[list[int]], pad_token_id: int, batch_size: int = 16
          ) -> torch.Tensor:
    """Rewards [N] of whole token sequences (prompt + response), right-padded in batches."""
    rm.eval()
    out = []
    device = next(rm.parameters()).device
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i:i + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(chunk), T, dtype=torch.long, device=device)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s, device=device)
            mask[j, :len(s)] = 1
        out.append(rm(ids, mask)[:, 0].float())
    return torch.cat(out)


def save_reward_model(rm: SequenceClassifier, path: str | os.PathLike, tokenizer=None) -> Path:
    """The decoder as an HF checkpoint (loads in transformers) plus the head as safetensors + JSON."""
    from lmlab.io.checkpoint import save_model

    out = save_model(rm.model, path, tokenizer=tokenizer)
    tmp = out / (HEAD_FILE + ".tmp")
    save_file({"weight": rm.score.weight.detach().contiguous().cpu()}, str(tmp))
    os.replace(tmp, out / HEAD_FILE)
    meta = {"kind": "reward_model", "n_labels": 1, "d_model": rm.model.config.d_model, "pooling": "last_token"}
    (out / (HEAD_META + ".tmp")).write_text(json.dumps(meta, indent=2))
    os.replace(out / (HEAD_META + ".tmp"), out / HEAD_META)
    return out


def load_reward_model(path: str | os.PathLike, policy_tokenizer=None) -> SequenceClassifier:
    """A reward model written by :func:`save_reward_model`; a directory without a head is an error, and so is
    one whose tokenizer differs from ``policy_tokenizer`` (when given): it would read other tokens."""
    from lmlab.io.checkpoint import load_model

    path = Path(path)
    if policy_tokenizer is not None:
        from lmlab.align.preference_data import check_same_tokenizer
        from lmlab.core.tokenizer import load_tokenizer

        check_same_tokenizer(policy_tokenizer, load_tokenizer(path), what=f"reward model {path}")
    if not (path / HEAD_FILE).is_file():
        raise LmlabError(f"{path}: no {HEAD_FILE} (not a reward model written by lmlab.align.save_reward_model)")
    rm = SequenceClassifier(load_model(path), ClassifierConfig(n_labels=1))
    weight = load_file(str(path / HEAD_FILE)).get("weight")
    if weight is None or tuple(weight.shape) != tuple(rm.score.weight.shape):
        raise LmlabError(f"{path / HEAD_FILE}: expected a 'weight' of shape {list(rm.score.weight.shape)}")
    with torch.no_grad():
        rm.score.weight.copy_(weight)
    return rm
