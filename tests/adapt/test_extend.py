"""Vocabulary extension: old tokens' logits unchanged exactly, HF round trip, one-line errors."""

from __future__ import annotations

import pytest
import torch
from conftest import word_tokenizer
from hf_models import VOCAB, save_hf_model

import lmlab
from lmlab.adapt import extend_vocabulary
from lmlab.adapt.resize import resize_vocabulary
from lmlab.errors import LmlabError

NEW = ["alpha", "beta", "gamma", "w5 w6", "delta"]


def _old_ids():
    # several rows, uneven content: a wrong row copy or a shifted id would change some logit
    return torch.tensor([[1, 5, 9, 33, 96, 2, 7], [1, 50, 60, 70, 80, 90, 3]])


# tied, untied, untied with an lm_head bias; each init once
@pytest.mark.parametrize("family,init", [("gpt2", "random"), ("llama_gqa", "subword_mean"), ("gptj", "mean")])
def test_old_logits_exact_and_hf_roundtrip(tmp_path, family, init):
    import transformers

    save_hf_model(family, tmp_path / "src")
    model, tok = lmlab.load(tmp_path / "src"), word_tokenizer()
    new_model, new_tok = extend_vocabulary(model, tok, NEW, init=init)
    assert new_model.config.vocab_size == VOCAB + len(NEW) == len(new_tok)
    assert len(tok) == VOCAB and model.config.vocab_size == VOCAB  # inputs untouched
    ids = _old_ids()
    with torch.no_grad():
        before, after = model(ids), new_model(ids)
    assert torch.equal(after[..., :VOCAB], before)  # exact, every old token, every position
    enc = new_tok.encode("w5 alpha w9 delta")
    assert enc[0] == 5 and enc[1] >= VOCAB and enc[3] >= VOCAB
    lmlab.save(new_model, tmp_path / "out", tokenizer=new_tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    full = torch.tensor([[1, 5, VOCAB, 9, VOCAB + 3, 2]])
    with torch.no_grad():
        torch.testing.assert_close(hf(full).logits, new_model(full), rtol=1e-4, atol=1e-4)
    reloaded = lmlab.load(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(reloaded(full), new_model(full))
    assert lmlab.load_tokenizer(tmp_path / "out").encode("w5 alpha") == new_tok.encode("w5 alpha")


def test_subword_mean_is_mean_of_old_pieces(tmp_path):
    save_hf_model("llama_mha", tmp_path / "src")
    model, tok = lmlab.load(tmp_path / "src"), word_tokenizer()
    new_model, new_tok = extend_vocabulary(model, tok, ["w5 w6"])  # old tokenizer: pieces 5 and 6
    row = new_tok.token_to_id("w5 w6")
    expected = (model.embed.weight[5].double() + model.embed.weight[6].double()) / 2
    torch.testing.assert_close(new_model.embed.weight[row].double(), expected, rtol=1e-6, atol=1e-7)
    expected_head = (model.lm_head.weight[5].double() + model.lm_head.weight[6].double()) / 2
    torch.testing.assert_close(new_model.lm_head.weight[row].double(), expected_head, rtol=1e-6, atol=1e-7)


def test_extended_model_trains_without_touching_source(tmp_path):
    save_hf_model("llama_mha", tmp_path / "src")
    model, tok = lmlab.load(tmp_path / "src"), word_tokenizer()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    new_model, _ = extend_vocabulary(model, tok, ["alpha"])
    new_model.train()
    loss = new_model(torch.tensor([[1, 5, VOCAB]])).logsumexp(-1).sum()
    loss.backward()
    with torch.no_grad():
        for p in new_model.parameters():
            p.sub_(0.1 * p.grad)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())


def test_errors_are_one_line(tmp_path):
    save_hf_model("gpt2", tmp_path / "src")
    model, tok = lmlab.load(tmp_path / "src"), word_tokenizer()
    with pytest.raises(LmlabError, match="below the model's existing 97 rows") as err:
        resize_vocabulary(model, VOCAB - 1)
    assert "\n" not in str(err.value)
    with pytest.raises(LmlabError, match="collide with the model's special tokens"):
        extend_vocabulary(model, tok, ["alpha", "<s>"], special=True)
    with pytest.raises(LmlabError, match="already in the vocabulary"):
        extend_vocabulary(model, tok, ["w5"], special=True)
    with pytest.raises(LmlabError, match="init must be one of"):
        extend_vocabulary(model, tok, ["alpha"], init="zeros")
    with pytest.raises(LmlabError, match="single str"):
        extend_vocabulary(model, tok, "alpha")
