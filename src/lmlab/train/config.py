"""TrainConfig: every knob of a pre-training run, with where each default comes from.

Read from a YAML recipe (``configs/*.yaml``) plus ``--set a.b=c`` overrides by ``lmlab.config_io.load_config``;
the fully resolved config is saved as ``<out_dir>/config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmlab.errors import LmlabError


@dataclass
class ModelSection:
    """The model to train: a fresh Llama-style model, or weights from an HF checkpoint directory.

    ``init_from``: path to a directory with ``config.json`` + ``model.safetensors``; when set, the size fields
    are ignored. Otherwise ``ModelConfig.llama_like`` builds the architecture (RMSNorm, RoPE, SwiGLU, no
    biases: the LLaMA recipe, Touvron et al. 2023) and ``overrides`` may set any other ``ModelConfig`` field
    (e.g. ``{norm_eps: 1e-5, rope_base: 500000}``). ``vocab_size: null`` takes it from the data/tokenizer.
    """

    init_from: str | None = None
    vocab_size: int | None = None
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_mlp: int | None = None  # None -> Llama rule 8/3 * d_model rounded up to 32
    max_seq_len: int = 512
    tie_embeddings: bool = True  # small models: tying saves V*d params (GPT-2, Gemma practice)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Token data. ``batch_size`` is the *global* number of sequences per optimizer step, split as
    ``batch_size = micro_batch * grad_accum * world_size``, so a recipe means the same on 1 or N processes.

    ``kind: shards`` reads a token-shard directory written by ``lmlab.data.shards.build_shards`` (``path``;
    its ``train`` split is packed into ``block_size`` windows, its ``val`` split, if any, is the validation
    set). The train/validation split is made when the shards are built (``build_shards(val_fraction=...)``),
    once for every run over them, so there is no val_fraction here. ``kind: random`` draws uniform random
    tokens (``model.vocab_size`` must be set): throughput and smoke tests only.
    """

    kind: Literal["shards", "random"] = "shards"
    path: str | None = None
    block_size: int = 256
    batch_size: int = 32
    grad_accum: int = 1
    shuffle: bool = True
    seed: int = 0  # data-order seed, separate from run.seed (same data order, different init)


@dataclass
class OptimSection:
    """AdamW (Loshchilov & Hutter 2019) with the GPT-3 / nanoGPT / LLaMA defaults.

    betas (0.9, 0.95): GPT-3 (Brown et al. 2020, App. B) and LLaMA; beta2=0.95 is more stable than 0.999 at
    LM batch sizes. weight_decay 0.1: GPT-3/LLaMA. Decay applies only to >=2-D weights (matmuls and
    embeddings), never to norms or biases: nanoGPT ``configure_optimizers`` (Karpathy), following GPT-2/3
    practice. grad_clip 1.0: GPT-3, LLaMA. Schedules (``lmlab.train.optim.lr_at``): "cosine" = linear warmup
    then cosine to ``min_lr_ratio * lr`` (GPT-3 decays to 10%); "wsd" = warmup-stable-decay (MiniCPM, Hu et al.
    2024, arXiv:2404.06395) with the last ``decay_fraction`` of steps decaying (they use ~10%); "constant".
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # <= 0 disables clipping
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.1
    min_lr_ratio: float = 0.1


@dataclass
class RunSection:
    """Loop bookkeeping. ``precision: bf16`` runs forward+loss under ``torch.autocast(bfloat16)`` (weights and
    optimizer stay fp32, as in mixed-precision training, Micikevicius et al. 2018). ``device: auto`` = CUDA if
    present (LOCAL_RANK's GPU under torchrun), else CPU. ``keep_last``: checkpoints kept (0 = all).
    ``objective``: a registered objective name; ``objective_args``: its keyword arguments, checked against
    its schema when the config is built (``lmlab.train.objective_registry.build_objective``)."""

    out_dir: str = "runs/default"
    max_steps: int = 1000
    eval_every: int = 200  # 0 disables periodic evaluation (one eval still runs at the end if val data exists)
    eval_batches: int = 20
    ckpt_every: int = 500  # 0 -> only the final checkpoint
    keep_last: int = 3
    log_every: int = 10
    seed: int = 1337
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    objective: str = "causal_lm"  # any registered name (lmlab.train.objective_registry.available_objectives)
    objective_args: dict[str, Any] = field(default_factory=dict)  # that objective's own arguments, e.g. {beta: 0.1}
    progress: bool = True
    tensorboard: bool = False


@dataclass
class DistributedSection:
    """Only read under ``torchrun`` (WORLD_SIZE > 1). "ddp": replicate + all-reduce gradients; "fsdp":
    ``torch.distributed.fsdp.fully_shard`` per transformer block (ZeRO-3-style sharding, FSDP2)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise LmlabError(f"train config: {what}")

        d, o, r = self.data, self.optim, self.run
        need(d.block_size > 0, f"data.block_size must be > 0, got {d.block_size}")
        need(d.batch_size > 0, f"data.batch_size must be > 0, got {d.batch_size}")
        need(d.grad_accum > 0, f"data.grad_accum must be > 0, got {d.grad_accum}")
        need(d.batch_size % d.grad_accum == 0,
             f"data.batch_size {d.batch_size} is not divisible by data.grad_accum {d.grad_accum}")
        need(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
        need(all(0.0 <= b < 1.0 for b in o.betas), f"optim.betas must be in [0, 1), got {o.betas}")
        need(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        need(0.0 <= o.decay_fraction <= 1.0, f"optim.decay_fraction must be in [0, 1], got {o.decay_fraction}")
        need(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        need(r.max_steps > 0, f"run.max_steps must be > 0, got {r.max_steps}")
        for name in ("eval_every", "eval_batches", "ckpt_every", "keep_last", "log_every"):
            need(getattr(r, name) >= 0, f"run.{name} must be >= 0, got {getattr(r, name)}")
        check_objective(r)


def check_objective(run: RunSection) -> None:
    """Fail early (when the recipe is read) on an unknown objective or a bad ``run.objective_args``."""
    from lmlab.train.objective_registry import parse_objective_args

    if isinstance(run.objective, str):
        parse_objective_args(run.objective, run.objective_args)
