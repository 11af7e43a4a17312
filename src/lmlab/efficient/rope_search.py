"""Searching per-dimension RoPE scaling factors for context extension: DCIS and an evolutionary baseline.

Both search the rot_dim / 2 factors of a ``longrope`` scaling (frequency i divided by factor i past the
original context) to minimise an objective -- long-context perplexity -- and count its evaluations.

- ``dcis_search``: Divide-and-Conquer Incremental Search (Yang, Xu, Xiong 2024, "DCIS: Efficient Length
  Extrapolation of LLMs via Divide-and-Conquer Scaling Factor Search", arXiv:2412.18811). Start from
  position interpolation (every factor = s); for a segment of dimensions, try ``n_increments`` increments
  spread over [-radius, +radius] added to the whole segment, keep the best (lowest perplexity) if it improves;
  then split the segment in two and search each half with half the radius (divide and conquer), the
  high-dimension (low-frequency) half first, as the paper prioritises. Factors need not increase with the
  dimension (the paper's point against LongRoPE's monotonic constraint); only factors below 1 are refused.
  The paper gives the procedure, not every constant: ``n_increments=4``, ``min_segment=1`` and the initial
  radius s / 2 are ours.
- ``evolutionary_search``: LongRoPE-style (Ding et al. 2024, arXiv:2402.13753, Sec. 3.2): a population seeded
  with PI, NTK-like and YaRN-like factor lists plus mutations of them; each generation keeps the best
  ``parents``, and fills the population with mutations (multiplicative noise) and crossovers, under
  LongRoPE's constraint that factors do not decrease with the dimension. (The paper also searches the
  number of unscaled initial tokens; not here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmlab.errors import LmlabError

Objective = Callable[[tuple[float, ...]], float]


@dataclass
class SearchResult:
    factors: tuple[float, ...]
    value: float  # the objective at ``factors``
    evaluations: int
    history: list[tuple[int, float]] = field(default_factory=list)  # (evaluations so far, best value)


class _Counter:
    """Wraps the objective: counts evaluations, caches repeats (a repeated candidate costs nothing)."""

    def __init__(self, objective: Objective) -> None:
        self.objective, self.cache, self.best = objective, {}, math.inf
        self.history: list[tuple[int, float]] = []

    def __call__(self, factors: list[float]) -> float:
        key = tuple(round(f, 6) for f in factors)
        if key not in self.cache:
            self.cache[key] = float(self.objective(key))
            self.best = min(self.best, self.cache[key])
            self.history.append((len(self.cache), self.best))
        return self.cache[key]


def _check(n_factors: int, scale: float) -> None:
    if not (isinstance(n_factors, int) and n_factors >= 1):
        raise LmlabError(f"rope search: n_factors must be a positive integer, got {n_factors!r}")
    if not scale > 1:
        raise LmlabError(f"rope search: the extension ratio must exceed 1, got {scale!r}")


def dcis_search(objective: Objective, n_factors: int, scale: float, n_increments: int = 4,
                min_segment: int = 1, max_evaluations: int | None = None) -> SearchResult:
    """DCIS over ``n_factors`` per-dimension factors for a context ``scale`` times the original."""
    _check(n_factors, scale)
    f = _Counter(objective)
    factors = [float(scale)] * n_factors
    best = f(factors)
    # segments as (start, end, radius), depth first, high dimensions first
    stack = [(0, n_factors, scale / 2)]
    while stack:
        start, end, radius = stack.pop()
        steps = torch.linspace(-radius, radius, n_increments + 1).tolist()
        for inc in (s for s in steps if abs(s) > 1e-12):
            if max_evaluations is not None and len(f.cache) >= max_evaluations:
                stack = []
                break
            cand = factors[:start] + [x + inc for x in factors[start:end]] + factors[end:]
            if min(cand[start:end]) < 1.0:
                continue  # an invalid increment: a factor below 1 would extrapolate, skip without evaluating
            value = f(cand)
            if value < best:
                best, factors = value, cand
        if end - start >= 2 * min_segment:
            mid = (start + end) // 2
            stack.append((start, mid, radius / 2))  # low dimensions: popped second
            stack.append((mid, end, radius / 2))  # high dimensions (low frequencies): popped first
    return SearchResult(tuple(factors), best, len(f.cache), f.history)


def seed_factors(n_factors: int, scale: float) -> list[list[float]]:
    """PI (all = s), NTK-like (s ** (i / (n - 1))) and a YaRN-like ramp (1 for the first quarter, s for the
    last, linear between): the starting points LongRoPE's search draws its first population from."""
    n = max(n_factors - 1, 1)
    ntk = [scale ** (i / n) for i in range(n_factors)]
    lo, hi = n_factors // 4, (3 * n_factors) // 4
    ramp = [1.0 if i < lo else scale if i >= hi else 1.0 + (scale - 1) * (i - lo) / max(hi - lo, 1)
            for i in range(n_factors)]
    return [[float(scale)] * n_factors, ntk, ramp]


def _monotonic(x: list[float], scale_max: float) -> list[float]:
    out, low = [], 1.0
    for v in x:
        low = min(max(v, low), scale_max)
        out.append(low)
    return out


def evolutionary_search(objective: Objective, n_factors: int, scale: float, population: int = 16,
                        parents: int = 4, generations: int = 6, mutation: float = 0.1, seed: int = 0,
                        max_evaluations: int | None = None) -> SearchResult:
    """LongRoPE-style evolutionary search with the non-decreasing constraint."""
    _check(n_factors, scale)
    g = torch.Generator().manual_seed(seed)
    f = _Counter(objective)
    cap = 2 * scale  # factors beyond twice the ratio only extrapolate the other way

    def mutate(x: list[float]) -> list[float]:
        noise = torch.exp(torch.randn(n_factors, generator=g) * mutation).tolist()
        return _monotonic([v * m for v, m in zip(x, noise)], cap)

    pop = [_monotonic(s, cap) for s in seed_factors(n_factors, scale)]
    while len(pop) < population:
        pop.append(mutate(pop[len(pop) % 3]))
    for _ in range(generations):
        scored = []
        for cand in pop:
            if max_evaluations is not None and len(f.cache) >= max_evaluations and tuple(
                    round(v, 6) for v in cand) not in f.cache:
                continue
            scored.append((f(cand), cand))
        scored.sort(key=lambda t: t[0])
        elite = [c for _, c in scored[:parents]]
        if max_evaluations is not None and len(f.cache) >= max_evaluations:
            break
        children = []
        while len(elite) + len(children) < population:
            i, j = torch.randint(0, len(elite), (2,), generator=g).tolist()
            if torch.rand(1, generator=g).item() < 0.5 and i != j:  # crossover: one parent's dims per position
                pick = torch.rand(n_factors, generator=g) < 0.5
                child = _monotonic([a if p else b for a, b, p in zip(elite[i], elite[j], pick.tolist())], cap)
            else:
                child = mutate(elite[i])
            children.append(child)
        pop = elite + children
    best_key = min(f.cache, key=f.cache.get)
    return SearchResult(best_key, f.cache[best_key], len(f.cache), f.history)


def longrope_params(factors: tuple[float, ...], original: int, scale: float | None = None,
                    attention_factor: float | None = None) -> dict:
    """``rope_scaling_params`` for a searched factor list: the factors past ``original``, none within it.
    ``scale`` (the extension ratio) sets LongRoPE's attention factor sqrt(1 + ln s / ln original)."""
    params = {"short_factor": tuple(1.0 for _ in factors), "long_factor": tuple(float(x) for x in factors),
              "original_max_position_embeddings": original}
    if scale is not None:
        params["factor"] = float(scale)
    if attention_factor is not None:
        params["attention_factor"] = attention_factor
    return params
