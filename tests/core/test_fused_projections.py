"""``FusedProjections``: q/k/v and gate/up as one GEMV at inference, never stale, never on the training path."""

import copy

import pytest
import torch

from lmlab.core import linear as lin
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer


def _model(bias: bool = False) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.llama_like(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, qkv_bias=bias)
    model = Transformer(cfg).init_weights(std=0.3, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return model


@pytest.fixture
def unfused(monkeypatch):
    """Run a function with the fused path switched off (the separate projections, as before)."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(lin.FusedProjections, "__call__", lambda self, x, modules: None)
            return fn()
    return run


def _caches(model):
    return [b.attn._fused_qkv._cache for b in model.blocks] + [b.mlp._fused_gate_up._cache for b in model.blocks]


@pytest.mark.parametrize("bias", [False, True])
def test_fused_logits_and_greedy_tokens_equal_separate_projections(bias, unfused):
    model = _model(bias)
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    with torch.no_grad():
        fused = model(ids, attention_mask=mask)
    assert all(c is not None for c in _caches(model))  # the fused path ran in every layer
    want = unfused(lambda: model(ids, attention_mask=mask).detach())
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-5)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]  # uneven lengths, cached decode
    assert generate(model, prompts, max_new_tokens=12) == unfused(lambda: generate(model, prompts, max_new_tokens=12))


def test_in_place_change_and_replaced_weight_are_seen(unfused):
    model = _model()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(ids)
        model.blocks[0].attn.k_proj.weight.add_(0.5)  # in place: the version counter moves
        after = model(ids)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, unfused(lambda: model(ids).detach()), rtol=1e-5, atol=1e-5)
    up = model.blocks[1].mlp.up_proj
    up.weight = torch.nn.Parameter(torch.randn_like(up.weight))  # replaced
    with torch.no_grad():
        replaced = model(ids)
    torch.testing.assert_close(replaced, unfused(lambda: model(ids).detach()), rtol=1e-5, atol=1e-5)
    up.weight.data = torch.randn_like(up.weight)  # re-pointed (same Parameter, new storage, same version)
    with torch.no_grad():
        repointed = model(ids)
    torch.testing.assert_close(repointed, unfused(lambda: model(ids).detach()), rtol=1e-5, atol=1e-5)


def test_training_hooks_and_inference_tensors_use_the_separate_projections():
    model = _model()
    ids = torch.tensor([[1, 2, 3]])
    model(ids).sum().backward()  # grad enabled and weights need grad: the training path
    assert all(c is None for c in _caches(model))
    assert model.blocks[0].attn.q_proj.weight.grad is not None and model.blocks[0].mlp.up_proj.weight.grad is not None
    seen = []
    handle = model.blocks[0].attn.v_proj.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    with torch.no_grad():
        model(ids)
    handle.remove()
    assert seen == [torch.Size([1, 3, 32])]  # the module's own hook still runs: v_proj was called
    with torch.inference_mode():
        frozen = _model()  # weights without version counters: an in-place change could not be noticed
        frozen(ids)
    assert all(c is None for c in _caches(frozen))


def test_copies_do_not_carry_the_fused_weights():
    model = _model()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        want = model(ids)
        twin = copy.deepcopy(model)
        assert all(c is None for c in _caches(twin))
        torch.testing.assert_close(twin(ids), want, rtol=0, atol=0)
