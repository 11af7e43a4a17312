"""SPIN: self-play fine-tuning (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
Language Models", arXiv:2401.01335).

Starting from an SFT model π_0 and the SFT data itself (prompts x with real responses y), iteration t:

1. the current model π_t generates y' for every SFT prompt;
2. π_{t+1} is trained to tell the real response from its own: with the logistic loss,
   ``ℓ(λ log π(y|x)/π_t(y|x) − λ log π(y'|x)/π_t(y'|x))``, which is DPO with chosen = real, rejected = generated
   and reference = π_t (the previous iterate, frozen).

The optimum is reached only when π_t already matches the data distribution; then generated and real responses
coincide and the gradient vanishes (a pair whose generated response equals the real one carries no signal and
is dropped). Defaults from the paper's setup: λ = 0.1 (its β), the synthetic data of the previous iteration kept
beside the new one (Sec. 5: iteration t trains on data generated at t and t − 1), and a handful of iterations.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmlab.align.dpo import DPOObjective, PrecomputedPreferenceData, precompute_reference
from lmlab.align.preference_data import TokenizedPair
from lmlab.core.generate import GenerationConfig, generate
from lmlab.errors import LmlabError


@dataclass
class SPINConfig:
    """``iterations``: self-play rounds; ``beta``: the paper's λ; ``steps`` / ``batch_size`` / ``lr``: DPO training
    per iteration; ``keep_previous``: also train on the previous iteration's generations; ``generation``: how π_t
    samples its responses (greedy by default keeps iterations deterministic; the paper samples)."""

    iterations: int = 3
    beta: float = 0.1
    steps: int = 50
    batch_size: int = 8
    lr: float = 5e-4
    keep_previous: bool = True
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=32))
    out_dir: str = "runs/spin"
    seed: int = 0

    def validate(self) -> None:
        if self.iterations < 1 or self.steps < 1 or self.batch_size < 1:
            raise LmlabError("spin: iterations, steps and batch_size must be >= 1")
        if self.beta <= 0:
            raise LmlabError(f"spin: beta must be > 0, got {self.beta}")


def self_play_pairs(model, prompts: Sequence[list[int]], responses: Sequence[list[int]],
                    generation: GenerationConfig) -> list[TokenizedPair]:
    """(real, generated) pairs; pairs whose generation equals the real response are dropped."""
    rows = generate(model, [list(p) for p in prompts], generation)
    pairs = []
    for p, real, row in zip(prompts, responses, rows):
        generated = row[len(p):]
        if generated and generated != list(real):
            pairs.append(TokenizedPair(list(p), list(real), generated))
    return pairs


def spin(model, prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_token_id: int,
         config: SPINConfig | None = None, progress: bool = False) -> list[dict]:
    """Run SPIN in place on ``model``; returns one summary per iteration (pairs, final loss, ...)."""
    from lmlab.train.config import DataSection, OptimSection, RunSection, TrainConfig
    from lmlab.train.loop import Trainer

    config = config or SPINConfig()
    config.validate()
    if len(prompts) != len(responses) or not prompts:
        raise LmlabError(f"spin: {len(prompts)} prompts and {len(responses)} responses; need the same non-zero count")
    history: list[dict] = []
    previous: list[TokenizedPair] = []
    for it in range(config.iterations):
        model.eval()
        new = self_play_pairs(model, prompts, responses, config.generation)
        pairs = new + (previous if config.keep_previous else [])
        summary = {"iteration": it, "new_pairs": len(new), "pairs": len(pairs)}
        if not new:  # π_t reproduces every real response: the fixed point
            summary["converged"] = True
            history.append(summary)
            break
        opponent = copy.deepcopy(model).eval().requires_grad_(False)  # π_t, the reference of this round
        ref_logps = precompute_reference(opponent, pairs, pad_token_id)
        data = PrecomputedPreferenceData(pairs, ref_logps, pad_token_id, seed=config.seed + it)
        batch = min(config.batch_size, len(pairs))
        tcfg = TrainConfig(data=DataSection(kind="random", batch_size=batch),
                           optim=OptimSection(lr=config.lr, warmup_steps=0, weight_decay=0.0, schedule="constant"),
                           run=RunSection(out_dir=str(Path(config.out_dir) / f"iter-{it}"), max_steps=config.steps,
                                          eval_every=0, ckpt_every=0, log_every=max(1, config.steps),
                                          seed=config.seed + it, device=str(next(model.parameters()).device)))
        model.train()
        result = Trainer(model, tcfg, data, objective=DPOObjective(beta=config.beta, reference_model=opponent),
                         progress=progress).fit()
        summary["final_loss"] = result["final_loss"]
        history.append(summary)
        previous = new
        del opponent
        torch.manual_seed(config.seed + it + 1)
    model.eval()
    return history
