"""Dynamic tokenization: batch merges are a deterministic function of the batch, zero merges reproduce the model
exactly, and merged logits equal a model whose vocabulary was really extended with the predicted rows."""

from __future__ import annotations

import pytest
import torch
from conftest import word_tokenizer
from hf_models import VOCAB, save_hf_model

import lmlab
from lmlab.adapt.batch_merges import batch_merges
from lmlab.adapt.dynamic_tokenization import (
    DynamicTokenizationConfig,
    dynamic_logits,
    dynamic_nll,
    merge_batch,
    merged_embeddings,
    new_hypernet,
    train_hypernet,
)
from lmlab.adapt.resize import RowMapping, apply_row_mapping
from lmlab.errors import LmlabError

# uneven lengths, a repeated phrase (5 6 7) and a pair (5 6) seen in every row; BOS (1) starts each row
ROWS = [[1, 5, 6, 7, 9, 5, 6, 7], [1, 5, 6, 9], [1, 2, 5, 6, 7, 3, 4], [1, 8]]


def _expand(batch, r):
    """The original ids a merged row stands for (the map back)."""
    out = []
    for t in range(int(batch.lengths[r])):
        i = int(batch.ids[r, t])
        unit = (i,) if i < batch.vocab_size else batch.merged[i - batch.vocab_size]
        assert int(batch.starts[r, t]) == len(out)
        out += unit
    return out


def test_merges_by_hand_and_map_back():
    b = batch_merges(ROWS, VOCAB, 5, specials={1}, word_boundaries=False)
    # (5,6) x4 first, then ((5,6),(7)) x3; nothing else is seen twice
    assert b.merges == [((5,), (6,)), ((5, 6), (7,))]
    assert b.merged == [(5, 6), (5, 6, 7)]
    assert b.ids.tolist() == [[1, VOCAB + 1, 9, VOCAB + 1, 0], [1, VOCAB, 9, 0, 0], [1, 2, VOCAB + 1, 3, 4], [1, 8, 0, 0, 0]]
    assert b.starts[2].tolist() == [0, 1, 2, 5, 6]
    assert b.lengths.tolist() == [4, 3, 5, 2]
    assert b.attention_mask.sum(1).tolist() == b.lengths.tolist()
    for r, row in enumerate(ROWS):
        assert _expand(b, r) == row
    # word boundaries: 6 starts a word, so (5, 6) may not merge, (6, 7) inside the word may; specials never merge
    assert batch_merges(ROWS, VOCAB, 5, word_starts={6}, specials={1}).merged == [(6, 7)]
    assert any(1 in u for u in batch_merges(ROWS, VOCAB, 50, min_frequency=1, word_boundaries=False).merged)
    assert all(1 not in u for u in batch_merges(ROWS, VOCAB, 50, specials={1}, min_frequency=1,
                                                 word_boundaries=False).merged)


def test_merges_deterministic_and_row_order_free():
    a = batch_merges(ROWS, VOCAB, 3, word_boundaries=False)
    b = batch_merges(ROWS, VOCAB, 3, word_boundaries=False)
    assert a.merges == b.merges and torch.equal(a.ids, b.ids) and torch.equal(a.starts, b.starts)
    perm = [2, 0, 3, 1]
    p = batch_merges([ROWS[i] for i in perm], VOCAB, 3, word_boundaries=False)
    assert p.merges == a.merges and p.merged == a.merged
    assert torch.equal(p.ids, a.ids[perm]) and torch.equal(p.starts, a.starts[perm])
    # a bigger budget never lengthens a row; budget 0 is the identity
    more = batch_merges(ROWS, VOCAB, 10, word_boundaries=False, min_frequency=1)
    assert (more.lengths <= a.lengths).all() and more.lengths.sum() < a.lengths.sum()
    zero = batch_merges(ROWS, VOCAB, 0)
    assert zero.merged == [] and zero.lengths.tolist() == [len(r) for r in ROWS]


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa", "gptj"])  # learned positions+tied, rotary untied, bias
def test_zero_merges_equal_model_exactly(tmp_path, family):
    save_hf_model(family, tmp_path / "m")
    model = lmlab.load(tmp_path / "m").eval()
    hyper = new_hypernet(model)
    batch = merge_batch(word_tokenizer(), ROWS, VOCAB, 0)
    with torch.no_grad():
        logits = dynamic_logits(model, hyper, batch)  # [B, T, V]
        assert logits.shape == (4, 8, VOCAB)
        assert torch.equal(batch.ids, torch.tensor([r + [0] * (8 - len(r)) for r in ROWS]))
        assert torch.equal(logits, model(batch.ids, attention_mask=batch.attention_mask))  # exactly
        for r, row in enumerate(ROWS):  # each row alone, unpadded: padding must not leak into real positions
            torch.testing.assert_close(logits[r, : len(row)], model(torch.tensor([row]))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "gptj"])
def test_merged_logits_equal_extended_model(tmp_path, family):
    """A model whose vocabulary really holds the merged tokens (rows from the hypernetwork) gives the same logits
    as the on-the-fly path, row by row, and its untrained rows are the mean of the parts."""
    save_hf_model(family, tmp_path / "m")
    model = lmlab.load(tmp_path / "m").eval()
    hyper = new_hypernet(model)
    with torch.no_grad():  # a trained-looking hypernetwork: non-zero heads, so the check is not just the mean
        for head in (hyper.head_in, hyper.head_out):
            head.weight.normal_(0, 0.05)
    batch = merge_batch(word_tokenizer(), ROWS, VOCAB, 3, DynamicTokenizationConfig(word_boundaries=False))
    M = len(batch.merged)
    assert M == 2
    with torch.no_grad():
        new_in, new_out = merged_embeddings(model, hyper, batch.merged)
        ext = apply_row_mapping(model, RowMapping(VOCAB + M, [[i] for i in range(VOCAB)] + [[0]] * M,
                                                  [[1.0]] * (VOCAB + M)))
        ext.embed.weight[VOCAB:] = new_in
        if not model.config.tie_embeddings:
            ext.lm_head.weight[VOCAB:] = new_out
            if ext.lm_head.bias is not None:
                ext.lm_head.bias[VOCAB:] = model.lm_head.bias[[u[0] for u in batch.merged]]
        else:
            assert torch.equal(new_in, new_out)
        logits = dynamic_logits(model, hyper, batch)  # [B, T', V + M]
        for r in range(len(ROWS)):
            n = int(batch.lengths[r])
            torch.testing.assert_close(logits[r, :n], ext(batch.ids[r : r + 1, :n])[0], rtol=1e-5, atol=1e-5)
        hyper0 = new_hypernet(model)
        mean_in, _ = merged_embeddings(model, hyper0, batch.merged)
        torch.testing.assert_close(mean_in[1], model.embed.weight[[5, 6, 7]].mean(0), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(logits, dynamic_logits(model, hyper0, batch))


def test_train_hypernet_lowers_loss_and_freezes_model(tmp_path):
    torch.manual_seed(0)
    save_hf_model("llama_gqa", tmp_path / "m")
    model = lmlab.load(tmp_path / "m").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [[1] + [5, 6, 7, 2 + i % 9] * 3 for i in range(24)]
    cfg = DynamicTokenizationConfig(steps=25, batch=8, lr=3e-3, word_boundaries=False, train_budgets=(4,))
    tok = word_tokenizer()
    batch = merge_batch(tok, rows[:8], VOCAB, 4, cfg)
    with torch.no_grad():
        loss0 = dynamic_nll(model, new_hypernet(model, cfg), batch).sum().item()
    hyper = train_hypernet(model, tok, rows, cfg, log=None)
    with torch.no_grad():
        loss1 = dynamic_nll(model, hyper, batch).sum().item()
    assert loss1 < loss0 - 1.0, (loss0, loss1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_bad_input_one_line():
    with pytest.raises(LmlabError, match="budget must be >= 0"):
        batch_merges(ROWS, VOCAB, -1)
    with pytest.raises(LmlabError, match="row 1 has an id outside"):
        batch_merges([[1, 2], [1, VOCAB]], VOCAB, 1)
    with pytest.raises(LmlabError, match="row 0 is empty"):
        batch_merges([[]], VOCAB, 1)
