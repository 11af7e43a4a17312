"""Series and parallel bottleneck adapters, as in LLM-Adapters (Hu et al. 2023, arXiv:2304.01933).

A bottleneck is ``scaling * W_up f(W_down dropout(h))``. Placement decides ``h`` and where the result goes:

- series, ``position="output"``: after the module, ``y <- y + adapter(y)`` (Houlsby et al. 2019 style; the
  placement LLM-Adapters calls "after the MLP layer" when targeting ``mlp``);
- series, ``position="input"``: before the module, ``x <- x + adapter(x)`` (their "mh_adapter" on a linear);
- parallel: beside the module, ``y <- y + adapter(x)`` (He et al. 2022, "Towards a Unified View of PEFT").

Targets are linear layers or lmlab's ``Attention`` / ``MLP`` / ``Block`` modules (d_model in and out).
These adapters are non-linear, so they cannot be merged into weights, and peft has no format for them:
``save_adapter`` writes them in lmlab's own format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.peft.registry import register_method
from lmlab.peft.inject import AdapterConfig

ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
               "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "identity": lambda x: x}


def _module_features(module: nn.Module, model: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a module an adapter can sit on, or None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    from lmlab.core.model import MLP, Attention, Block

    if isinstance(module, (MLP, Attention, Block)):
        d = module.config.d_model if hasattr(module, "config") else model.config.d_model
        return d, d
    return None


@dataclass
class _BottleneckConfig(AdapterConfig):
    bottleneck_size: int = 256
    non_linearity: str = "tanh"
    dropout: float = 0.0
    scaling: float = 1.0
    init: str = "bert"
    target_modules: list[str] | str = field(default_factory=lambda: ["mlp"])

    def accepts(self, module: nn.Module, model: nn.Module) -> bool:
        return _module_features(module, model) is not None

    def validate(self) -> None:
        if not isinstance(self.bottleneck_size, int) or self.bottleneck_size < 1:
            raise LmlabError(f"{self.method}: bottleneck_size must be a positive integer, got {self.bottleneck_size!r}")
        if self.non_linearity not in ACTIVATIONS:
            raise LmlabError(f"{self.method}: non_linearity {self.non_linearity!r} is not one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LmlabError(f"{self.method}: dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in ("bert", "zeros"):
            raise LmlabError(f"{self.method}: init must be 'bert' or 'zeros', got {self.init!r}")

    def _build(self, module: nn.Module, model: nn.Module, position: str) -> "BottleneckAdapter":
        fin, fout = _module_features(module, model)
        d_in, d_out = {"output": (fout, fout), "input": (fin, fin), "parallel": (fin, fout)}[position]
        return BottleneckAdapter(d_in, d_out, self.bottleneck_size, position, self.non_linearity, self.dropout,
                                 self.scaling, self.init)


@register_method("series_adapter")
@dataclass
class SeriesAdapterConfig(_BottleneckConfig):
    """Series (bottleneck) adapter from LLM-Adapters (Hu et al. 2023, arXiv:2304.01933).

    Defaults: ``bottleneck_size=256``, ``non_linearity="tanh"``, ``dropout=0.0``, ``scaling=1.0`` and
    ``init="bert"`` (down and up ~ N(0, 0.02)) are the defaults of the authors' ``BottleneckConfig``; the
    paper reports 256 as the best bottleneck for LLaMA-7B. ``target_modules=["mlp"]`` with
    ``position="output"`` is the paper's best placement, "after the MLP layer" (Sec. 4); the authors'
    scripts instead default to gate/up (input side) and down (output side) projections, reachable with
    ``target_modules=["down_proj"]`` or ``position="input"``. ``init="zeros"`` (their "mam_adapter":
    kaiming down, zero up) starts the adapted model equal to the base.
    """

    position: str = "output"

    def validate(self) -> None:
        super().validate()
        if self.position not in ("output", "input"):
            raise LmlabError(f"{self.method}: position must be 'output' or 'input', got {self.position!r}")

    def build(self, module: nn.Module, model: nn.Module) -> "BottleneckAdapter":
        return self._build(module, model, self.position)


@register_method("parallel_adapter")
@dataclass
class ParallelAdapterConfig(_BottleneckConfig):
    """Parallel adapter from LLM-Adapters (Hu et al. 2023, arXiv:2304.01933; He et al. 2022, arXiv:2110.04366).

    ``y = module(x) + scaling * W_up f(W_down x)``. Defaults as for the series adapter (the authors'
    ``BottleneckConfig``: 256, tanh, dropout 0, scaling 1, BERT init); ``target_modules=["mlp"]`` is the
    paper's best placement, "in parallel with the MLP layer" (Sec. 4). Their scripts default to q/k/v
    projections instead (``target_modules=["q_proj", "k_proj", "v_proj"]``).
    """

    def build(self, module: nn.Module, model: nn.Module) -> "BottleneckAdapter":
        return self._build(module, model, "parallel")


class BottleneckAdapter(nn.Module):
    """``scaling * up(f(down(dropout(h))))``; ``h`` is the module output (series output), its input
    (series input, parallel)."""

    mergeable = False

    def __init__(self, d_in: int, d_out: int, bottleneck: int, position: str, non_linearity: str = "tanh",
                 dropout: float = 0.0, scaling: float = 1.0, init: str = "bert") -> None:
        super().__init__()
        self.position, self.non_linearity, self.scaling = position, non_linearity, float(scaling)
        self.down = nn.Linear(d_in, bottleneck, bias=False)
        self.up = nn.Linear(bottleneck, d_out, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = ACTIVATIONS[non_linearity]
        if init == "bert":
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
            nn.init.zeros_(self.up.weight)

    @property
    def dtype(self) -> torch.dtype:
        return self.down.weight.dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = y if self.position == "output" else x
        return self.up(self.act(self.down(self.dropout(h)))) * self.scaling

    def extra_repr(self) -> str:
        return f"position={self.position}, f={self.non_linearity}, scaling={self.scaling:g}"
