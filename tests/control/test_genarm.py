"""GenARM decoding: zero weights reproduce the base; cached batched decoding equals the formula."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.control import GenARM
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer

V = 50
PROMPTS = [[3, 9, 4, 22, 7], [11, 2], [5, 5, 40, 1, 17, 30, 8]]


def tiny(seed: int, vocab: int = V, d: int = 32) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=d, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(cfg).init_weights(std=0.3, seed=seed)


@pytest.fixture(scope="module")
def models():
    return tiny(0, d=48), tiny(1), tiny(2)  # base, ARM for objective 1, ARM for objective 2


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_k=20, seed=5)])  # noqa: C408
def test_zero_weights_reproduce_base(models, sampling):
    base, a, b = models
    ref = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], **sampling)
    proc = GenARM([a, b], weights=[0.0, 0.0], beta=0.5, base=base)
    assert generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], logits_processors=[proc], **sampling) == ref


@torch.no_grad()
def test_two_objectives_equal_formula(models):
    base, a, b = models
    w, beta = [0.7, 0.3], 0.5
    out = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[],
                   logits_processors=[GenARM([a, b], weights=w, beta=beta, base=base)])
    expected = []
    for p in PROMPTS:
        seq = list(p)
        for _ in range(8):
            x = torch.tensor([seq])
            logits = base(x)[0, -1] + (w[0] * a(x)[0, -1].log_softmax(-1) + w[1] * b(x)[0, -1].log_softmax(-1)) / beta
            seq.append(int(logits.argmax()))
        expected.append(seq)
    assert out == expected
    assert out != generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[])


def test_bad_input(models):
    base, a, _ = models
    with pytest.raises(LmlabError, match="2 weights for 1 reward models"):
        GenARM([a], weights=[1.0, 2.0])
    with pytest.raises(LmlabError, match="beta must be finite and > 0"):
        GenARM([a], beta=0.0)
    with pytest.raises(LmlabError, match="vocabulary sizes differ"):
        GenARM([a, tiny(3, vocab=60)], base=base)
