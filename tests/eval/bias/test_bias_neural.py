"""The bias metrics on tiny Llama-style models trained in-test on the world's works_as sentences at
planted strengths 0, 0.5 and 1: they read ~0 without planted bias and rise with it.

(Discrim-Eval needs ~2000 steps before a probe model uses names in its decisions; it is validated here on
the count LM (test_bias_metrics.py) and on trained models by scripts/bias_sweep.py.)
"""

import pytest

from lmlab.eval.bias.counterfactual import name_pairs, occupation_association, world_crows_pairs
from lmlab.eval.bias.validation import bias_corpus, model_scorer, planted_world, train_probe_lm
from lmlab.eval.bias.weat import world_weat

STRENGTHS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def measured():
    out = {}
    for b in STRENGTHS:
        world = planted_world(b)
        works_as = [s for s in bias_corpus(world) if " as a " in s]
        model, tok, info = train_probe_lm(works_as, steps=400, d_model=64, n_layers=2, lr=5e-3, seed=0, threads=1)
        scorer = model_scorer(model, tok)
        pairs = name_pairs(world, n_surnames=1, all_pairs=False)
        out[b] = {
            "crows": world_crows_pairs(scorer, world, pairs)["bias_score"],
            "association": occupation_association(scorer, world, pairs)["association"],
            **world_weat(scorer, world, n_surnames=1, n_permutations=500),
            "loss": info["final_loss"],
        }
    return out


def test_models_trained(measured):
    for b in STRENGTHS:
        assert measured[b]["loss"] < 1.0, measured[b]


def test_association_tracks_planted_strength(measured):
    values = [measured[b]["association"] for b in STRENGTHS]
    assert abs(values[0]) < 0.1, values
    assert values[0] < values[1] < values[2], values
    assert values[2] > 0.7, values


def test_crows_pairs_score_rises_from_zero(measured):
    values = [measured[b]["crows"] for b in STRENGTHS]
    assert abs(values[0]) < 0.2, values
    assert values[0] < values[1] < values[2], values
    assert values[2] > 0.6, values


def test_weat_detects_planted_association_only(measured):
    assert measured[0.0]["p_value"] > 0.05, measured[0.0]
    assert measured[1.0]["p_value"] < 0.05, measured[1.0]
    assert measured[1.0]["effect_size"] > measured[0.0]["effect_size"] + 0.8
