"""Unlearning (Who's Harry Potter, gradient ascent) and the extraction attacks on tiny models: the logit lens at
the last layer is the model's own distribution, anchored-term alignment, the generic-label formula, and that
neither method changes the model it is given."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.edit import attacks
from lmlab.edit.unlearn import (GradientAscentConfig, WhpConfig, aligned_pair, generic_labels, gradient_ascent,
                                whp_unlearn)
from lmlab.errors import LmlabError

TEXTS = ["Ana Vell was born in Mirova.", "Bo Trask was born in Kelda.", "Mirova is a city in Ostria.",
         "Kelda is a city in Brunia.", "Cy Dorn lives in Mirova.", "The capital of Ostria is Mirova."] * 8
FORGET = ["Ana Vell was born in Mirova.", "Mirova is a city in Ostria.", "Cy Dorn lives in Mirova."]
ANCHORS = {"Mirova": "Kelda", "Ostria": "Brunia"}


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    return Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=3, n_heads=4,
                                              max_seq_len=64)).init_weights(std=0.3, seed=0).float()


def test_logit_lens_last_layer_is_the_model_and_candidates_respect_the_budget(model, tok):
    prompts = ["Ana Vell was born in", "Mirova is a city", "The capital of Ostria is"]  # uneven lengths
    lp = attacks.layer_logprobs(model, tok, prompts)  # [L, N, vocab]
    assert lp.shape[:2] == (3, 3)
    for i, p in enumerate(prompts):
        ids = torch.tensor([[tok.bos_id] + tok.encode(p)])
        with torch.no_grad():
            want = F.log_softmax(model(ids)[0, -1].float(), -1)
        torch.testing.assert_close(lp[-1, i], want, rtol=0, atol=1e-5)
    cands = attacks.head_projection_candidates(model, tok, prompts, k=4)
    assert all(4 <= len(c) <= 4 * 3 for c in cands)
    assert all(set(lp[-1, i].topk(4).indices.tolist()) <= c for i, c in enumerate(cands))
    delta = attacks.probability_delta_candidates(model, tok, prompts, k=2)
    assert all(len(c) <= 2 * 2 for c in delta)
    para = attacks.paraphrase_candidates(model, tok, [prompts[:2], prompts[2:]], k=3)
    assert para[1] == set(lp[-1, 2].topk(3).indices.tolist())


def test_success_rate_by_hand(tok):
    a, b = tok.encode(" Mirova")[0], tok.encode(" Kelda")[0]
    assert attacks.success_rate([{a, 5}, {5}], [" Mirova", " Mirova"], tok) == 0.5
    assert attacks.success_rate([{b}], [" Kelda"], tok) == 1.0


def test_anchored_terms_are_aligned_token_by_token(tok):
    orig, trans, where = aligned_pair(tok, "Cy Dorn lives in Mirova, Ostria.", ANCHORS)
    assert orig == [tok.bos_id] + tok.encode("Cy Dorn lives in Mirova, Ostria.")
    assert trans == [tok.bos_id] + tok.encode("Cy Dorn lives in Kelda, Brunia.")
    assert len(where) == len(orig) - 1
    for t, w in enumerate(where):  # the token predicted at t (orig[t+1]) corresponds to trans[w+1]
        if w >= 0:
            o, tr = tok.decode([orig[t + 1]]), tok.decode([trans[w + 1]])
            assert o == tr or any(g.startswith(tr.strip()) for g in ANCHORS.values())
    mirova = tok.encode(" Mirova")
    if len(mirova) > 1:  # later tokens of an anchored term get no label
        assert -1 in where


def test_generic_labels_follow_the_formula(model, tok):
    boost = tok.encode(" Mirova")[0]

    def reinforced(ids):  # the baseline, with " Mirova" raised by 100 everywhere
        out = model(ids).clone()
        out[..., boost] += 100.0
        return out

    ids, mask, labels = generic_labels(model, reinforced, tok, FORGET, ANCHORS, alpha=5.0)
    valid = labels != -100
    assert valid.sum() > 0 and not (labels[valid] == boost).any()  # the reinforced token is never the label
    for b, text in enumerate(FORGET):  # each label is argmax(v_base(translated) - alpha ReLU(v_reinf(orig) - v_base))
        orig, trans, where = aligned_pair(tok, text, ANCHORS)
        with torch.no_grad():
            v_base, v_reinf = model(torch.tensor([trans]))[0], reinforced(torch.tensor([orig]))[0]
        for t, w in enumerate(where):
            if w >= 0:
                want = (v_base[w] - 5.0 * torch.relu(v_reinf[t] - v_base[w])).argmax()
                assert int(labels[b, t]) == int(want)
            else:
                assert int(labels[b, t]) == -100


def test_unlearning_returns_new_models_and_moves_the_forget_loss(model, tok):
    before = {n: p.clone() for n, p in model.state_dict().items()}
    ids = torch.tensor([[tok.bos_id] + tok.encode(FORGET[0])])

    def loss(m):
        with torch.no_grad():
            return float(F.cross_entropy(m(ids)[0, :-1].float(), ids[0, 1:]))

    ga, log = gradient_ascent(model, tok, FORGET, GradientAscentConfig(steps=5, lr=1e-2))
    assert loss(ga) > loss(model) + 0.5 and len(log["forget_loss"]) == 5
    whp, log = whp_unlearn(model, tok, FORGET, ANCHORS, WhpConfig(reinforce_steps=3, finetune_steps=5))
    assert 0 < log["labels_changed"] <= 1 and log["n_labels"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in whp.state_dict().items())
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # the input is untouched


@pytest.mark.parametrize("call, fragment", [
    (lambda m, t: gradient_ascent(m, t, []), "forget_texts must be a non-empty list"),
    (lambda m, t: whp_unlearn(m, t, FORGET, {}), "anchors must be a non-empty"),
    (lambda m, t: whp_unlearn(m, t, ["", "x"], ANCHORS), "forget_texts must be"),
])
def test_unlearning_errors_are_one_line(model, tok, call, fragment):
    with pytest.raises(LmlabError) as err:
        call(model, tok)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_country_slice_on_the_reference_world():
    from lmlab.data.world import build_world
    from lmlab.edit.world_slice import country_slice

    world = build_world()
    s = country_slice(world)
    cities = {f.subject for f in world.facts if f.relation == "city_in" and f.object == s.country}
    names = cities | {s.country}
    assert s.facts and all(f.subject in names or f.object in names for f in s.facts)
    assert len(s.facts) == sum(1 for f in world.facts if f.subject in names or f.object in names)
    assert all(p.fact in s.facts for p in s.forget_probes) and not any(p.fact in s.facts for p in s.retain_probes)
    assert set(s.anchors) == names and not set(s.anchors.values()) & names
    assert all(s.paraphrase_prompts) and len(s.answers) == len(s.facts) == len(s.fact_prompts)
    with pytest.raises(LmlabError, match="unknown country 'Atlantis'"):
        country_slice(world, "Atlantis")
