"""The oneDNN inference path of ``lmlab.core.linear`` agrees with F.linear and is only taken when safe."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.core import linear as lin
from lmlab.core import native
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer


@pytest.fixture
def count_onednn(monkeypatch):
    calls = []
    real = lin._onednn_linear
    monkeypatch.setattr(lin, "_onednn_ok", lin._probe())  # probed before counting starts

    def counting(x, w, b):
        calls.append(tuple(x.shape))
        return real(x, w, b)

    monkeypatch.setattr(lin, "_onednn_linear", counting)
    return calls


def _onednn_available() -> bool:
    return lin._probe()


@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (2, 7, 64), (3, 1, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_inference_path_matches_f_linear(shape, bias, count_onednn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    layer = lin.Linear(64, 96, bias=bias)
    with torch.no_grad():
        got = layer(x)
        want = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == want.shape
    # decode-sized calls (<= 4 rows) take lmlab's own GEMV (tests/core/test_native.py), larger ones oneDNN
    rows = x.numel() // 64
    assert len(count_onednn) == (1 if _onednn_available() and rows > native.MAX_ROWS else 0)


def test_non_contiguous_input(count_onednn):
    x = torch.randn(4, 10, 64)[:, ::3]
    layer = lin.Linear(64, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_training_path_is_f_linear_bit_for_bit(count_onednn):
    x = torch.randn(5, 64, requires_grad=True)
    layer = lin.Linear(64, 32)
    y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    y.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    assert count_onednn == []


def test_frozen_weight_but_input_needs_grad_uses_f_linear(count_onednn):
    layer = lin.Linear(64, 32).requires_grad_(False)
    x = torch.randn(5, 64, requires_grad=True)
    layer(x).sum().backward()  # would fail if the fast (non-differentiable) op had been used
    assert x.grad is not None and count_onednn == []


def test_switch_off_and_other_dtypes_fall_back(monkeypatch, count_onednn):
    layer = lin.Linear(64, 32)
    with torch.no_grad():
        monkeypatch.setattr(lin, "FAST_INFERENCE", False)
        x = torch.randn(3, 64)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        monkeypatch.setattr(lin, "FAST_INFERENCE", True)
        layer64 = lin.Linear(64, 32).double()
        x64 = torch.randn(3, 64, dtype=torch.float64)
        assert torch.equal(layer64(x64), F.linear(x64, layer64.weight, layer64.bias))
    assert count_onednn == []


def test_failing_probe_means_f_linear(monkeypatch):
    def broken(x, w, b):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(lin, "_onednn_linear", broken)
    monkeypatch.setattr(lin, "_onednn_ok", None)
    layer = lin.Linear(16, 8)
    x = torch.randn(6, 16)  # more rows than the decode GEMV takes
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert lin._onednn_ok is False


def _tiny_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.llama_like(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2))
    return model.init_weights().to(dtype)


def test_model_logits_same_with_and_without_fast_path(monkeypatch):
    model = _tiny_model()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        fast = model(ids)
        monkeypatch.setattr(lin, "FAST_INFERENCE", False)
        slow = model(ids)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_give_the_same_logits_and_generations(dtype):
    if not _onednn_available():
        pytest.skip("oneDNN linear not available in this torch build")
    import copy

    import lmlab

    model = _tiny_model(dtype)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids)
        greedy = lmlab.generate(model, ids.tolist(), max_new_tokens=8)
        added = lin.pack_for_inference(model)
        # bf16 packing needs AVX-512 or AVX-NE-CONVERT; without them the weights stay unpacked (and still run)
        assert added == (sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                             if isinstance(m, lin.Linear)) if lin.packing_supported(dtype) else 0)
        got = model(ids)
        copy.deepcopy(model)  # copies drop the packed tensors instead of failing on them
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    if dtype == torch.float32:
        assert lmlab.generate(model, ids.tolist(), max_new_tokens=8) == greedy


def test_a_cpu_that_cannot_pack_a_dtype_leaves_the_weights_unpacked(monkeypatch):
    model = _tiny_model()
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
    monkeypatch.setitem(lin._PACKABLE, torch.float32, False)
    assert lin.pack_for_inference(model) == 0
    assert all(getattr(m, "_packed", None) is None for m in model.modules() if isinstance(m, lin.Linear))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want, rtol=0, atol=0)


def test_packed_copy_is_dropped_when_the_weight_changes_and_unused_for_training():
    if not _onednn_available():
        pytest.skip("oneDNN linear not available in this torch build")
    model = _tiny_model()
    lin.pack_for_inference(model)
    q = model.blocks[0].attn.q_proj
    x = torch.randn(3, 64)
    with torch.no_grad():
        q.weight.mul_(2.0)  # in place, as a LoRA merge does
        torch.testing.assert_close(q(x), F.linear(x, q.weight), rtol=1e-5, atol=1e-5)
    assert q._packed is None
    k = model.blocks[0].attn.k_proj
    y = k(x.requires_grad_())  # grad mode: the parameter path, differentiable
    y.sum().backward()
    assert k.weight.grad is not None and k._packed is not None
    lin.unpack(model)
    assert all(m._packed is None for m in model.modules() if isinstance(m, lin.Linear))


def test_packing_a_model_built_in_inference_mode():
    if not _onednn_available():
        pytest.skip("oneDNN linear not available in this torch build")
    with torch.inference_mode():
        model = _tiny_model()
        ids = torch.randint(0, 97, (1, 5))
        want = model(ids)
        lin.pack_for_inference(model)
        torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
