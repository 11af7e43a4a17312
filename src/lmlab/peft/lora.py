"""LoRA: a trainable low-rank update ``scaling * B @ A`` beside a frozen linear layer.

``y = W x + b + scaling * B (A dropout(x))`` with ``A`` [r, in], ``B`` [out, r]; merged, ``W <- W + scaling * B @ A``.
The computation, its order and the initialisation follow peft's ``lora.Linear`` so adapters move between
the two libraries with fp32-level agreement (see ``lmlab.peft.peft_io``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.peft.registry import register_method
from lmlab.peft.inject import AdapterConfig


@register_method("lora")
@dataclass
class LoraConfig(AdapterConfig):
    """LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685).

    Defaults and where they come from:

    - ``r=8``, ``alpha=8``, ``dropout=0.0``: peft's ``LoraConfig`` defaults (the paper sweeps r in {1..64};
      LLM-Adapters, Hu et al. 2023, Sec. 4, find r=32 best for LLaMA-7B on math reasoning).
    - ``target_modules=["q_proj", "v_proj"]``: the paper adapts W_q and W_v (Sec. 7.1), and peft's default
      for Llama-family models is the same. A list matches module names by suffix (``"q_proj"`` matches
      ``blocks.3.attn.q_proj``); a string is a regex over the whole lmlab module name.
    - ``use_rslora=False``: scaling ``alpha / r`` as in the paper; True gives rank-stabilised LoRA's
      ``alpha / sqrt(r)`` (Kalajdzievski 2023, arXiv:2312.03732).
    - ``init_b="zeros"``: A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the adapted model starts equal to the
      base (paper Sec. 4.1; peft ``init_lora_weights=True``). ``"random"`` also draws B like A (peft
      ``init_lora_weights=False``), for tests that need a non-zero update.
    - ``bias="none"``: LoRA trains no biases (the only mode supported).
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    use_rslora: bool = False
    init_b: str = "zeros"
    bias: str = "none"

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise LmlabError(f"{self.method}: r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"{self.method}: dropout must be in [0, 1), got {self.dropout!r}")
        if self.init_b not in ("zeros", "random"):
            raise LmlabError(f"{self.method}: init_b must be 'zeros' or 'random', got {self.init_b!r}")
        if self.bias != "none":
            raise LmlabError(f"{self.method}: bias={self.bias!r} is not supported (only 'none')")

    def build(self, module: nn.Module, model: nn.Module) -> "LoraAdapter":
        return LoraAdapter(module.in_features, module.out_features, self.r, self.alpha, self.dropout,
                           self.use_rslora, init_b=self.init_b)


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoraAdapter(nn.Module):
    """One LoRA pair for one linear layer; ``forward(x, y)`` returns the update to add to ``y``."""

    position = "output"
    mergeable = True

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init_b: str = "zeros") -> None:
        super().__init__()
        self.r, self.alpha, self.use_rslora = r, float(alpha), use_rslora
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters(init_b)

    def reset_parameters(self, init_b: str = "zeros") -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        if init_b == "zeros":
            nn.init.zeros_(self.lora_B.weight)
        else:
            nn.init.kaiming_uniform_(self.lora_B.weight, a=math.sqrt(5))

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.use_rslora)

    @property
    def dtype(self) -> torch.dtype:
        return self.lora_A.weight.dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling  # [..., out]

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` [out, in], the update merging adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def set_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """Copy factors in, checking shapes: A [r, in], B [out, r]."""
        for name, param, value in (("lora_A", self.lora_A.weight, A), ("lora_B", self.lora_B.weight, B)):
            if tuple(value.shape) != tuple(param.shape):
                raise LmlabError(f"{name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(value.to(param.dtype))

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}" + (", rslora" if self.use_rslora else "")
