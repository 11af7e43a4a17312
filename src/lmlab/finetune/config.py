"""FinetuneConfig: an SFT recipe (``configs/finetune-*.yaml``) for ``lmlab finetune``.

Reuses the Trainer's ``optim`` / ``run`` sections; ``data`` points at chat JSONL; ``methods`` names the
methods to combine, each with its settings under its name (``lmlab.finetune.method_registry``)::

    methods:
      lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}
      migu: {ratio: 0.5}
      interpolate: {alpha: 0.5}

No method = full fine-tuning. ``merge_adapter``: merge a mergeable adapter into the weights at the end
(a plain checkpoint is written), else the adapter is saved alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmlab.errors import LmlabError
from lmlab.train.config import OptimSection, RunSection


@dataclass
class FTModelSection:
    """``init_from``: HF checkpoint directory (with its tokenizer unless ``tokenizer`` is set)."""

    init_from: str = "runs/quickstart/model"
    tokenizer: str | None = None


@dataclass
class FTDataSection:
    """Chat JSONL (``{"messages": [...]}`` per line). ``pack``: several conversations per block with
    segment-restricted attention (default on). ``batch_size``: global blocks per optimizer step."""

    path: str = ""
    block_size: int = 256
    pack: bool = True
    truncate: bool = False
    batch_size: int = 8
    grad_accum: int = 1
    shuffle: bool = True
    seed: int = 0


@dataclass
class FinetuneConfig:
    model: FTModelSection = field(default_factory=FTModelSection)
    data: FTDataSection = field(default_factory=FTDataSection)
    methods: dict[str, Any] = field(default_factory=dict)  # {name: {settings}}; {} = full fine-tuning
    merge_adapter: bool = True
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-4, warmup_steps=10, weight_decay=0.0))
    run: RunSection = field(default_factory=lambda: RunSection(out_dir="runs/finetune", max_steps=200,
                                                               objective="sft", eval_every=0, ckpt_every=0))

    def __post_init__(self) -> None:
        if not self.data.path:
            raise LmlabError("finetune config: data.path is required (chat JSONL)")
        self.build_methods()  # every method name and setting is checked when the recipe is read

    def build_methods(self) -> list[Any]:
        """Fresh method objects for ``methods`` (parsed through config_io by the method registry)."""
        from lmlab.finetune.method_registry import build_methods

        built = build_methods(self.methods)
        for m in built:
            if hasattr(m, "merge"):
                m.merge = self.merge_adapter
        roles = {m.role for m in built}
        if "merge" in roles and any(m.role == "params" and getattr(m, "merge", True) is False for m in built):
            raise LmlabError("finetune config: methods.interpolate with an adapter needs merge_adapter: true")
        return built
