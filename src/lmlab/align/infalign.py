"""InfAlign-CTRL (Balashankar et al. 2025, "InfAlign: Inference-aware language model alignment",
arXiv:2412.19792): calibrate the reward, then transform it for the decoding procedure that will be used.

1. **Calibrate**: ``C(x, y) = P_{z ~ π_ref(·|x)}[ r(x, y) >= r(x, z) ]``, the quantile of the response's reward
   among reference-policy samples for the same prompt (estimated from ``K`` samples). Under π_ref the
   calibrated reward is uniform on [0, 1] whatever the reward model's scale, which makes the objective robust to
   reward hacking of the scale and lets one transformation serve every prompt.
2. **Transform**: KL-regularised maximisation of ``Φ(C)``; the optimum is the tilted policy
   ``π*(y|x) ∝ π_ref(y|x) exp(Φ(C(x, y)) / β)``. For best-of-N the paper uses exponential transformations
   ``Φ_t(u) = exp(t·u)`` with ``t > 0`` (and ``−exp(t·u)``, ``t < 0``, for worst-of-N jailbreaking); ``Φ = u``
   is "calibrated reward" alone, the paper's strong baseline for the standard (N = 1) win rate.

Because ``C`` is uniform under π_ref, the trade-off between KL(π*‖π_ref) and the best-of-N win rate of π* over
π_ref is a one-dimensional integral for any ``Φ`` and ``β`` (the paper's analytical tool): :func:`tilted_stats`
computes it, and :func:`best_exponent` picks the ``t`` with the highest best-of-N win rate at a KL budget.

At decoding time, :func:`tilted_resample` draws from π* by sampling-importance-resampling of reference samples
(weights ``exp(Φ(C)/β)``); ``lmlab.align.best_of_n`` then applies best-of-N on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError

Transform = Callable[[torch.Tensor], torch.Tensor]


def calibrate(rewards: torch.Tensor, reference_rewards: torch.Tensor) -> torch.Tensor:
    """Calibrated rewards [M] of responses with ``rewards`` [M] against one prompt's reference rewards [K]."""
    if reference_rewards.numel() == 0:
        raise LmlabError("calibrate: no reference rewards for this prompt")
    return (rewards[:, None].float() >= reference_rewards[None, :].float()).float().mean(-1)


def identity_transform() -> Transform:
    return lambda u: u


def exp_transform(t: float) -> Transform:
    """``Φ_t(u) = sign(t) · exp(t·u)``: t > 0 for best-of-N, t < 0 for worst-of-N (the paper's family)."""
    if t == 0:
        raise LmlabError("exp_transform: t must be non-zero (t > 0 for best-of-N, t < 0 for worst-of-N)")
    return lambda u: math.copysign(1.0, t) * torch.exp(t * u)


def log_transform(eps: float = 1e-6) -> Transform:
    """``Φ(u) = log u``: the tilt ``π_ref · u^{1/β}``; kept for comparison with best-of-N's implicit reward."""
    return lambda u: torch.log(u.clamp_min(eps))


@dataclass(frozen=True)
class TiltStats:
    kl: float  # KL(π* || π_ref) in nats
    win_rate: float  # P(best-of-N of π* beats best-of-N of π_ref) under the calibrated reward


def tilted_stats(phi: Transform, beta: float, n: int = 1, grid: int = 4001) -> TiltStats:
    """KL and best-of-``n`` win rate of ``π* ∝ π_ref exp(Φ(C)/β)`` against π_ref (continuous rewards: C ~ U[0,1]
    under π_ref). Win rate: ``∫ u^n d(F(u)^n)``, F the CDF of C under π*."""
    if beta <= 0 or n < 1:
        raise LmlabError(f"tilted_stats: beta must be > 0 and n >= 1, got {beta}, {n}")
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid  # midpoints of [0, 1]
    logw = phi(u).double() / beta
    logp = logw - torch.logsumexp(logw, 0) + math.log(grid)  # log density of C under π*
    p = logp.exp() / grid  # mass per cell
    kl = float((p * logp).sum())
    cdf = p.cumsum(0)
    cdf_n = cdf ** n
    d_cdf_n = torch.diff(torch.cat([torch.zeros(1, dtype=cdf.dtype), cdf_n]))
    win = float((u ** n * d_cdf_n).sum())
    return TiltStats(kl, win)


def beta_for_kl(phi: Transform, kl: float, iters: int = 80) -> float:
    """The β whose tilted policy has KL(π*‖π_ref) = ``kl`` (bisection in log β; KL falls as β grows). The
    bracket widens until it holds the target: Φ's scale varies by orders of magnitude (exp(30·u))."""
    if kl <= 0:
        raise LmlabError(f"beta_for_kl: kl must be > 0, got {kl}")
    lo, hi = 1e-2, 1e2
    for _ in range(40):
        if tilted_stats(phi, hi).kl <= kl:
            break
        hi *= 10
    for _ in range(40):
        if tilted_stats(phi, lo).kl >= kl:
            break
        lo /= 10
    else:
        raise LmlabError(f"beta_for_kl: KL {kl} is beyond what this transformation reaches")
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if tilted_stats(phi, mid).kl > kl:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def best_exponent(n: int, kl: float, ts: Sequence[float] = (0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30)
                  ) -> tuple[float, float]:
    """(t, win rate): the exponential transformation with the highest best-of-``n`` win rate at KL ``kl``."""
    best = None
    for t in ts:
        phi = exp_transform(t)
        try:
            beta = beta_for_kl(phi, kl)
        except LmlabError:
            continue
        win = tilted_stats(phi, beta, n).win_rate
        if best is None or win > best[1]:
            best = (t, win)
    if best is None:
        raise LmlabError(f"best_exponent: no t in {list(ts)} reaches KL {kl}")
    return best


def tilted_resample(calibrated: torch.Tensor, phi: Transform, beta: float, k: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices [k] drawn from reference samples with weights ``exp(Φ(C)/β)`` (sampling-importance-resampling
    of π*); ``calibrated`` [M] are the samples' calibrated rewards."""
    if beta <= 0:
        raise LmlabError(f"tilted_resample: beta must be > 0, got {beta}")
    w = torch.softmax(phi(calibrated.double()) / beta, 0)
    return torch.multinomial(w, k, replacement=True, generator=generator)
