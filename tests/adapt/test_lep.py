"""LEP: propagation into an instruct variant -- identities that pin each variant down exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import word_tokenizer

from lmlab.adapt import extend_vocabulary
from lmlab.adapt.lep import embedding_parameters, propagate_embeddings, subword_mapping
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError

NEW = ["alpha", "w5 w6", "w7 w8 w9"]


def base_model(tied: bool) -> Transformer:
    config = ModelConfig(model_type="llama", vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_mlp=48,
                         max_seq_len=32, mlp_type="gated", activation="silu", tie_embeddings=tied)
    return Transformer(config).init_weights(seed=0)


def perturbed(model: Transformer, seed: int, scale: float = 0.05) -> Transformer:
    """A stand-in for a fine-tuned variant: every weight moved by a seeded random amount."""
    out = Transformer(model.config)
    out.load_state_dict(model.state_dict())
    out.tie_weights()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_projection_commutes_with_extension(tied):
    """Untrained adaptation: propagating the extended base into the instruct model = extending the instruct model."""
    tok = word_tokenizer()
    base = base_model(tied)
    instruct = perturbed(base, 1)
    adapted, new_tok = extend_vocabulary(base, tok, NEW, init="subword_mean")
    mapping = subword_mapping(tok, new_tok, 97, adapted.config.vocab_size)
    got = propagate_embeddings(base, adapted, instruct, mapping, "projection")
    want, _ = extend_vocabulary(instruct, tok, NEW, init="subword_mean")
    for (k, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-7, msg=k)
    ids = torch.tensor([[3, 97, 10, 98, 99, 4], [5, 6, 99, 99, 2, 1]])  # new and old tokens, two rows
    with torch.no_grad():
        torch.testing.assert_close(got(ids), want(ids), rtol=1e-5, atol=1e-5)
        swapped = propagate_embeddings(base, adapted, instruct, mapping, "swap")
        assert not torch.allclose(swapped(ids), want(ids), atol=1e-3)  # the plain swap loses the instruct shift


@pytest.mark.parametrize("tied", [True, False])
def test_variants_exact(tied):
    tok = word_tokenizer()
    base = base_model(tied)
    extended, new_tok = extend_vocabulary(base, tok, NEW, init="subword_mean")
    adapted = perturbed(extended, 2)  # "continued pretraining" moved every weight
    instruct = perturbed(base, 3)
    mapping = subword_mapping(tok, new_tok, 97, adapted.config.vocab_size)
    # instruct == base: projection returns the adapted vocabulary exactly (the shift is 0)
    same = propagate_embeddings(base, adapted, base, mapping, "projection", body="task_arithmetic")
    for (k, a), (_, b) in zip(same.state_dict().items(), adapted.state_dict().items()):
        assert torch.equal(a, b), k
    over = propagate_embeddings(base, adapted, instruct, mapping, "overlap")
    assert torch.equal(over.embed.weight[:97], instruct.embed.weight)
    assert torch.equal(over.embed.weight[97:], adapted.embed.weight[97:])
    assert torch.equal(over.blocks[1].mlp.up_proj.weight, instruct.blocks[1].mlp.up_proj.weight)  # body: instruct
    assert (over.lm_head.weight is over.embed.weight) == tied
    arith = propagate_embeddings(base, adapted, instruct, mapping, "swap", body="task_arithmetic")
    w = lambda m: m.blocks[0].attn.q_proj.weight.double()  # noqa: E731
    torch.testing.assert_close(w(arith), (w(instruct) + w(adapted) - w(base)).float().double(), rtol=0, atol=1e-7)
    assert torch.equal(arith.embed.weight, adapted.embed.weight)
    assert len(embedding_parameters(adapted)) == (1 if tied else 2)
    # inputs untouched
    assert torch.equal(adapted.embed.weight, perturbed(extended, 2).embed.weight)


def test_errors():
    tok = word_tokenizer()
    base = base_model(True)
    adapted, new_tok = extend_vocabulary(base, tok, NEW)
    mapping = subword_mapping(tok, new_tok, 97, adapted.config.vocab_size)
    with pytest.raises(LmlabError, match="method must be one of"):
        propagate_embeddings(base, adapted, base, mapping, "copy")
    other = Transformer(dataclasses.replace(base.config, d_mlp=64)).init_weights(seed=0)
    with pytest.raises(LmlabError, match="differ in d_mlp"):
        propagate_embeddings(base, adapted, other, mapping)
    with pytest.raises(LmlabError, match="mapping has"):
        propagate_embeddings(base, adapted, base, subword_mapping(tok, new_tok, 97, 99))
