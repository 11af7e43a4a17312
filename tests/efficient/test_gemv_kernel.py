"""lmlab's batch-1 int8/int4 GEMV kernel (lmlab.efficient.gemv_kernel): equal to ``x @ dequantize().T`` on
awkward shapes, used by ``QuantizedLinear`` for decode-sized inputs only, a quantized model decodes with it
to the dequantised float model's logits, and a machine that cannot build it falls back with one line.

The kernel is compiled once per machine (cached by torch's extension builder; ~1-2 min the first time).
"""

from __future__ import annotations

import copy

import pytest
import torch

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.linear import Linear
from lmlab.core.model import Transformer
from lmlab.efficient import gemv_kernel, quant
from lmlab.efficient.quant import QuantizedLinear, dequantize_codes, pack_int4
from lmlab.efficient.quantization import dequantize_model, quantize


@pytest.fixture(scope="module", autouse=True)
def _kernel_built():
    """Every test here needs the compiled kernel: a machine that should build it (AVX2, a compiler) must."""
    assert gemv_kernel.unavailable_reason() is None, gemv_kernel.unavailable_reason()
    assert gemv_kernel.available(), "the GEMV kernel failed to build (see the warning above)"


def _reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ w.T + bias in float64: the exact value the fp32 kernel approximates."""
    y = x.double() @ w.double().T
    return y if bias is None else y + bias.double()


def _assert_fp32_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Within fp32 accumulation error: a few ulps of sum_k |x_k w_k| per output (a wrong column, group or
    zero point moves outputs by ~1e-1 of that sum, far outside)."""
    ref = _reference(x, w, bias)
    scale = x.double().abs() @ w.double().abs().T + 1.0  # [M, N]
    err = (y.double() - ref).abs() / scale
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert err.max().item() < 2e-6, err.max().item()


@pytest.mark.parametrize("n, k", [(37, 100), (5, 77), (64, 768), (129, 3072)])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_int8_gemv_equals_dequantised_matmul(n, k, m):
    g = torch.Generator().manual_seed(n * 1000 + k + m)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)  # both ends of the range
    q[0, :] = 127
    q[-1, :] = -127
    scale = torch.rand(n, 1, generator=g) * 0.02 + 1e-4
    x = torch.randn(m, k, generator=g) * 3  # negative activations too
    bias = torch.randn(n, generator=g) if m % 2 else None
    y = gemv_kernel.int8_gemv(x, q, scale, bias)
    _assert_fp32_close(y, x, q.float() * scale, bias)


@pytest.mark.parametrize("n, k, group", [(37, 100, 32), (5, 77, 64), (9, 130, 96), (33, 256, 128), (7, 40, 64),
                                         (65, 768, 32), (11, 31, 32), (3, 200, 256)])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_int4_gemv_equals_dequantised_matmul(n, k, group, m):
    g = torch.Generator().manual_seed(n * 1000 + k + m + group)
    G = quant.n_groups(k, group)
    q = torch.randint(0, 16, (n, k), generator=g)
    q[0, :] = 15  # codes at both ends of the range
    q[-1, :] = 0
    zero = torch.randint(0, 16, (n, G), generator=g)
    zero[0, :], zero[-1, :] = 0, 15  # zero points at both ends of the range
    scale = torch.rand(n, G, generator=g) * 0.02 + 1e-4
    x = torch.randn(m, k, generator=g) * 3
    bias = torch.randn(n, generator=g) if m % 2 else None
    y = gemv_kernel.int4_gemv(x, pack_int4(q), scale, zero.to(torch.uint8), group, bias)
    _assert_fp32_close(y, x, dequantize_codes(q, scale, zero, group), bias)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_rows_split_across_two_threads_give_the_same_result(m):
    """The suite runs one thread; decode runs two. 301 rows split in two uneven chunks, each ending in a
    leftover row, must give what one thread gives, bit for bit (each row is computed the same way)."""
    g = torch.Generator().manual_seed(m)
    n, k, group = 301, 200, 64
    q8 = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    q4 = torch.randint(0, 16, (n, k), generator=g)
    scale8, scale4 = torch.rand(n, 1, generator=g), torch.rand(n, 4, generator=g)
    zero = torch.randint(0, 16, (n, 4), generator=g).to(torch.uint8)
    x = torch.randn(m, k, generator=g)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((gemv_kernel.int8_gemv(x, q8, scale8, None),
                         gemv_kernel.int4_gemv(x, pack_int4(q4), scale4, zero, group, None)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    _assert_fp32_close(outs[1][1], x, dequantize_codes(q4, scale4, zero, group), None)


def test_kernel_checks_its_inputs():
    q = torch.zeros(4, 64, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="1 <= M <= 4"):
        gemv_kernel.int8_gemv(torch.zeros(5, 64), q, torch.ones(4, 1), None)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        gemv_kernel.int4_gemv(torch.zeros(1, 64), torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 1),
                              torch.zeros(4, 1, dtype=torch.uint8), 48, None)
    with pytest.raises(RuntimeError, match="float32"):
        gemv_kernel.int8_gemv(torch.zeros(1, 64, dtype=torch.float64), q, torch.ones(4, 1), None)


@pytest.mark.parametrize("bits, group", [(8, None), (4, 32), (4, 128), (4, 96)])
def test_quantized_linear_uses_the_kernel_for_decode_rows_only(bits, group, monkeypatch):
    lin = Linear(200, 51, bias=True)
    torch.nn.init.normal_(lin.bias)
    ql = QuantizedLinear.from_linear(lin, bits, group)
    calls = []
    real = gemv_kernel.int8_gemv if bits == 8 else gemv_kernel.int4_gemv
    monkeypatch.setattr(gemv_kernel, "int8_gemv" if bits == 8 else "int4_gemv",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    w = ql.dequantize()
    with torch.no_grad():
        for shape in [(1, 1, 200), (3, 200), (2, 2, 200)]:  # 1, 3, 4 rows: the kernel
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(calls)))
            y = ql(x)
            assert y.shape == (*shape[:-1], 51)
            _assert_fp32_close(y.reshape(-1, 51), x.reshape(-1, 200), w, ql.bias)
        assert len(calls) == 3
        big = torch.randn(2, 3, 200)  # 6 rows: prefill, PyTorch's kernels (or the dequantised fallback)
        y = ql(big)
        assert len(calls) == 3
        torch.testing.assert_close(y, torch.nn.functional.linear(big, w, ql.bias), atol=5e-2, rtol=2e-2)
    x = torch.randn(1, 200, requires_grad=True)  # autograd needs the weight path: never the kernel
    ql(x).sum().backward()
    assert len(calls) == 3 and x.grad is not None


def test_trainable_bias_keeps_its_gradient_on_the_kernel_path():
    """A bias that trains is added outside the kernel (which has no autograd), so its gradient still flows."""
    lin = Linear(64, 8, bias=True)
    torch.nn.init.normal_(lin.bias)
    ql = QuantizedLinear.from_linear(lin, 8, None)
    assert ql.bias.requires_grad
    x = torch.randn(1, 64)
    y = ql(x)  # grad mode on, x needs no grad: the kernel path
    assert ql._gemv[1] == "int8_gemv" and ql._gemv[2][-1] is None
    _assert_fp32_close(y.detach(), x, ql.dequantize(), ql.bias.detach())
    y.sum().backward()
    assert torch.equal(ql.bias.grad, torch.ones(8))


def _tiny(seed: int = 0) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=101, d_model=96, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=160,
                                 max_seq_len=64, tie_embeddings=False)
    return Transformer(cfg).init_weights(std=0.05, seed=seed).eval()


class _Recorder:
    """A logits processor that keeps every step's logits (and changes nothing)."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, ids, logits):
        self.steps.append(logits.detach().clone())
        return logits


@pytest.mark.parametrize("bits, group, head_bits", [(8, None, 8), (4, 32, 8), (4, 32, 4)])
def test_greedy_decode_with_kernel_equals_dequantised_model(bits, group, head_bits, monkeypatch):
    # fp32 activations on PyTorch's kernels too, so the prefill (more than 4 rows) rounds like the reference
    model = quantize(_tiny(), bits=bits, group_size=group, head_bits=head_bits, activation_dtype="float32")
    reference = dequantize_model(copy.deepcopy(model))  # float Linear layers holding the dequantised weights
    calls = []
    real8, real4 = gemv_kernel.int8_gemv, gemv_kernel.int4_gemv
    monkeypatch.setattr(gemv_kernel, "int8_gemv", lambda *a: calls.append(8) or real8(*a))
    monkeypatch.setattr(gemv_kernel, "int4_gemv", lambda *a: calls.append(4) or real4(*a))
    prompts = [[5, 17, 3, 99, 42, 7], [11, 2, 60]]  # uneven lengths, two rows: padding and batch 2
    out = {}
    for name, m in (("kernel", model), ("reference", reference)):
        rec = _Recorder()
        tokens = lmlab.generate(m, prompts, max_new_tokens=8, stop_token_ids=[], logits_processors=[rec])
        out[name] = (tokens, torch.stack(rec.steps))  # [steps, B, V]
    assert calls and (4 in calls) == (bits == 4 or head_bits == 4)
    assert out["kernel"][0] == out["reference"][0]
    torch.testing.assert_close(out["kernel"][1], out["reference"][1], atol=2e-5, rtol=1e-5)
    assert out["kernel"][1].std() > 0.1  # real logits, not a constant


def test_missing_compiler_falls_back_with_one_warning_line(monkeypatch, capsys):
    monkeypatch.setattr(gemv_kernel, "_state", {})
    monkeypatch.setattr(gemv_kernel, "_cpu_has_avx2_fma", lambda: False)
    assert gemv_kernel.kernel() is None and not gemv_kernel.available()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks AVX2" in err and err.startswith("warning:")
    lin = Linear(64, 8, bias=False)
    ql = QuantizedLinear.from_linear(lin, 8, None)
    with torch.no_grad():
        x = torch.randn(1, 64)
        torch.testing.assert_close(ql(x), x @ ql.dequantize().T, atol=2e-2, rtol=2e-2)  # PyTorch's kernel
    assert capsys.readouterr().err == ""  # said once, not per call


def test_switched_off_by_environment_without_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(gemv_kernel, "_state", {})
    monkeypatch.setenv("LMLAB_GEMV", "0")
    assert gemv_kernel.kernel() is None
    assert capsys.readouterr().err == ""
