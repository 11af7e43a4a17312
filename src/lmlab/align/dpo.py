"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
is Secretly a Reward Model", arXiv:2305.18290) as an objective of the one Trainer.

Loss per pair, with ``h = β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]``:

    L = −(1 − ε) · log σ(h) − ε · log σ(−h)

``ε = 0`` is the paper's loss (Eq. 7); ``ε > 0`` is conservative DPO (Mitchell 2023, "A note on DPO with noisy
preferences"), which assumes a fraction ε of the labels are flipped. ``β · (log π − log π_ref)`` of each
response is its implicit reward, logged as ``rewards/chosen`` and ``rewards/rejected``.

The reference policy is, in order of preference: log-probabilities precomputed once and carried in the batch
(``ref_logps``, see :func:`precompute_reference`), a given frozen model, the same model with its adapters
disabled (LoRA / any ``lmlab.peft`` method: no second copy of the weights), or a frozen copy of the policy taken
at the first step. Batches come from :mod:`lmlab.align.preference_data` (chosen rows, then rejected rows).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.align.preference_data import PreferenceData, TokenizedPair, collate_pairs
from lmlab.core.logprobs import sequence_logprobs
from lmlab.errors import LmlabError


@dataclass
class DPOConfig:
    """β = 0.1 is the value the DPO paper uses in most of its experiments (and trl's default); ε = 0 is the
    paper's loss. ``reference``: "auto" (adapters disabled if the model has any, else a frozen copy),
    "adapters_off", "copy", or a path to a checkpoint to load as the frozen reference."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    reference: str = "auto"

    def validate(self) -> None:
        if not self.beta > 0:
            raise LmlabError(f"dpo: beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise LmlabError(f"dpo: label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss [B], chosen rewards [B], rejected rewards [B]) from sequence log-probs [B] each."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = beta * (chosen_ratio - rejected_ratio)
    loss = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [B], rejected [B]) summed completion log-probs of a pair batch, in one forward."""
    logps = sequence_logprobs(model, batch["input_ids"], loss_mask=batch["completion_mask"],
                              attention_mask=batch["attention_mask"])
    return logps.chunk(2)


def _has_adapters(model: nn.Module) -> bool:
    from lmlab.peft.inject import list_adapters

    return bool(list_adapters(model))


class ReferencePolicy:
    """Log-probabilities of the frozen reference for a pair batch (no gradient)."""

    def __init__(self, mode: str = "auto", model: nn.Module | None = None) -> None:
        if mode not in ("auto", "adapters_off", "copy") and model is None:
            from lmlab.io.checkpoint import load_model

            model = load_model(mode)
        self.mode, self.model = mode, model  # used under no_grad only: the caller's model is not changed

    def logps(self, policy: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_logps" in batch:
            return batch["ref_logps"].chunk(2)
        with torch.no_grad():
            if self.model is not None:
                return pair_logps(self.model, batch)
            adapters = _has_adapters(policy)
            if self.mode == "adapters_off" or (self.mode == "auto" and adapters):
                if not adapters:
                    raise LmlabError("dpo: reference 'adapters_off' needs a model with adapters (lmlab.peft)")
                from lmlab.peft.inject import disable_adapters

                with disable_adapters(policy):
                    return pair_logps(policy, batch)
            # "copy": freeze the policy as it is at the first step
            self.model = copy.deepcopy(policy).eval().requires_grad_(False)
            return pair_logps(self.model, batch)


class DPOObjective:
    """``objective(model, batch) -> (loss, metrics)``: the mean DPO loss over the batch's pairs."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, reference: str = "auto",
                 reference_model: nn.Module | None = None) -> None:
        self.config = DPOConfig(beta, label_smoothing, reference)
        self.config.validate()
        self.reference = ReferencePolicy(reference, reference_model)

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2  # pairs

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        ref_chosen, ref_rejected = self.reference.logps(_unwrap(model), batch)
        chosen, rejected = pair_logps(model, batch)
        loss, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.config.beta,
                                              self.config.label_smoothing)
        metrics = {"rewards/chosen": r_chosen.mean(), "rewards/rejected": r_rejected.mean(),
                   "rewards/accuracy": (r_chosen > r_rejected).float().mean(),
                   "rewards/margin": (r_chosen - r_rejected).mean(), "logps/chosen": chosen.detach().mean(),
                   "logps/rejected": rejected.detach().mean()}
        return loss.mean(), metrics


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / FSDP wrappers keep the model as .module


@torch.no_grad()
def precompute_reference(reference: nn.Module, pairs: Sequence[TokenizedPair], pad_token_id: int, *,
                         batch_size: int = 8, max_length: int | None = None) -> list[tuple[float, float]]:
    """(chosen, rejected) reference log-probs of every pair, computed once (then the reference can be freed)."""
    out: list[tuple[float, float]] = []
    reference.eval()
    for i in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[i:i + batch_size], pad_token_id, max_length)
        c, r = pair_logps(reference, batch)
        out.extend(zip(c.tolist(), r.tolist()))
    return out


class PrecomputedPreferenceData(PreferenceData):
    """``PreferenceData`` whose batches carry ``ref_logps`` [2B] (chosen then rejected), so the objective needs no
    reference forward (trl's ``precompute_ref_log_probs``)."""

    def __init__(self, pairs: Sequence[TokenizedPair], ref_logps: Sequence[tuple[float, float]], pad_token_id: int,
                 **kwargs) -> None:
        if len(ref_logps) != len(pairs):
            raise LmlabError(f"{len(ref_logps)} reference log-probs for {len(pairs)} pairs")
        super().__init__(pairs, pad_token_id, **kwargs)
        self.ref = {id(p): lp for p, lp in zip(self.pairs, ref_logps)}

    def _collate(self, chunk: list[TokenizedPair]) -> dict[str, torch.Tensor]:
        batch = super()._collate(chunk)
        batch["ref_logps"] = torch.tensor([self.ref[id(p)][0] for p in chunk] + [self.ref[id(p)][1] for p in chunk])
        return batch


__all__ = ["DPOConfig", "DPOObjective", "ReferencePolicy", "dpo_loss", "pair_logps", "precompute_reference",
           "PrecomputedPreferenceData"]
