"""mPLM-Sim: pooling that ignores padding, the similarity matrix's invariants, Spearman equal to scipy's, the
language family's known distances, source selection and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import word_tokenizer

from lmlab.adapt.language_family import extended_languages, parallel_corpus, tree_distance
from lmlab.adapt.mplm_sim import (
    language_similarity,
    rank_correlation,
    select_source,
    sentence_representations,
    spearman,
)
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError


@pytest.fixture(scope="module")
def tiny():
    config = ModelConfig(model_type="llama", vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_mlp=64,
                         max_seq_len=64, mlp_type="gated", activation="silu", pad_token_id=0)
    return Transformer(config).init_weights(seed=0).eval(), word_tokenizer()


SENTS = ["w5 w9 w33", "w7 w8 w9 w10 w11 w12", "w40", "w2 w3 w4 w5"]


def test_pooling_is_the_token_mean_and_ignores_padding(tiny):
    model, tok = tiny
    batched = sentence_representations(model, tok, SENTS, batch_size=4)  # uneven lengths: padded rows
    assert batched.shape == (3, 4, 32)
    for i, s in enumerate(SENTS):
        ids = torch.tensor([tok.encode(s)])
        _, acts = model.run_with_cache(ids, names=["embed", "blocks.0.resid_post", "blocks.1.resid_post"])
        alone = torch.stack([acts[n][0].mean(0) for n in ["embed", "blocks.0.resid_post", "blocks.1.resid_post"]])
        torch.testing.assert_close(batched[:, i], alone, rtol=1e-5, atol=1e-6)


def test_similarity_matrix_invariants(tiny):
    model, tok = tiny
    shuffled = SENTS[1:] + SENTS[:1]  # same sentences, not parallel any more
    sim = language_similarity(model, tok, {"x": SENTS, "copy": list(SENTS), "shuffled": shuffled})
    m = sim.matrix  # [3 layers, 3, 3]
    assert m.shape == (3, 3, 3)
    np.testing.assert_allclose(m, m.transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(m[:, 0, 1], 1.0, atol=1e-5)  # an identical corpus is identical at every layer
    np.testing.assert_allclose(np.diagonal(m, axis1=1, axis2=2), 1.0, atol=1e-5)
    assert (m[:, 0, 2] < 0.99).all()  # misaligned "translations" are less similar
    # layer 0 by hand: the cosine of mean embeddings, averaged over the 4 pairs
    emb = model.embed.weight.detach()
    mean = [emb[tok.encode(s)].mean(0) for s in SENTS]
    mean_sh = [emb[tok.encode(s)].mean(0) for s in shuffled]
    by_hand = np.mean([torch.cosine_similarity(a, b, dim=0).item() for a, b in zip(mean, mean_sh)])
    assert sim.similarity("x", "shuffled", 0) == pytest.approx(by_hand, abs=1e-5)


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 5, 21).astype(float), rng.normal(size=21)
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    d = np.array([[0, 1, 4], [1, 0, 3], [4, 3, 0]], dtype=float)
    assert rank_correlation(-d, -d) == pytest.approx(1.0)
    assert rank_correlation(d, -d) == pytest.approx(-1.0)


def test_language_family_distances_and_sentences():
    from lmlab.data.world import build_world

    world = build_world()
    langs = extended_languages(world)
    assert tree_distance(langs, "base", "lang_b") == 4  # relexify, sound shift, (SOV + Cyrillic)
    assert tree_distance(langs, "lang_a", "lang_b") == 3 == len(world.languages["lang_b"].derivation)
    assert tree_distance(langs, "base_sov", "lang_a_sov") == 3
    assert tree_distance(langs, "lang_a_shift", "lang_a_shift") == 0
    corpus = parallel_corpus(world, langs)
    records = world.parallel_sentences()
    for code in ("base", "lang_a", "lang_b"):  # the world's own languages are unchanged
        assert corpus[code] == [r["sentences"][code] for r in records]
    assert corpus["base_sov"][0].split()[-1] != corpus["base"][0].split()[-1]
    with pytest.raises(LmlabError, match="unknown language 'xx'"):
        tree_distance(langs, "base", "xx")


def test_select_source_and_errors(tiny):
    sim = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.5], [0.9, 0.5, 1.0]])
    assert select_source(sim, ["a", "b", "c"], "a", ["a", "b", "c"]) == "c"
    assert select_source(sim, ["a", "b", "c"], "b", ["a", "c"]) == "c"
    with pytest.raises(LmlabError, match="candidates"):
        select_source(sim, ["a", "b", "c"], "a", ["a"])
    model, tok = tiny
    with pytest.raises(LmlabError, match="parallel"):
        language_similarity(model, tok, {"x": SENTS, "y": SENTS[:2]})
    with pytest.raises(LmlabError, match="at least 2 languages"):
        language_similarity(model, tok, {"x": SENTS})
