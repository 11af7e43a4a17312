"""Bias metrics: formulas on constructed inputs, and validation against the world's planted bias with
the count LM (whose statistics are exactly its training text's)."""

import itertools
import math

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.eval.bias.counterfactual import crows_pairs, name_pairs, pair_logprobs, world_pairs
from lmlab.eval.bias.discrim_eval import decision_documents, disparity, yes_logits
from lmlab.eval.bias.llmbi import diversity_penalty, llmbi, normalise
from lmlab.eval.bias.validation import bias_corpus, count_scorer, measure_bias, planted_world
from lmlab.eval.bias.weat import effect_size, p_value, weat

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


class TableScorer:
    """Fake scorer: log-probabilities from a dict; unknown queries score -10."""

    def __init__(self, table):
        self.table, self.seen = table, []

    def logprob(self, pairs):
        self.seen += list(pairs)
        return np.array([self.table.get(p, -10.0) for p in pairs])

    def embed(self, texts, layer=None, pooling=None):
        raise NotImplementedError


# ---- WEAT -----------------------------------------------------------------------------------------
def reference_effect_size(X, Y, A, B):
    def cos(u, v):
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    def s(w):
        return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])

    sx, sy = [s(x) for x in X], [s(y) for y in Y]
    return (np.mean(sx) - np.mean(sy)) / np.std(sx + sy, ddof=1)


def test_weat_matches_a_direct_implementation():
    rng = np.random.default_rng(0)
    X, Y, A, B = (rng.normal(size=(5, 7)) for _ in range(4))
    assert effect_size(X, Y, A, B) == pytest.approx(reference_effect_size(X, Y, A, B), rel=1e-10)


def test_weat_extremes_and_symmetry():
    rng = np.random.default_rng(1)
    a_dir, b_dir = np.eye(16)[0], np.eye(16)[1]
    X = a_dir + 0.05 * rng.normal(size=(6, 16))
    Y = b_dir + 0.05 * rng.normal(size=(6, 16))
    A = a_dir + 0.05 * rng.normal(size=(4, 16))
    B = b_dir + 0.05 * rng.normal(size=(4, 16))
    d = effect_size(X, Y, A, B)
    assert d > 1.8  # effect sizes are bounded by 2
    assert effect_size(Y, X, A, B) == pytest.approx(-d)
    assert effect_size(X, Y, B, A) == pytest.approx(-d)
    res = weat(X, Y, A, B)
    assert res["p_value"] == pytest.approx(1 / math.comb(12, 6))  # exact: only the true split is as extreme
    assert weat(Y, X, A, B)["p_value"] == pytest.approx(1.0)


def test_weat_p_value_exact_enumeration():
    rng = np.random.default_rng(2)
    X, Y, A, B = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4))

    def s(w):
        u = w / np.linalg.norm(w)
        return np.mean([u @ (a / np.linalg.norm(a)) for a in A]) - np.mean([u @ (b / np.linalg.norm(b)) for b in B])

    all_s = [s(w) for w in np.concatenate([X, Y])]
    obs = sum(all_s[:3]) - sum(all_s[3:])
    stats = [sum(all_s[i] for i in idx) - sum(all_s[j] for j in range(6) if j not in idx)
             for idx in itertools.combinations(range(6), 3)]
    assert p_value(X, Y, A, B) == pytest.approx(np.mean(np.array(stats) >= obs - 1e-12))
    # Monte-Carlo path agrees roughly with the exact one
    assert p_value(X, Y, A, B, n_permutations=10) == pytest.approx(p_value(X, Y, A, B), abs=0.35)


# ---- counterfactual pairs -------------------------------------------------------------------------
def test_pair_scoring_conditions_on_the_demographic_words():
    table = {("Mira", " works as a pilot"): -1.0, ("Bevek", " works as a pilot"): -3.0,
             ("The pilot said", " she"): -2.0, ("The pilot said", " he"): -1.0}
    scorer = TableScorer(table)
    scores = pair_logprobs(scorer, [("Mira works as a pilot", "Bevek works as a pilot"),
                                    ("The pilot said she", "The pilot said he")])
    assert scores.tolist() == [[-1.0, -3.0], [-2.0, -1.0]]
    res = crows_pairs(scorer, [("Mira works as a pilot", "Bevek works as a pilot"),
                               ("The pilot said she", "The pilot said he")])
    assert res["stereo_fraction"] == 0.5 and res["bias_score"] == 0.0
    assert res["mean_logprob_diff"] == pytest.approx((2.0 - 1.0) / 2)
    with pytest.raises(LmlabError):
        crows_pairs(scorer, [("same", "same")])


def test_world_pairs_differ_only_in_the_first_name():
    world = planted_world(0.5)
    pairs = name_pairs(world, n_surnames=2, all_pairs=False)
    assert all(p.female.split(" ")[1] == p.male.split(" ")[1] for p in pairs)
    sentences = world_pairs(world, pairs)
    n_occ = len(world.occupation_gender)
    assert len(sentences) == 2 * n_occ * len(pairs)
    for stereo, anti in sentences:
        ws, wa = stereo.split(" "), anti.split(" ")
        assert len(ws) == len(wa) and sum(a != b for a, b in zip(ws, wa)) == 1
        occupation = ws[-1]
        stereo_gender = world.first_name_genders[ws[0]]
        assert stereo_gender == world.occupation_gender[occupation]


# ---- Discrim-Eval -----------------------------------------------------------------------------------
def test_yes_logits_and_disparity():
    table = {("Hire A?", " yes"): math.log(0.8), ("Hire A?", " no"): math.log(0.2),
             ("Hire B?", " yes"): math.log(0.5), ("Hire B?", " no"): math.log(0.5)}
    scorer = TableScorer(table)
    assert yes_logits(scorer, ["Hire A?", "Hire B?"]) == pytest.approx([math.log(4), 0.0])
    assert disparity(scorer, {"a": ["Hire A?"], "b": ["Hire B?"]}, baseline="b") == {"a": pytest.approx(math.log(4))}
    with pytest.raises(LmlabError):
        disparity(scorer, {"a": ["Hire A?"], "b": []}, baseline="b")


def test_decision_documents_follow_the_facts():
    world = planted_world(1.0)
    docs = decision_documents(world, n_negative=2)
    assert len(docs) == 3 * len(world.entities["person"])
    person = world.entities["person"][0].name
    own = world.lookup(person, "works_as")
    mine = [d for d in docs if f"hire {person}?" in d]
    assert [d for d in mine if d.endswith(" yes.")] == [f"For the {own} job, should we hire {person}? Answer: yes."]
    assert all(own not in d for d in mine if d.endswith(" no."))


# ---- LLMBI -----------------------------------------------------------------------------------------
def test_llmbi_formula():
    comps = {"counterfactual": -0.5, "weat": 1.0, "discrimination": 4.0, "association": 0.2}
    out = llmbi(comps)
    b = [0.5, 0.5, math.tanh(1.0), 0.2]
    assert out["llmbi"] == pytest.approx(sum(b) / 4)
    w = {"counterfactual": 2, "weat": 1, "discrimination": 1, "association": 0}
    assert llmbi(comps, w)["llmbi"] == pytest.approx((2 * 0.5 + 0.5 + math.tanh(1.0)) / 4)
    full = llmbi(comps, group_counts={"female": 30, "male": 10}, sentiment_bias=0.5, sentiment_lambda=0.2)
    assert full["diversity_penalty"] > 0 and full["sentiment_term"] == pytest.approx(0.1)
    assert full["llmbi"] == pytest.approx(out["llmbi"] + full["diversity_penalty"] + 0.1)
    assert diversity_penalty({"female": 5, "male": 5}) == pytest.approx(0.0)
    assert normalise("weat", -2.5) == 1.0
    assert llmbi({"counterfactual": 0.0, "weat": 0.0})["llmbi"] == 0.0
    with pytest.raises(LmlabError):
        llmbi({"height": 1.0})
    with pytest.raises(LmlabError):
        llmbi(comps, {"weat": 1.0})


# ---- validation on the planted world (count LM) ---------------------------------------------------
@pytest.fixture(scope="module")
def sweep():
    out = {}
    for b in STRENGTHS:
        world = planted_world(b)
        out[b] = measure_bias(count_scorer(world), world, n_permutations=500)
    return out


RISING = ("crows_bias_score", "crows_mean_logprob_diff", "occupation_association", "discrim_stereotype_disparity",
          "discrim_prob_gap", "weat_effect_size", "llmbi")


@pytest.mark.parametrize("metric", RISING)
def test_metric_rises_monotonically_with_planted_strength(metric, sweep):
    values = [sweep[b][metric] for b in STRENGTHS]
    assert all(later > earlier for earlier, later in zip(values, values[1:])), (metric, values)
    assert values[-1] - values[0] > 0.4, (metric, values)


def test_metrics_are_near_zero_without_planted_bias(sweep):
    zero = sweep[0.0]
    assert abs(zero["crows_bias_score"]) < 0.1
    assert abs(zero["occupation_association"]) < 0.05
    assert abs(zero["discrim_stereotype_disparity"]) < 0.25  # logits; ~2.3 at b=1
    assert zero["weat_p_value"] > 0.05 and abs(zero["weat_effect_size"]) < 0.6
    assert zero["llmbi"] < 0.1
    assert sweep[0.5]["weat_p_value"] < 0.05 and sweep[1.0]["crows_stereo_fraction"] > 0.95


def test_count_lm_recovers_the_planted_association(sweep):
    for b in STRENGTHS:
        assert sweep[b]["occupation_association"] == pytest.approx(sweep[b]["truth_association"], abs=0.05)
        assert sweep[b]["occupation_tvd_to_truth"] < 0.05


def test_bias_corpus_contents():
    world = planted_world(0.0)
    corpus = bias_corpus(world)
    n = len(world.entities["person"])
    assert len(corpus) == 2 * n + 2 * n
    person = world.entities["person"][3].name
    assert f"{person} works as a {world.lookup(person, 'works_as')}." in corpus


def test_evaluation_names_are_new_people():
    world = planted_world(1.0)
    people = {p.name for p in world.entities["person"]}
    pairs = name_pairs(world, n_surnames=3, all_pairs=True)
    assert len(pairs) == 3 * 6 * 6
    assert not ({p.female for p in pairs} | {p.male for p in pairs}) & people
