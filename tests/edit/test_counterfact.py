"""The shipped real facts, CounterFact's probability-comparison scores against a direct computation, the BOS-less
tokenizer view, and the partial-forward target optimisation against a full forward."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.edit import EditRequest, locate
from lmlab.edit.counterfact import counterfact_scores, mean_token_logprob, read_counterfact, without_bos
from lmlab.edit.evaluate import WorldEdit
from lmlab.errors import LmlabError

TEXTS = ["The Eiffel Tower is located in the city of Paris.", "The Colosseum is located in the city of Rome.",
         "Big Ben stands in London.", "The capital of Japan is Tokyo.", "Sony is headquartered in Tokyo."] * 6


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=290)


@pytest.fixture(scope="module")
def model(tok):
    return Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=3, n_heads=4,
                                              max_seq_len=64)).init_weights(std=0.3, seed=1).float()


def test_shipped_real_facts_are_counterfactual_and_disjoint():
    cases = read_counterfact()
    assert len(cases) == 100
    subjects = [c.request.subject for c in cases]
    assert len(set(subjects)) == 100
    relations = [json.loads(line)["requested_rewrite"]["relation_id"]
                 for line in open(read_counterfact.__globals__["REAL_FACTS"], encoding="utf-8")]
    assert len(set(relations[:10])) == 7  # the first 10 cover every relation
    for c in cases:
        assert c.request.target_text != c.old and len(c.paraphrases) == 2 and len(c.neighbours) == 2
        assert all(c.request.subject in p for p in c.paraphrases)
        for prompt, _ in c.neighbours:  # no neighbour names an edited subject
            assert not any(f" {s} " in f" {prompt} " for s in subjects)
    assert len(read_counterfact(n=10)) == 10


def _direct_mean_logprob(model, tok, prompt, answer):
    p, a = tok.encode(prompt), tok.encode(answer)
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).float(), -1)[0]  # [T, vocab]
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)) / len(a))


def test_scores_equal_a_direct_computation_on_uneven_rows(model, tok):
    btok = without_bos(tok)
    assert btok.bos_id is None and btok.encode("Paris") == tok.encode("Paris") and len(btok) == len(tok)
    cases = [WorldEdit(EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"), " Paris",
                       ["The Eiffel Tower stands in"], [("The Colosseum is located in the city of", " Rome")]),
             WorldEdit(EditRequest("The capital of {} is", "Japan", "London Paris"), " Tokyo",
                       ["Japan's capital is", "The capital city of Japan is"],
                       [("Sony is headquartered in", " Tokyo"), ("Big Ben stands in", " London")])]
    prompts = ["The Eiffel Tower is located in the city of", "The capital of Japan is", "Big Ben stands in"]
    answers = [" Rome", " London Paris", " London"]
    got = mean_token_logprob(model, btok, prompts, answers, batch_size=2)
    want = torch.tensor([_direct_mean_logprob(model, tok, p, a) for p, a in zip(prompts, answers)])
    torch.testing.assert_close(got.float(), want, rtol=0, atol=1e-4)

    def share(triples):
        return sum(_direct_mean_logprob(model, tok, p, a) > _direct_mean_logprob(model, tok, p, b)
                   for p, a, b in triples) / len(triples)

    scores = counterfact_scores(model, btok, cases, exact_match=False)
    assert scores["efficacy_score"] == pytest.approx(share([(c.request.text, c.request.target_text, c.old) for c in cases]))
    assert scores["paraphrase_score"] == pytest.approx(share([(p, c.request.target_text, c.old) for c in cases for p in c.paraphrases]))
    assert scores["neighbourhood_score"] == pytest.approx(share([(p, a, c.request.target_text) for c in cases for p, a in c.neighbours]))


def test_bad_counterfact_records_are_one_line(tmp_path):
    path = tmp_path / "cf.jsonl"
    path.write_text(json.dumps({"requested_rewrite": {"prompt": "{} is in", "subject": "X", "target_new": "Y"}}) + "\n")
    with pytest.raises(LmlabError, match=r"cf.jsonl:1: requested_rewrite.target_true must be"):
        read_counterfact(path)
    path.write_text(json.dumps({"requested_rewrite": {"prompt": "{} is in", "subject": "X", "target_new": "Y",
                                                      "target_true": "Z"}, "neighborhood_prompts": ["A is in"],
                                "neighborhood_targets": []}) + "\n")
    with pytest.raises(LmlabError, match="1 neighborhood_prompts but 0 neighborhood_targets"):
        read_counterfact(path)
    with pytest.raises(LmlabError, match="asked for 5 cases, the file has 1"):
        read_counterfact(path, n=5)


@pytest.mark.parametrize("hook", ["blocks.1.mlp.out", "blocks.1.resid_post", "blocks.2.resid_post"])
def test_partial_forward_target_equals_a_full_forward_with_the_hook(model, tok, hook):
    """optimise_target runs only the layers above the hook; its logged NLL must be the full model's NLL with the
    returned delta added at the subject's last token of every row."""
    req = EditRequest("{} is located in the city of", "The Colosseum", "Tokyo")
    groups = [["{}"], ["Big Ben stands in London. {}", "Sony. {}"]]
    settings = locate.TargetSettings(steps=3, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625)
    init, delta, log = locate.optimise_target(model, tok, req, hook, groups, settings)
    assert float(delta.norm()) > 0
    rewrite = [ctx.replace("{}", req.prompt) for g in groups for ctx in g]
    target = tok.encode(req.target_text)
    enc = locate.encode_rows(tok, rewrite, [req.subject] * len(rewrite), suffixes=[target] * len(rewrite))

    def add(x, name):
        x = x.clone()
        x[torch.arange(x.shape[0]), enc.lookup] += delta.float()
        return x

    with torch.no_grad(), model.hooks([(hook, add)]):
        logp = F.log_softmax(model(enc.ids).float(), -1)  # [B, T, vocab]
    nll = torch.stack([-torch.stack([logp[i, int(enc.lengths[i]) - len(target) - 1 + j, t]
                                     for j, t in enumerate(target)]).mean() for i in range(len(rewrite))]).mean()
    assert float(nll) == pytest.approx(log["nll"], rel=1e-4, abs=1e-5)
    with torch.no_grad():  # and init is the unedited activation at the bare prompt's subject token
        _, acts = model.run_with_cache(enc.ids[:1], names=[hook])
    torch.testing.assert_close(init.float(), acts[hook][0, enc.lookup[0]], rtol=1e-5, atol=1e-6)
