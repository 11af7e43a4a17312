"""Half Fine-Tuning (HFT; Hui et al. 2024, "HFT: Half Fine-Tuning for Large Language Models",
arXiv:2404.18466, ACL 2025).

In every stage (the paper: every epoch / training round) half of the parameters are frozen and the other half
are updated; the selection is redrawn each stage. Selection is at the category level inside the transformer
(their Fig. 2): in each layer, half of the attention matrices (2 of q/k/v/o) are trained; the FFN
(gate/up/down) is selected as a unit for half of the layers (3 matrices do not split in half); the norms
(ln1/ln2) of half of the layers are trained. Embeddings, the final norm and the LM head are outside the
blocks; the paper does not select among them, so ``others`` says what to do with them (default "train").
The abstract's claims: less forgetting than full fine-tuning, ~30% less training time.

Freezing is done with ``requires_grad=False``, so frozen weights get no gradient at all: the optimiser skips
them (AdamW skips parameters whose ``grad`` is None, also for weight decay) and the backward pass does not
compute their weight gradients, which is where the time saving comes from. Build the optimiser over all
parameters *before* the first selection: pass the method to the Trainer as a callback
(``Trainer(..., callbacks=[hft])``); it selects at the start of the first optimizer step and redraws at the
start of step ``k * stage_steps``, counted by the Trainer (so resuming at step N continues N's stage).
In a recipe: ``methods: {hft: {stage_steps: 15}}`` (``lmlab.finetune.method_registry``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lmlab.errors import LmlabError


@dataclass
class HFTConfig:
    """``stage_steps``: optimizer steps per stage (0 = one stage for the whole run); the paper redraws
    per epoch. ``fraction``: share of each group frozen (paper: 0.5). ``others``: "train" | "freeze" for
    embed, ln_final and lm_head (not covered by the paper's per-layer selection)."""

    stage_steps: int = 0
    fraction: float = 0.5
    others: Literal["train", "freeze"] = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise LmlabError(f"hft.fraction must be in (0, 1), got {self.fraction}")
        if self.stage_steps < 0:
            raise LmlabError(f"hft.stage_steps must be >= 0, got {self.stage_steps}")
        if self.others not in ("train", "freeze"):
            raise LmlabError(f"hft.others must be 'train' or 'freeze', got {self.others!r}")


def hft_groups(model: nn.Module) -> dict[str, list[list[str]]]:
    """Selection groups: ``{group: [unit, ...]}``, a unit being a list of parameter names frozen together."""
    names = [n for n, _ in model.named_parameters()]
    n_layers = len(model.blocks)
    groups: dict[str, list[list[str]]] = {}
    for i in range(n_layers):
        p = f"blocks.{i}."
        groups[f"layer{i}.attn"] = [[n for n in names if n.startswith(p + f"attn.{m}.")]
                                    for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
    groups["ffn"] = [[n for n in names if n.startswith(f"blocks.{i}.mlp.")] for i in range(n_layers)]
    groups["norms"] = [[n for n in names if n.startswith((f"blocks.{i}.ln1.", f"blocks.{i}.ln2."))]
                       for i in range(n_layers)]
    return {g: [u for u in units if u] for g, units in groups.items() if [u for u in units if u]}


class HalfFineTuning:
    """``hft = HalfFineTuning(cfg); hft.select(model, stage)``, or ``Trainer(..., callbacks=[hft])``
    (``on_step_start`` redraws every ``stage_steps`` optimizer steps)."""

    name = "hft"
    config_class = HFTConfig
    role = "params"  # chooses which weights train (lmlab.finetune.method_registry)
    needs_base = False

    def __init__(self, config: HFTConfig | None = None) -> None:
        self.config = config or HFTConfig()
        self.stage = -1
        self.frozen: set[str] = set()

    def select(self, model: nn.Module, stage: int = 0) -> set[str]:
        """Freeze ``fraction`` of the units of every group (rounded to nearest, at least 1); returns the
        frozen parameter names."""
        c = self.config
        rng = random.Random(c.seed * 1_000_003 + stage)
        frozen: set[str] = set()
        for _, units in sorted(hft_groups(model).items()):
            k = min(len(units) - 1, max(1, round(c.fraction * len(units)))) if len(units) > 1 else 0
            for j in rng.sample(range(len(units)), k):
                frozen.update(units[j])
        covered = {n for units in hft_groups(model).values() for u in units for n in u}
        for name, param in model.named_parameters():
            if name in covered:
                param.requires_grad_(name not in frozen)
            else:
                param.requires_grad_(c.others == "train")
                if c.others == "freeze":
                    frozen.add(name)
        self.frozen, self.stage = frozen, stage
        return frozen

    def stage_of(self, step: int) -> int:
        """The stage of optimizer step ``step`` (0-based count of steps already taken)."""
        return step // self.config.stage_steps if self.config.stage_steps else 0

    def on_step_start(self, trainer) -> None:
        """Trainer callback: before the first forward of each optimizer step, redraw when a stage begins."""
        stage = self.stage_of(trainer.step)
        if stage != self.stage:
            self.select(trainer.module, stage)

    def callbacks(self) -> list:
        return [self]

    def finish(self, model: nn.Module, base: nn.Module | None = None) -> None:
        """After training: every parameter trainable again (the model is handed back as it came)."""
        for p in model.parameters():
            p.requires_grad_(True)
        self.stage = -1

    def trainable_fraction(self, model: nn.Module) -> float:
        total = sum(p.numel() for p in model.parameters())
        return sum(p.numel() for p in model.parameters() if p.requires_grad) / total
