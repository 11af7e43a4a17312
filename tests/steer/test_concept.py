"""Concept directions (PCA over paired differences) on the reference model and the world's name-gender pairs."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.core.generate import generate
from lmlab.reference import load_reference
from lmlab.steer import concept_direction
from lmlab.steer.concept import mean_activations


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def pairs(ref):
    cp = ref.world.counterfactual_pairs()
    return [c["female_text"] for c in cp], [c["male_text"] for c in cp]


def test_direction_is_oriented_first_component(ref, pairs):
    m, tok = ref.model, ref.tokenizer
    fem, mal = pairs
    d = concept_direction(m, tok, fem[:40], mal[:40], layer=2)
    diff = mean_activations(m, tok, fem[:40], d.hook) - mean_activations(m, tok, mal[:40], d.hook)  # [40, d]
    evals, evecs = torch.linalg.eigh(diff.T @ diff)  # uncentred second moment: its top eigenvector is the PC
    top = evecs[:, -1]
    assert abs(float(top @ d.direction)) == pytest.approx(1.0, abs=1e-4)
    assert float(d.direction.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float((diff @ d.direction).mean()) > 0  # oriented to the positive texts
    assert d.scale == pytest.approx(float((diff @ d.direction).mean()), rel=1e-5)
    assert d.explained == pytest.approx(float(evals[-1] / evals.sum()), rel=1e-3)


def test_direction_separates_held_out_pairs(ref, pairs):
    """The reference model knows each first name's gender from its biographies: the axis generalises."""
    m, tok = ref.model, ref.tokenizer
    fem, mal = pairs
    n = len(fem) // 2
    d = concept_direction(m, tok, fem[:n], mal[:n], layer=2)
    acc = float((d.score(m, tok, fem[n:]) > d.score(m, tok, mal[n:])).float().mean())
    assert acc >= 0.75  # measured 0.82 on 56 held-out pairs (chance 0.5)


def test_steering_along_direction_moves_score_and_zero_is_exact(ref, pairs):
    m, tok = ref.model, ref.tokenizer
    fem, mal = pairs
    d = concept_direction(m, tok, fem[:40], mal[:40], layer=2)
    vec = d.steering_vector()
    before = d.score(m, tok, mal[40:50])
    with vec.apply(m, coeff=3.0, positions="all"):
        after = d.score(m, tok, mal[40:50])
    torch.testing.assert_close(after - before, torch.full_like(before, 3.0 * d.scale), rtol=1e-3, atol=1e-4)
    prompts = [tok.encode(p) for p in ("Sakella works as a", "Bevek was born in")]
    base = generate(m, prompts, max_new_tokens=6)
    with vec.apply(m, coeff=0.0, positions="all"):
        assert generate(m, prompts, max_new_tokens=6) == base


def test_bad_input(ref):
    with pytest.raises(LmlabError, match="as many positive as negative"):
        concept_direction(ref.model, ref.tokenizer, ["a"], ["b", "c"], layer=1)
    with pytest.raises(LmlabError, match="layer must be in"):
        concept_direction(ref.model, ref.tokenizer, ["a"], ["b"], layer=9)
