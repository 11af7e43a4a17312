"""Best-of-N / rejection sampling (engine-backed) and InfAlign's calibration, transformations and analytic tool."""

from __future__ import annotations

import math

import pytest
import torch

import lmlab
from lmlab.align.best_of_n import best_of_n, rejection_sample, text_scorer
from lmlab.align.infalign import (best_exponent, beta_for_kl, calibrate, exp_transform, identity_transform,
                                  tilted_resample, tilted_stats)
from lmlab.core.generate import GenerationConfig
from lmlab.errors import LmlabError
from lmlab.reference import load_reference


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def _prompts(ref):
    tok = ref.tokenizer
    bos = [tok.bos_id]
    return [bos + tok.encode("Zarek Vell was born in"), bos + tok.encode("The capital of")]


def test_best_of_one_is_plain_sampling(ref):
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=7)
    prompts = _prompts(ref)
    picked = best_of_n(ref.model, prompts, 1, lambda p, r: torch.zeros(len(r)), cfg)
    plain = lmlab.generate(ref.model, prompts, cfg)
    assert [s.response for s in picked] == [row[len(p):] for row, p in zip(plain, prompts)]


def test_best_of_n_keeps_the_top_score_and_prefills_once(ref):
    prompts = _prompts(ref)
    prefills = []
    handle = ref.model.register_forward_pre_hook(
        lambda m, args, kwargs: prefills.append(1) if args and args[0] is not None and args[0].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        length = text_scorer(ref.tokenizer, lambda p, r: len(r))
        picked = best_of_n(ref.model, prompts, 6, length, GenerationConfig(max_new_tokens=10, temperature=1.0, seed=1),
                           tokenizer=ref.tokenizer)
    finally:
        handle.remove()
    assert len(prefills) == 1  # both prompts in one prefill, forked 6 ways
    for s in picked:
        assert len(s.samples) == 6 and s.score == max(s.scores)
        assert len(set(map(tuple, s.samples))) > 1  # really different samples


def test_rejection_sampling_accepts_early_and_falls_back_to_the_best(ref):
    prompts = _prompts(ref)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3)
    always = rejection_sample(ref.model, prompts, lambda p, r: torch.ones(len(r)), 0.5, max_samples=8,
                              round_size=2, config=cfg)
    assert all(len(s.samples) == 2 for s in always)  # accepted in the first round
    never = rejection_sample(ref.model, prompts, lambda p, r: torch.arange(len(r), dtype=torch.float), 1e9,
                             max_samples=6, round_size=4, config=cfg)
    assert all(len(s.samples) == 6 and s.score == max(s.scores) for s in never)


def test_calibrated_reward_is_uniform_under_the_reference():
    ref_rewards = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 5 + 3
    c = calibrate(ref_rewards, ref_rewards)
    assert torch.allclose(c.sort().values, torch.arange(1, 1001) / 1000)
    # invariant to any increasing rescaling of the reward model
    assert torch.equal(calibrate(ref_rewards[:10] * 7 - 2, ref_rewards * 7 - 2), c[:10])


def test_tilted_stats_match_the_closed_form():
    """Identity transform: density ∝ exp(u/β), so the standard win rate is E[u] in closed form."""
    beta = 0.25
    a = 1 / beta
    mean_u = (math.exp(a) * (a - 1) + 1) / (a * (math.exp(a) - 1))
    kl = a * mean_u - math.log((math.exp(a) - 1) / a)
    s = tilted_stats(identity_transform(), beta, n=1)
    assert abs(s.win_rate - mean_u) < 1e-6 and abs(s.kl - kl) < 1e-6
    flat = tilted_stats(identity_transform(), 1e6, n=4)
    assert flat.kl < 1e-9 and abs(flat.win_rate - 0.5) < 1e-4


def test_exponential_transform_beats_calibration_alone_for_best_of_n():
    """The paper's claim, analytically: at the same KL, a tuned exp transform wins more best-of-4 comparisons."""
    kl = 1.0
    base = tilted_stats(identity_transform(), beta_for_kl(identity_transform(), kl), n=4).win_rate
    t, win = best_exponent(4, kl)
    assert t > 0 and win > base + 0.005
    assert abs(tilted_stats(exp_transform(t), beta_for_kl(exp_transform(t), kl)).kl - kl) < 1e-3


def test_tilted_resample_limits():
    c = torch.tensor([0.1, 0.9, 0.5])
    g = torch.Generator().manual_seed(0)
    assert set(tilted_resample(c, identity_transform(), 1e-4, k=50, generator=g).tolist()) == {1}
    spread = tilted_resample(c, identity_transform(), 1e4, k=300, generator=g)
    assert len(set(spread.tolist())) == 3
    with pytest.raises(LmlabError):
        exp_transform(0.0)
