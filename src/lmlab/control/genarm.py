"""GenARM decoding (Xu et al. 2024, "GenARM: Reward Guided Generation with Autoregressive Reward Model for
Test-time Alignment", arXiv:2410.08193): the next-token distribution is

    log p(y_t) = log pi_base(y_t | x, y_<t) + (1 / beta) * sum_i w_i log pi_r_i(y_t | x, y_<t) + const

where each pi_r_i is an autoregressive reward model (a causal LM whose token log-probabilities are the token
rewards) and w_i the user's weight of objective i (multi-objective alignment). Each ARM runs in lock-step with
its own KV cache. All weights zero reproduces the base tokens exactly. Training an ARM from preference pairs
(the paper's loss) is not here yet: any causal LM with the base's tokenizer can serve as an ARM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lmlab.control.finite import check_finite
from lmlab.control.proxy import check_same_vocabulary
from lmlab.core.processors import GuideProcessor, StatefulProcessor, StepInfo
from lmlab.errors import LmlabError


class GenARM(StatefulProcessor):
    """``arms``: reward models; ``weights``: one per ARM (default all 1); ``beta``: the KL coefficient."""

    def __init__(self, arms: Sequence, weights: Sequence[float] | None = None, beta: float = 1.0, base=None) -> None:
        arms = list(arms)
        if not arms:
            raise LmlabError("GenARM: give at least one autoregressive reward model")
        weights = [1.0] * len(arms) if weights is None else [float(w) for w in weights]
        if len(weights) != len(arms):
            raise LmlabError(f"GenARM: {len(weights)} weights for {len(arms)} reward models")
        if not (math.isfinite(beta) and beta > 0) or not all(math.isfinite(w) for w in weights):
            raise LmlabError(f"GenARM: beta must be finite and > 0 and weights finite, got beta={beta}, "
                             f"weights={weights}")
        named = [(f"arm {i}", a) for i, a in enumerate(arms)] + ([("base", base)] if base is not None else [])
        check_same_vocabulary("GenARM", *named)
        self.vocab = arms[0].config.vocab_size
        self.guides = [GuideProcessor(a, weight=w / beta) for a, w in zip(arms, weights)]
        self.knob = f"weights {weights} / beta {beta}"

    def start(self, prompts, max_new_tokens, row_ids) -> None:
        for g in self.guides:
            g.start(prompts, max_new_tokens, row_ids)

    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:  # logits [B, V]
        if logits.shape[-1] != self.vocab:
            raise LmlabError(f"GenARM: base vocabulary {logits.shape[-1]} differs from the reward models' "
                             f"{self.vocab} (they must share one tokenizer)")
        before = logits
        for g in self.guides:
            logits = g.step(ids, logits, info)
        return check_finite("GenARM", self.knob, before, logits)

    def finish(self, row_ids) -> None:
        for g in self.guides:
            g.finish(row_ids)
