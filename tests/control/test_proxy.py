"""Proxy-tuning: base + alpha (tuned - untuned) in batched cached decoding equals the formula on full forwards."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.control import ProxyTuning
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer

V = 50


def tiny(seed: int, vocab: int = V, d: int = 32) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=d, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(cfg).init_weights(std=0.3, seed=seed)


@pytest.fixture(scope="module")
def models():
    return tiny(0, d=48), tiny(1), tiny(2)  # base (larger), tuned, untuned


PROMPTS = [[3, 9, 4, 22, 7], [11, 2], [5, 5, 40, 1, 17, 30, 8]]  # uneven lengths


def manual(base, tuned, untuned, alpha, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        x = torch.tensor([ids])
        logits = base(x)[0, -1] + alpha * (tuned(x)[0, -1].log_softmax(-1) - untuned(x)[0, -1].log_softmax(-1))
        ids.append(int(logits.argmax()))
    return ids


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_k=20, seed=7)])
def test_zero_alpha_reproduces_base(models, sampling):
    base, tuned, untuned = models
    ref = generate(base, PROMPTS, max_new_tokens=10, stop_token_ids=[], **sampling)
    out = generate(base, PROMPTS, max_new_tokens=10, stop_token_ids=[], **sampling,
                   logits_processors=[ProxyTuning(tuned, untuned, alpha=0.0, base=base)])
    assert out == ref


@torch.no_grad()
def test_batched_cached_equals_formula(models):
    base, tuned, untuned = models
    proc = ProxyTuning(tuned, untuned, alpha=1.0, base=base)
    out = generate(base, PROMPTS, max_new_tokens=10, stop_token_ids=[], logits_processors=[proc])
    expected = [manual(base, tuned, untuned, 1.0, p, 10) for p in PROMPTS]
    assert out == expected
    assert out != generate(base, PROMPTS, max_new_tokens=10, stop_token_ids=[])  # the proxy changes the tokens


def test_different_vocabulary_is_one_line_error(models):
    base, tuned, _ = models
    with pytest.raises(LmlabError, match=r"share one tokenizer, but vocabulary sizes differ \(tuned 50, untuned 60"):
        ProxyTuning(tuned, tiny(3, vocab=60), base=base)
    proc = ProxyTuning(tuned, tuned)  # no base given: checked at the first step instead
    with pytest.raises(LmlabError, match="base vocabulary 60 differs"):
        generate(tiny(4, vocab=60), [[1, 2, 3]], max_new_tokens=2, logits_processors=[proc])


def test_different_tokenizers_are_refused(models):
    from lmlab.core.tokenizer import train_bpe

    a = train_bpe(["the cat sat on the mat"] * 5, vocab_size=300)
    b = train_bpe(["a dog ran in the park"] * 5, vocab_size=300)
    base, tuned, untuned = models
    ProxyTuning(tuned, untuned, tokenizers={"base": a, "tuned": a})  # the same tokenizer is fine
    with pytest.raises(LmlabError, match="tokenizer\\(s\\) tuned differ from base's"):
        ProxyTuning(tuned, untuned, tokenizers={"base": a, "tuned": b})
