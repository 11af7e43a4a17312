"""The repeated-tokens copy score separates a model that copies from one that cannot."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError
from lmlab.eval.copying import repeated_tokens_score


def _model(seed=0):
    cfg = ModelConfig.llama_like(64, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    return Transformer(cfg).init_weights(seed=seed).eval()


def _train_to_copy(model, steps=150):
    """A few steps on repeated random segments: a 2-layer model forms an induction circuit."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x = torch.randint(0, 64, (32, 12), generator=gen)
        ids = torch.cat([x, x], 1)  # [32, 24]
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, 12:-1].reshape(-1, 64), ids[:, 13:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_untrained_model_gains_nothing_and_a_copying_model_gains_nats():
    before = repeated_tokens_score(_model(), length=12, rows=16)
    assert abs(before.copy_gain) < 0.2  # random init: both halves at chance
    assert before.first_nll == pytest.approx(torch.log(torch.tensor(64.0)).item(), abs=0.3)
    after = repeated_tokens_score(_train_to_copy(_model()), length=12, rows=16, seed=5)
    assert after.copy_gain > 1.5, after


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(LmlabError, match="context"):
        repeated_tokens_score(_model(), length=40)
    with pytest.raises(LmlabError, match="token range"):
        repeated_tokens_score(_model(), length=8, high=100)
