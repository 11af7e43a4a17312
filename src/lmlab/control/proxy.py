"""Proxy-tuning (Liu et al. 2024, "Tuning Language Models by Proxy", arXiv:2401.08565) and EFT / LM
up-scaling (Mitchell et al. 2024): steer a base model with the logit difference of a small tuned model
(expert) and the same small model untuned (anti-expert), all sharing one vocabulary:

    logits = base + alpha * (tuned - untuned)

The paper uses alpha = 1 (the plain difference). Each small model runs in lock-step with the base, with its
own KV cache (``lmlab.core.processors.GuideProcessor``). We add log-softmax differences, which equal the logit
difference up to a per-row constant and so give the same distribution. alpha = 0 reproduces the base exactly.
"""

from __future__ import annotations

import torch

from lmlab.core.processors import GuideProcessor, StatefulProcessor, StepInfo
from lmlab.errors import LmlabError


def check_same_vocabulary(where: str, *named) -> None:
    """``named``: (label, model or tokenizer) pairs; tokenizers are compared token by token."""
    sizes = {label: (m.config.vocab_size if hasattr(m, "config") else len(m)) for label, m in named}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise LmlabError(f"{where}: the models must share one tokenizer, but vocabulary sizes differ ({listed})")


class ProxyTuning(StatefulProcessor):
    """A stateful logits processor owning the tuned and untuned small models and their caches."""

    def __init__(self, tuned, untuned, alpha: float = 1.0, base=None, tokenizers: dict | None = None) -> None:
        named = [("tuned", tuned), ("untuned", untuned)] + ([("base", base)] if base is not None else [])
        check_same_vocabulary("ProxyTuning", *named)
        if tokenizers:
            vocabs = {k: t.backend.get_vocab() for k, t in tokenizers.items()}
            first = next(iter(vocabs.values()))
            bad = [k for k, v in vocabs.items() if v != first]
            if bad:
                raise LmlabError(f"ProxyTuning: tokenizer(s) {', '.join(bad)} differ from "
                                 f"{next(iter(vocabs))}'s (the models must share one tokenizer)")
        if not torch.isfinite(torch.tensor(float(alpha))):
            raise LmlabError(f"ProxyTuning: alpha must be finite, got {alpha}")
        self.alpha = float(alpha)
        self.vocab = tuned.config.vocab_size
        self.expert = GuideProcessor(tuned, weight=self.alpha)
        self.anti = GuideProcessor(untuned, weight=-self.alpha)

    def start(self, prompts, max_new_tokens, row_ids) -> None:
        self.expert.start(prompts, max_new_tokens, row_ids)
        self.anti.start(prompts, max_new_tokens, row_ids)

    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:  # logits [B, V]
        if logits.shape[-1] != self.vocab:
            raise LmlabError(f"ProxyTuning: base vocabulary {logits.shape[-1]} differs from the small models' "
                             f"{self.vocab} (the models must share one tokenizer)")
        from lmlab.control.finite import check_finite

        out = self.anti.step(ids, self.expert.step(ids, logits, info), info)
        return check_finite("ProxyTuning", f"alpha {self.alpha}", logits, out)

    def finish(self, row_ids) -> None:
        self.expert.finish(row_ids)
        self.anti.finish(row_ids)
