"""AlignConfig: a preference-alignment recipe (``configs/align-*.yaml``) for ``lmlab align``.

``run.objective`` is ``dpo``, ``reward`` (Bradley–Terry) or ``haf_rm``, with its own arguments in
``run.objective_args`` (``beta``, ``label_smoothing``, ``alpha``, ...), parsed through ``lmlab.config_io``
like every other field. ``data.path`` is a preference JSONL file or ``world:<split>[:<reason>]`` for the
built-in world's pairs (e.g. ``world:train:politeness``). DPO's reference is the ``model.init_from`` checkpoint
(or ``model.reference``), read from disk so that a resumed run uses the same one; with ``lora.enabled`` it is
the model with its adapters disabled, so no second copy is held. Held-out pairs (``data.eval_path``) are scored
at the end: pair accuracy of the reward model, or of DPO's implicit reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.train.config import OptimSection, RunSection

OBJECTIVES = ("dpo", "reward", "haf_rm")


@dataclass
class AlignModelSection:
    """``init_from``: HF checkpoint directory (with its tokenizer unless ``tokenizer`` is set); ``reference``:
    DPO's frozen reference (default: ``init_from``)."""

    init_from: str = ""
    tokenizer: str | None = None
    reference: str | None = None


@dataclass
class AlignDataSection:
    """``path``: preference JSONL or ``world:<split>[:<reason>]``; ``eval_path``: held-out pairs (same forms,
    "" = none); ``world_seed``: the world's seed for ``world:`` paths; ``batch_size``: pairs per optimizer step."""

    path: str = "world:train"
    eval_path: str = "world:heldout"
    world_seed: int = 0
    max_length: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 0


@dataclass
class AlignLoraSection:
    """LoRA on the policy (``lmlab.peft.LoraConfig`` fields); ``merge``: write a merged checkpoint."""

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = True


@dataclass
class AlignConfig:
    model: AlignModelSection = field(default_factory=AlignModelSection)
    data: AlignDataSection = field(default_factory=AlignDataSection)
    lora: AlignLoraSection = field(default_factory=AlignLoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=5e-4, warmup_steps=5, weight_decay=0.0))
    run: RunSection = field(default_factory=lambda: RunSection(out_dir="runs/align", max_steps=100, objective="dpo",
                                                               eval_every=0, ckpt_every=0))

    def __post_init__(self) -> None:
        if not self.model.init_from:
            raise LmlabError("align config: model.init_from is required (an HF checkpoint directory)")
        if self.run.objective not in OBJECTIVES:
            raise LmlabError(f"align config: run.objective must be one of {', '.join(OBJECTIVES)}, "
                             f"got {self.run.objective!r}")
        if self.lora.enabled and self.run.objective != "dpo":
            raise LmlabError("align config: lora.enabled is supported with run.objective: dpo")


def read_pairs(spec: str, tokenizer, world_seed: int):
    """Tokenised pairs from a JSONL path or ``world:<split>[:<reason>]``."""
    from lmlab.align.preference_data import load_preferences, tokenize_record, world_preferences

    if spec.startswith("world:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[1] not in ("train", "heldout"):
            raise LmlabError(f"data path {spec!r}: expected world:<train|heldout>[:<factual|politeness>]")
        from lmlab.data.world import WorldConfig, build_world

        world = build_world(WorldConfig.quickstart(seed=world_seed))
        records = world_preferences(world, parts[1], parts[2] if len(parts) == 3 else None)
        if not records:
            raise LmlabError(f"data path {spec!r}: no pairs of that kind")
    else:
        records = load_preferences(spec)
    return [tokenize_record(tokenizer, r) for r in records]


def run_align(cfg: AlignConfig, progress: bool | None = None) -> dict:
    import torch

    import lmlab
    from lmlab.align.dpo import DPOObjective, PrecomputedPreferenceData, pair_logps, precompute_reference
    from lmlab.align.preference_data import PreferenceData, collate_pairs
    from lmlab.align.reward import reward_model, save_reward_model
    from lmlab.config_io import save_config
    from lmlab.train.config import DataSection, TrainConfig
    from lmlab.train.loop import Trainer
    from lmlab.train.objective_registry import build_objective

    torch.manual_seed(cfg.run.seed)
    model = lmlab.load(cfg.model.init_from).float()
    tok = lmlab.load_tokenizer(cfg.model.tokenizer or cfg.model.init_from)
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    d, objective_name = cfg.data, cfg.run.objective
    pairs = read_pairs(d.path, tok, d.world_seed)
    held = read_pairs(d.eval_path, tok, d.world_seed) if d.eval_path else []
    args = dict(cfg.run.objective_args)
    out = Path(cfg.run.out_dir)
    save_config(cfg, out / "align_config.yaml")
    if objective_name == "dpo":
        if cfg.lora.enabled:
            from lmlab.peft import LoraConfig, add_adapter

            add_adapter(model, LoraConfig(r=cfg.lora.r, alpha=cfg.lora.alpha, target_modules=list(cfg.lora.targets)))
            objective = DPOObjective(**{**args, "reference": "adapters_off"})
            data = PreferenceData(pairs, pad, max_length=d.max_length, seed=d.seed)
        else:  # the reference log-probs of every pair computed once, before training
            reference = lmlab.load(cfg.model.reference or cfg.model.init_from).float()
            logps = precompute_reference(reference, pairs, pad, max_length=d.max_length)
            objective = DPOObjective(**{**args, "reference_model": reference})
            data = PrecomputedPreferenceData(pairs, logps, pad, max_length=d.max_length, seed=d.seed)
        trained = model
    else:
        trained = reward_model(model, seed=cfg.run.seed)
        objective = build_objective(objective_name, args)
        data = PreferenceData(pairs, pad, max_length=d.max_length, seed=d.seed)
    tcfg = TrainConfig(data=DataSection(kind="random", block_size=d.max_length, batch_size=d.batch_size,
                                        grad_accum=d.grad_accum, seed=d.seed), optim=cfg.optim, run=cfg.run)
    summary = Trainer(trained, tcfg, data, objective=objective, progress=progress).fit()
    trained.eval()
    if held:
        with torch.no_grad():
            batch = collate_pairs(held, pad, d.max_length)
            if objective_name == "dpo":
                chosen, rejected = pair_logps(model, batch)
                ref_model = objective.reference.model
                if ref_model is None:
                    from lmlab.peft.inject import disable_adapters

                    with disable_adapters(model):
                        rc, rr = pair_logps(model, batch)
                else:
                    rc, rr = pair_logps(ref_model, batch)
                margin = (chosen - rc) - (rejected - rr)
            else:
                r = trained(batch["input_ids"], batch["attention_mask"])[:, 0]
                margin = torch.sub(*r.chunk(2))
        summary["heldout_pair_accuracy"] = float((margin > 0).float().mean())
        summary["heldout_pairs"] = len(held)
    if objective_name == "dpo":
        if cfg.lora.enabled and cfg.lora.merge:
            from lmlab.peft import merge_and_unload

            merge_and_unload(model)
        if cfg.lora.enabled and not cfg.lora.merge:
            from lmlab.peft import save_adapter

            save_adapter(model, out / "adapter")
            summary["adapter"] = str(out / "adapter")
        else:
            lmlab.save(model, out / "model", tokenizer=tok)
            summary["model"] = str(out / "model")
    else:
        save_reward_model(trained, out / "reward_model", tokenizer=tok)
        summary["reward_model"] = str(out / "reward_model")
    summary["pairs"] = len(pairs)
    return summary
