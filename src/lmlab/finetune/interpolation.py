"""Weight interpolation with the base model after fine-tuning (WiSE-FT, Wortsman et al. 2022): a merge of
two sets of weights, not a regulariser; applied once, after training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError


@dataclass
class InterpolationConfig:
    """Weight interpolation with the base model, θ = (1-α) θ_base + α θ_ft (WiSE-FT, Wortsman et al. 2022,
    "Robust fine-tuning of zero-shot models"; merging the fine-tuned model with its base to recover
    zero-shot ability is also the remedy of "A Comparative Analysis of Instruction Fine-Tuning LLMs for Financial
    Text Classification", 2024).
    α=1 is the fine-tuned model, α=0 the base. WiSE-FT reports α≈0.5 as a good default."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise LmlabError(f"interpolate.alpha must be in [0, 1], got {self.alpha}")


class WeightInterpolation:
    """The fine-tuning method ``interpolate`` (``lmlab.finetune.method_registry``): after training (and
    after an adapter is merged), ``θ <- (1-α) θ_base + α θ_ft``."""

    name = "interpolate"
    config_class = InterpolationConfig
    role = "merge"
    needs_base = True

    def __init__(self, config: InterpolationConfig | None = None) -> None:
        self.config = config or InterpolationConfig()

    def finish(self, model: nn.Module, base: nn.Module | None = None) -> None:
        if base is None:
            raise LmlabError("interpolate: needs the base model (a copy taken before training)")
        interpolate_weights(base, model, self.config.alpha)


@torch.no_grad()
def interpolate_weights(base: nn.Module | Mapping[str, torch.Tensor], tuned: nn.Module, alpha: float,
                        inplace: bool = True) -> dict[str, torch.Tensor]:
    """Mix ``tuned`` towards ``base`` (a model or state dict with the same keys). In place by default;
    returns the mixed state dict."""
    base_sd = base.state_dict() if isinstance(base, nn.Module) else dict(base)
    tuned_sd = tuned.state_dict()
    missing = sorted(set(tuned_sd) ^ set(base_sd))
    if missing:
        raise LmlabError(f"interpolate_weights: key {missing[0]!r} is in only one of the two models")
    out = {}
    for k, t in tuned_sd.items():
        b = base_sd[k]
        if b.shape != t.shape:
            raise LmlabError(f"interpolate_weights: {k} has shape {tuple(b.shape)} vs {tuple(t.shape)}")
        out[k] = torch.lerp(b.to(t.dtype), t, alpha) if t.is_floating_point() else t.clone()
    if inplace:
        tuned.load_state_dict(out)
    return out
