"""Best-of-N and rejection sampling with any scorer: prompts prefilled once, N samples forked from the cache.

* **Best-of-N**: draw N responses per prompt (``generate(num_samples=N)``: one prefill, the cache rows
  forked N ways) and keep the highest-scoring one. With N = 1 it is plain sampling, token for token.
* **Rejection sampling** (Irvine et al. 2023, "Rewarding Chatbots for Real-World Engagement with Millions of
  Users", arXiv:2303.06135): responses the reward model scores low are rejected. Here: draw rounds of
  ``round_size`` samples until one scores at least ``threshold`` or ``max_samples`` are spent, then return the
  first accepted response (or the best seen), so an easy prompt costs fewer samples than N.

A scorer is ``scorer(prompts: list[list[int]], responses: list[list[int]]) -> Tensor [n]``: a reward model
(:func:`reward_model_scorer`), or any function of the decoded text (:func:`text_scorer`), e.g. the world's
ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from lmlab.core.generate import GenerationConfig, generate
from lmlab.errors import LmlabError

Scorer = Callable[[list[list[int]], list[list[int]]], torch.Tensor]


@dataclass
class Selection:
    """One prompt's outcome: the kept response, every sample drawn and their scores."""

    response: list[int]
    score: float
    samples: list[list[int]]
    scores: list[float]


def reward_model_scorer(rm, pad_token_id: int, batch_size: int = 16) -> Scorer:
    """Score prompt + response with a reward model (``lmlab.align.reward``)."""
    from lmlab.align.reward import score

    def scorer(prompts, responses):
        return score(rm, [p + r for p, r in zip(prompts, responses)], pad_token_id, batch_size)

    return scorer


def text_scorer(tokenizer, fn: Callable[[str, str], float]) -> Scorer:
    """Score decoded (prompt, response) text with ``fn`` (a known-truth reward, a lexicon, ...)."""

    def scorer(prompts, responses):
        return torch.tensor([float(fn(tokenizer.decode(p), tokenizer.decode(r))) for p, r in zip(prompts, responses)])

    return scorer


def _sample(model, prompts: Sequence[Sequence[int]], n: int, config: GenerationConfig, tokenizer
            ) -> list[list[list[int]]]:
    """n responses (new tokens only) per prompt, grouped by prompt."""
    cfg = replace(config, num_samples=n)
    rows = generate(model, [list(p) for p in prompts], cfg, tokenizer=tokenizer)
    out = []
    for i, p in enumerate(prompts):
        out.append([row[len(p):] for row in rows[i * n:(i + 1) * n]])
    return out


def best_of_n(model, prompts: Sequence[Sequence[int]], n: int, scorer: Scorer, config: GenerationConfig | None = None,
              *, tokenizer=None, **kwargs) -> list[Selection]:
    """The highest-scoring of ``n`` samples for every prompt (ties: the first drawn)."""
    if n < 1:
        raise LmlabError(f"best_of_n: n must be >= 1, got {n}")
    config = config or GenerationConfig(**({"temperature": 1.0} | kwargs))
    groups = _sample(model, prompts, n, config, tokenizer)
    flat_prompts = [list(p) for p, g in zip(prompts, groups) for _ in g]
    flat = [r for g in groups for r in g]
    scores = scorer(flat_prompts, flat).float().reshape(len(prompts), n)
    picks = scores.argmax(-1).tolist()
    return [Selection(g[k], float(s[k]), g, s.tolist()) for g, s, k in zip(groups, scores, picks)]


def rejection_sample(model, prompts: Sequence[Sequence[int]], scorer: Scorer, threshold: float, *,
                     max_samples: int = 16, round_size: int = 4, config: GenerationConfig | None = None,
                     tokenizer=None) -> list[Selection]:
    """Per prompt: sample in rounds until a response scores >= ``threshold`` (accepted) or ``max_samples`` are
    spent (then the best seen). Each round of a prompt uses the next seed, so results are reproducible."""
    if max_samples < 1 or round_size < 1:
        raise LmlabError(f"rejection_sample: max_samples and round_size must be >= 1, got {max_samples}, {round_size}")
    config = config or GenerationConfig(temperature=1.0)
    out: list[Selection | None] = [None] * len(prompts)
    seen: list[tuple[list[list[int]], list[float]]] = [([], []) for _ in prompts]
    pending = list(range(len(prompts)))
    drawn = 0
    while pending and drawn < max_samples:
        k = min(round_size, max_samples - drawn)
        seed = None if config.seed is None else config.seed + drawn
        groups = _sample(model, [prompts[i] for i in pending], k, replace(config, seed=seed), tokenizer)
        flat_prompts = [list(prompts[i]) for i in pending for _ in range(k)]
        scores = scorer(flat_prompts, [r for g in groups for r in g]).float().reshape(len(pending), k)
        still = []
        for row, i in enumerate(pending):
            seen[i][0].extend(groups[row])
            seen[i][1].extend(scores[row].tolist())
            hits = (scores[row] >= threshold).nonzero()
            if len(hits):
                j = int(hits[0])
                out[i] = Selection(groups[row][j], float(scores[row, j]), *seen[i])
            else:
                still.append(i)
        pending, drawn = still, drawn + k
    for i in pending:  # nothing accepted: the best seen
        samples, scores = seen[i]
        j = max(range(len(scores)), key=scores.__getitem__)
        out[i] = Selection(samples[j], scores[j], samples, scores)
    return out  # type: ignore[return-value]
