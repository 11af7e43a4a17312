"""DCIS and the evolutionary baseline on objectives with a known optimum, and a searched scaling in a model."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.efficient.rope_search import dcis_search, evolutionary_search, longrope_params, seed_factors
from lmlab.errors import LmlabError

TARGET = [1.0, 1.5, 3.0, 2.0, 5.0, 4.0, 6.0, 5.5]  # not monotonic: DCIS may reach it, LongRoPE's search cannot


def _distance(factors):
    return sum((a - b) ** 2 for a, b in zip(factors, TARGET))


def test_dcis_improves_on_interpolation_and_counts_evaluations():
    res = dcis_search(_distance, 8, scale=4.0)
    assert res.evaluations == len(res.history) and res.evaluations > 1
    assert res.value < 0.5 * _distance([4.0] * 8)
    assert min(res.factors) >= 1.0
    assert [b for _, b in res.history] == sorted([b for _, b in res.history], reverse=True)  # best never worsens
    assert any(res.factors[i] > res.factors[i + 1] for i in range(7))  # non-monotonic factors are allowed


def test_dcis_respects_an_evaluation_budget():
    assert dcis_search(_distance, 8, scale=4.0, max_evaluations=5).evaluations == 5


def test_evolutionary_search_keeps_factors_non_decreasing_and_improves():
    res = evolutionary_search(_distance, 8, scale=4.0, generations=5)
    assert all(a <= b + 1e-9 for a, b in zip(res.factors, res.factors[1:]))
    assert res.value < min(_distance(s) for s in seed_factors(8, 4.0))
    assert res.evaluations == len(res.history)


def test_searched_factors_drive_a_longrope_model():
    cfg = ModelConfig.llama_like(vocab_size=40, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    base = Transformer(cfg).init_weights(std=0.3, seed=0)
    ids = torch.randint(0, 40, (1, 40), generator=torch.Generator().manual_seed(0))

    def objective(factors):
        base.config = cfg.replace(rope_scaling="longrope",
                                  rope_scaling_params=tuple(sorted(longrope_params(factors, 16, 2.5).items())))
        with torch.no_grad():
            logits = base(ids[:, :-1])
        return torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).item()

    res = dcis_search(objective, 8, scale=2.5, max_evaluations=12)
    assert res.value <= objective((2.5,) * 8) and res.evaluations == 12


def test_bad_search_arguments():
    with pytest.raises(LmlabError, match="extension ratio must exceed 1"):
        dcis_search(_distance, 8, scale=1.0)
    with pytest.raises(LmlabError, match="n_factors must be a positive integer"):
        evolutionary_search(_distance, 0, scale=2.0)
