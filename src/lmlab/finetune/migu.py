"""MIGU, magnitude-based gradient updating (Du et al. 2024): a gradient mask that keeps, in every linear
layer, only the rows of the outputs with the largest magnitudes on the current batch. Not a loss term: it
attaches to the model (``attach`` / ``detach``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError


@dataclass
class MIGUConfig:
    """MIGU, MagnItude-based Gradient Updating (Du et al. 2024, "Unlocking Continual Learning Abilities in
    Language Models", EMNLP Findings, arXiv:2406.17245): in every linear layer, only the weights producing
    the outputs with the largest L1-normalised magnitudes on the current batch are updated. Per layer and
    batch: m_j = mean over tokens |y_j|, normalised m_j / Σ m; the gradient rows of the top ``ratio``
    output units are kept, the others zeroed. The abstract gives no threshold; ``ratio`` 0.5 is our default
    (their code exposes it as a top-k ratio). ``targets``: linear-layer name suffixes (attention + MLP; the
    LM head is left out since with tied weights it is the embedding)."""

    ratio: float = 0.5
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise LmlabError(f"migu.ratio must be in (0, 1], got {self.ratio}")


class MIGU:
    """``migu = MIGU(cfg).attach(model)``; train as usual; ``migu.detach()`` removes the hooks. In a recipe:
    ``methods: {migu: {ratio: 0.5}}`` (``lmlab.finetune.method_registry``)."""

    name = "migu"
    config_class = MIGUConfig
    role = "gradient"  # masks gradients; combines with any choice of trainable weights
    needs_base = False

    def __init__(self, config: MIGUConfig | None = None) -> None:
        self.config = config or MIGUConfig()
        self.masks: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, model: nn.Module) -> "MIGU":
        if self._handles:
            raise LmlabError("MIGU is already attached")
        found = 0
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name.split(".")[-1] in self.config.targets:
                found += 1
                self._handles.append(mod.register_forward_hook(self._record(name)))
                self._handles.append(mod.weight.register_hook(self._mask_grad(name, bias=False)))
                if mod.bias is not None:
                    self._handles.append(mod.bias.register_hook(self._mask_grad(name, bias=True)))
        if not found:
            raise LmlabError(f"MIGU: no nn.Linear named like {self.config.targets}")
        return self

    def prepare(self, model: nn.Module) -> None:
        self.attach(model)

    def finish(self, model: nn.Module, base: nn.Module | None = None) -> None:
        self.detach()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.masks.clear()

    def _record(self, name: str):
        def hook(module, inputs, output):
            if not torch.is_grad_enabled():
                return
            mag = output.detach().abs().reshape(-1, output.shape[-1]).float().mean(0)  # [d_out]
            mag = mag / mag.sum().clamp_min(1e-12)  # L1-normalised
            k = max(1, int(round(self.config.ratio * mag.numel())))
            mask = torch.zeros_like(mag, dtype=torch.bool)
            mask[torch.topk(mag, k).indices] = True
            self.masks[name] = mask
        return hook

    def _mask_grad(self, name: str, bias: bool):
        def hook(grad):
            mask = self.masks.get(name)
            if mask is None:
                return grad
            return grad * (mask if bias else mask[:, None]).to(grad.dtype)
        return hook
