"""Tokenizer swap: identity reproduces the source exactly; WECHSEL's neighbours match the world's lexicon."""

from __future__ import annotations

import pytest
import torch
from conftest import word_tokenizer

from lmlab.adapt import swap_tokenizer, wechsel_mapping
from lmlab.adapt.wechsel import WechselConfig
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.errors import LmlabError


def _model(vocab: int, tied: bool) -> Transformer:
    cfg = ModelConfig.llama_like(vocab, d_model=32, n_layers=1, n_heads=2, d_mlp=64, tie_embeddings=tied,
                                 max_seq_len=64)
    return Transformer(cfg).init_weights(seed=0)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean", "random"])
def test_identity_swap_reproduces_source(tied, init):
    tok = word_tokenizer(60)
    model = _model(60, tied)
    swapped = swap_tokenizer(model, tok, word_tokenizer(60), init=init)
    ids = torch.tensor([[1, 5, 9, 33, 59, 2], [1, 50, 40, 30, 20, 10]])
    with torch.no_grad():
        assert torch.equal(swapped(ids), model(ids))
    for name, p in model.state_dict().items():
        assert torch.equal(swapped.state_dict()[name], p), name


def test_overlap_copy_and_baselines():
    src, model = word_tokenizer(60), _model(60, tied=False)
    tgt = word_tokenizer(80)  # w60..w79 are new; w2..w59 overlap
    mean = swap_tokenizer(model, src, tgt, init="mean")
    E = model.embed.weight
    assert torch.equal(mean.embed.weight[:60], E)
    torch.testing.assert_close(mean.embed.weight[70].double(), E.double().mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mean.lm_head.weight[70].double(), model.lm_head.weight.double().mean(0))
    rnd = swap_tokenizer(model, src, tgt, init="random", copy_overlap=False)
    assert not torch.equal(rnd.embed.weight[:60], E)  # no copying: every row drawn
    assert abs(rnd.embed.weight.std().item() - E.std().item()) < 0.2 * E.std().item()


def _neighbour_match(sources, src_tok, tgt_tok, lexicon):
    """Fraction of held-out lexicon words (whole tokens in both tokenizers) whose nearest source token is the
    word's known translation."""
    hits = n = 0
    for base, target in lexicon.items():
        i, j = tgt_tok.token_to_id("Ġ" + target), src_tok.token_to_id("Ġ" + base)
        if i is None or j is None:
            continue
        n += 1
        hits += bool(sources[i]) and sources[i][0] == j
    return hits, n


def test_wechsel_neighbours_match_known_alignment(world_text):
    base, target, dictionary, held_out = world_text
    src_tok, tgt_tok = train_bpe(base, 1000), train_bpe(target, 1000)
    sources, weights = wechsel_mapping(src_tok, tgt_tok, base, target, dictionary)
    hits, n = _neighbour_match(sources, src_tok, tgt_tok, held_out)
    chance = 1 / sum(1 for s in sources if s)  # uniform pick among source tokens
    assert n >= 20 and hits / n > 0.2 > 50 * chance, (hits, n)
    row = next(w for w in weights if w)
    assert len(row) == 10 and abs(sum(row) - 1) < 1e-9 and row == sorted(row, reverse=True)


def test_wechsel_swap_builds_model_and_errors(world_text):
    base, target, dictionary, _ = world_text
    src_tok, tgt_tok = train_bpe(base[:80], 300), train_bpe(target[:80], 300)
    model = _model(len(src_tok), tied=True)
    cfg = WechselConfig(neighbors=3)
    new = swap_tokenizer(model, src_tok, tgt_tok, "wechsel", copy_overlap=False, source_texts=base[:80],
                         target_texts=target[:80], dictionary=dictionary, config=cfg)
    assert new.config.vocab_size == tgt_tok.max_token_id + 1
    assert torch.isfinite(new(torch.tensor([tgt_tok.encode(target[0])[:20]]))).all()
    with pytest.raises(LmlabError, match="none of its 2 word pairs occur"):
        swap_tokenizer(model, src_tok, tgt_tok, "wechsel", source_texts=base[:80], target_texts=target[:80],
                       dictionary={"qqq": "zzz", "xxx": "yyy"})
    with pytest.raises(LmlabError, match="needs a bilingual dictionary"):
        swap_tokenizer(model, src_tok, tgt_tok, "wechsel")


def test_swap_repoints_special_ids_and_refuses_a_missing_eos():
    import tokenizers
    from tokenizers import models, pre_tokenizers

    from lmlab.core.tokenizer import Tokenizer

    src = word_tokenizer(60)  # <s> = 1 is BOS and EOS
    model = Transformer(ModelConfig.llama_like(60, d_model=32, n_layers=1, n_heads=2, d_mlp=64, max_seq_len=64,
                                               bos_token_id=1, eos_token_id=1)).init_weights(seed=0)
    vocab = {"<unk>": 0, **{f"w{i}": i - 1 for i in range(2, 70)}, "</s>": 69, "<s>": 70}  # specials moved
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    moved = Tokenizer(backend, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    swapped = swap_tokenizer(model, src, moved, init="mean")
    assert (swapped.config.bos_token_id, swapped.config.eos_token_id) == (70, 69)
    assert torch.equal(swapped.embed.weight[70], model.embed.weight[1])  # overlap copy follows the token string
    no_eos = Tokenizer(backend, {"unk_token": "<unk>"})
    with pytest.raises(LmlabError, match=r"names a beginning-of-text token \(bos_token_id=1\) but the target tokenizer has none"):
        swap_tokenizer(model, src, no_eos, init="mean")
