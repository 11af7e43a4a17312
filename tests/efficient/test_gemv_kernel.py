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
from lmlab.core import jit_extension
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


@pytest.fixture(autouse=True)
def _fp32_activations_unless_a_test_says_otherwise(monkeypatch):
    """The default mode is int8 activations; the fp32-kernel tests pin fp32, the int8 ones set it themselves."""
    monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", "fp32")


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


def _int4_codes(n: int, k: int, group: int, g: torch.Generator):
    """(codes [n, k], zero points [n, G], scales [n, G]) with codes and zero points at both ends of the range."""
    G = quant.n_groups(k, group)
    q = torch.randint(0, 16, (n, k), generator=g)
    q[0, :] = 15
    q[-1, :] = 0
    zero = torch.randint(0, 16, (n, G), generator=g)
    zero[0, :], zero[-1, :] = 0, 15
    scale = torch.rand(n, G, generator=g) * 0.02 + 1e-4
    return q, zero, scale


# (9, 640, 32) and (17, 1056, 32): 20 and 33 groups a row, i.e. whole blocks of 8 groups and a tail in the
# kernel's zero-point sum (zero_point_term); the others have fewer than 8 groups (tail only) or exactly 24
@pytest.mark.parametrize("n, k, group", [(37, 100, 32), (5, 77, 64), (9, 130, 96), (33, 256, 128), (7, 40, 64),
                                         (65, 768, 32), (11, 31, 32), (3, 200, 256), (9, 640, 32), (17, 1056, 32)])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_int4_gemv_equals_dequantised_matmul(n, k, group, m):
    g = torch.Generator().manual_seed(n * 1000 + k + m + group)
    q, zero, scale = _int4_codes(n, k, group, g)
    x = torch.randn(m, k, generator=g) * 3
    bias = torch.randn(n, generator=g) if m % 2 else None
    y = gemv_kernel.int4_gemv(x, pack_int4(q), scale, zero.to(torch.uint8), group, bias)
    _assert_fp32_close(y, x, dequantize_codes(q, scale, zero, group), bias)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_rows_split_across_two_threads_give_the_same_result(m):
    """The suite runs one thread; decode runs two. 301 rows split in two uneven chunks, each ending in a
    leftover row, must give what one thread gives, bit for bit (each row is computed the same way)."""
    x, q4, scale4, zero, group, outs = _one_and_two_threads(m, 200, 64, gemv_kernel.int8_gemv, gemv_kernel.int4_gemv)
    _assert_fp32_close(outs[1][1], x, dequantize_codes(q4, scale4, zero, group), None)


def _one_and_two_threads(m: int, k: int, group: int, int8_fn, int4_fn):
    """(x, int4 codes, scales, zeros, group, [(int8 out, int4 out) with 1 thread, ... with 2]) for 301 rows
    split in two uneven chunks; asserts the two thread counts agree bit for bit."""
    g = torch.Generator().manual_seed(m)
    n, groups = 301, -(-k // group)
    q8 = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    q4 = torch.randint(0, 16, (n, k), generator=g)
    scale8, scale4 = torch.rand(n, 1, generator=g), torch.rand(n, groups, generator=g)
    zero = torch.randint(0, 16, (n, groups), generator=g).to(torch.uint8)
    x = torch.randn(m, k, generator=g)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((int8_fn(x, q8, scale8, None), int4_fn(x, pack_int4(q4), scale4, zero, group, None)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    return x, q4, scale4, zero, group, outs


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
    with torch.no_grad():  # no gradient can flow: the kernel adds the bias itself (one aten::add less a layer)
        y2 = ql(x)
    assert ql._gemv[2][-1] is ql.bias
    torch.testing.assert_close(y2, y.detach(), atol=1e-6, rtol=1e-6)


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
    monkeypatch.setattr(gemv_kernel.EXTENSION, "_module", jit_extension._UNBUILT)
    monkeypatch.setattr(jit_extension, "cpu_has_avx2_fma", lambda: False)
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
    monkeypatch.setattr(gemv_kernel.EXTENSION, "_module", jit_extension._UNBUILT)
    monkeypatch.setenv("LMLAB_GEMV", "0")
    assert gemv_kernel.kernel() is None
    assert capsys.readouterr().err == ""


# -- int8 activations (llama.cpp's Q8_0) ------------------------------------------------------------------
def _q8_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The int8-activation kernel's arithmetic in float64: x quantized per 32 columns (in float32, with the
    kernel's rounding), dequantized, times the dequantized weight."""
    return _reference(quant.q8_0_activations(x), w, bias)


def _assert_q8_close(y, x, w, bias, magnitude=None):
    """Within fp32 accumulation error of the terms the kernel sums: |x| |w| (int8), or |x| (q + z) s for int4,
    whose zero-point term is subtracted from sum q x s at the end (``magnitude`` [N, K], default |w|)."""
    ref = _q8_reference(x, w, bias)
    magnitude = w.abs() if magnitude is None else magnitude
    scale = x.double().abs() @ magnitude.double().T + 1.0  # [M, N]
    err = (y.double() - ref).abs() / scale
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert err.max().item() < 2e-6, err.max().item()


def _awkward_activations(m: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Negative values, an all-zero 32-block, a block with one outlier, and per-row magnitudes that differ."""
    x = torch.randn(m, k, generator=g) * torch.logspace(-2, 1, m).unsqueeze(1)  # [M, K]
    if k > 64:
        x[:, 32:64] = 0.0  # d = 0 for this block
        x[0, 70] = 200.0  # one outlier: its block's other elements round coarsely
    return x


def _assert_within_rounding_bound(y_a8, y_fp32, x, w, magnitude=None):
    """|y_a8 - y_fp32| <= sum_k |w_k| max|x_block(k)| / 254 (+ fp32 slack), and the rounding did happen."""
    K = x.shape[1]
    blocks = torch.nn.functional.pad(x.abs(), (0, -K % 32)).reshape(x.shape[0], -1, 32).amax(-1)  # [M, K/32]
    half_step = blocks.repeat_interleave(32, dim=1)[:, :K] / 254  # [M, K]
    bound = half_step.double() @ w.double().abs().T  # [M, N]
    slack = 4e-6 * (x.double().abs() @ (w.abs() if magnitude is None else magnitude).double().T + 1.0)
    diff = (y_a8.double() - y_fp32.double()).abs()
    assert (diff <= bound + slack).all(), (diff - bound).max().item()
    assert diff.max() > 0  # the int8 mode really rounds (an fp32 kernel would pass the bound trivially)


@pytest.mark.parametrize("n, k, group", [(37, 96, 32), (5, 160, 32), (9, 224, 96), (33, 288, 96), (65, 480, 160),
                                         (11, 31, 32), (7, 77, 64), (3, 800, 128), (9, 640, 32), (17, 1056, 32)])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_int4_gemv_a8_equals_q8_reference_arithmetic(n, k, group, m):
    g = torch.Generator().manual_seed(n * 1000 + k + m + group)
    q, zero, scale = _int4_codes(n, k, group, g)
    x = _awkward_activations(m, k, g)
    bias = torch.randn(n, generator=g) if m % 2 else None
    w = dequantize_codes(q, scale, zero, group)
    args = (pack_int4(q), scale, zero.to(torch.uint8), group, bias)
    y = gemv_kernel.int4_gemv_a8(x, *args)
    magnitude = dequantize_codes(q, scale, -zero, group)  # (q + z) s
    _assert_q8_close(y, x, w, bias, magnitude)
    _assert_within_rounding_bound(y, gemv_kernel.int4_gemv(x, *args), x, w, magnitude)


@pytest.mark.parametrize("n, k", [(37, 96), (5, 77), (64, 800), (129, 3072), (3, 31)])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_int8_gemv_a8_equals_q8_reference_arithmetic(n, k, m):
    g = torch.Generator().manual_seed(n * 1000 + k + m)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    q[0, :] = 127  # both ends: |w| * |xq| pairs reach 2 * 127 * 127, just below int16 saturation
    q[-1, :] = -127
    q[1 % n, ::3] = 0
    scale = torch.rand(n, 1, generator=g) * 0.02 + 1e-4
    x = _awkward_activations(m, k, g)
    x[:, :16] = x[:, :16].abs().amax() * torch.tensor([1.0, -1.0]).repeat(8)  # codes +-127 in the first block
    bias = torch.randn(n, generator=g) if m % 2 else None
    y = gemv_kernel.int8_gemv_a8(x, q, scale, bias)
    _assert_q8_close(y, x, q.float() * scale, bias)
    _assert_within_rounding_bound(y, gemv_kernel.int8_gemv(x, q, scale, bias), x, q.float() * scale)


def test_q8_0_activations_rounds_per_block_within_half_a_step():
    x = torch.tensor([[0.0] * 32 + [1.0, -2.54, 0.3] + [0.0] * 29 + [5e-3] * 3])  # [1, 67]: zero, full, short block
    xd = quant.q8_0_activations(x)
    assert torch.equal(xd[0, :32], torch.zeros(32))
    d = 2.54 / 127
    torch.testing.assert_close(xd[0, 32:35], torch.tensor([50 * d, -2.54, 15 * d]), rtol=1e-6, atol=0)
    torch.testing.assert_close(xd[0, 64:], torch.full((3,), 5e-3), rtol=1e-6, atol=0)  # the block's max is exact
    y = torch.randn(3, 200) * 4
    err = (quant.q8_0_activations(y) - y).abs()
    step = torch.nn.functional.pad(y.abs(), (0, 24)).reshape(3, -1, 32).amax(-1).repeat_interleave(32, 1)[:, :200]
    assert (err <= step / 254 * (1 + 1e-5)).all() and err.max() > 0


@pytest.mark.parametrize("m", [1, 3, 4])
def test_a8_rows_split_across_two_threads_give_the_same_result(m):
    x, q4, scale4, zero, group, outs = _one_and_two_threads(m, 224, 32, gemv_kernel.int8_gemv_a8,
                                                            gemv_kernel.int4_gemv_a8)
    _assert_q8_close(outs[1][1], x, dequantize_codes(q4, scale4, zero, group), None)


def test_activation_mode_from_setting_and_environment(monkeypatch):
    lin = Linear(96, 8, bias=False)
    ql = QuantizedLinear.from_linear(lin, 4, 32)
    x = torch.randn(1, 96)
    monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", None)
    monkeypatch.delenv("LMLAB_GEMV_ACT", raising=False)
    with torch.no_grad():
        assert quant.gemv_activations() == quant.DEFAULT_GEMV_ACTIVATIONS
        monkeypatch.setenv("LMLAB_GEMV_ACT", "int8")
        y = ql(x)
        assert ql._gemv[1] == "int4_gemv_a8"
        _assert_q8_close(y, x, ql.dequantize(), None)
        monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", "fp32")  # the module setting wins over the environment
        y = ql(x)
        assert ql._gemv[1] == "int4_gemv"
        _assert_fp32_close(y, x, ql.dequantize(), None)
        monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", None)
        monkeypatch.setenv("LMLAB_GEMV_ACT", "int4")
        with pytest.raises(lmlab.errors.LmlabError, match=r"^\$LMLAB_GEMV_ACT must be one of fp32\|int8, got 'int4'$"):
            ql(x)


def _q8_inputs_where_the_kernel_runs(reference: torch.nn.Module, quantized: torch.nn.Module) -> None:
    """Make the dequantised float copy of ``quantized`` compute what the int8-activation kernel does: the
    inputs of a layer go through q8_0_activations on the calls the kernel serves (at most GEMV_MAX_ROWS rows;
    int4 up to GEMV_PREFILL_MAX_ROWS), and stay fp32 on PyTorch's path (longer prefills)."""
    bits = {name: m.bits for name, m in quantized.named_modules() if isinstance(m, QuantizedLinear)}

    def hook_for(limit):
        def hook(_module, args):
            x = args[0]
            if x.numel() // x.shape[-1] <= limit:
                return (quant.q8_0_activations(x).to(x.dtype),)
            return None
        return hook

    for name, module in reference.named_modules():
        if name in bits:
            limit = quant.GEMV_PREFILL_MAX_ROWS if bits[name] == 4 else quant.GEMV_MAX_ROWS
            module.register_forward_pre_hook(hook_for(limit))


@pytest.mark.parametrize("bits, group, head_bits", [(8, None, 8), (4, 32, 4), (4, 64, 8)])
def test_greedy_decode_with_int8_activations_equals_reference_arithmetic(bits, group, head_bits, monkeypatch):
    monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", "int8")
    model = quantize(_tiny(1), bits=bits, group_size=group, head_bits=head_bits, activation_dtype="float32")
    reference = dequantize_model(copy.deepcopy(model))
    _q8_inputs_where_the_kernel_runs(reference, model)
    fp32_reference = dequantize_model(copy.deepcopy(model))
    calls = []
    real8, real4 = gemv_kernel.int8_gemv_a8, gemv_kernel.int4_gemv_a8
    monkeypatch.setattr(gemv_kernel, "int8_gemv_a8", lambda *a: calls.append(8) or real8(*a))
    monkeypatch.setattr(gemv_kernel, "int4_gemv_a8", lambda *a: calls.append(4) or real4(*a))
    prompts = [[5, 17, 3, 99, 42, 7], [11, 2, 60]]  # uneven lengths, two rows: padding and batch 2
    out = {}
    for name, m in (("kernel", model), ("reference", reference), ("fp32", fp32_reference)):
        rec = _Recorder()
        tokens = lmlab.generate(m, prompts, max_new_tokens=8, stop_token_ids=[], logits_processors=[rec])
        out[name] = (tokens, torch.stack(rec.steps))  # [steps, B, V]
    assert calls and (4 in calls) == (bits == 4 or head_bits == 4)
    assert out["kernel"][0] == out["reference"][0]
    # Rounding to int8 is discontinuous: an fp32-rounding difference upstream (the kernel's summation order
    # vs F.linear's) can move one activation across a rounding boundary, one step d of its block, and the
    # KV cache carries that on. So: most (step, row) logits agree to fp32 rounding, and the rest differ by
    # far less than the int8 rounding itself moves them (a wrong lane scale, group or zero term: O(1)).
    per_step = (out["kernel"][1] - out["reference"][1]).abs().amax(-1)  # [steps, B]
    vs_fp32 = (out["kernel"][1] - out["fp32"][1]).abs().amax(-1)
    assert (per_step <= 2e-5).float().mean() >= 0.75, per_step
    assert per_step.max() <= 0.05 * vs_fp32.max(), (per_step.max(), vs_fp32.max())
    assert out["kernel"][1].std() > 0.1
    assert vs_fp32[1:].max() > 1e-2  # the int8 rounding is visible (the first step's logits come from prefill)


@pytest.mark.parametrize("bits, group", [(4, 32), (4, 96), (8, None)])
def test_int4_prefill_runs_the_a8_kernel_over_row_blocks(bits, group, monkeypatch):
    """int8 activations: int4 layers send up to GEMV_PREFILL_MAX_ROWS rows to the kernel in blocks of 4 (the
    last one short) and equal the Q8_0 reference; int8 layers and longer inputs keep PyTorch's kernels."""
    monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", "int8")
    lin = Linear(200, 51, bias=True)
    torch.nn.init.normal_(lin.bias)
    ql = QuantizedLinear.from_linear(lin, bits, group, activation_dtype=torch.float32)
    calls = []
    name = "int8_gemv_a8" if bits == 8 else "int4_gemv_a8"
    real = getattr(gemv_kernel, name)
    monkeypatch.setattr(gemv_kernel, name, lambda *a: calls.append(a[0].shape[0]) or real(*a))
    w = ql.dequantize()
    with torch.no_grad():
        x = torch.randn(3, 6, 200, generator=torch.Generator().manual_seed(0))  # 18 rows
        y = ql(x).reshape(18, 51)
        if bits == 4:
            assert calls == [4, 4, 4, 4, 2]
            _assert_q8_close(y, x.reshape(18, 200), w, ql.bias.detach())
        else:
            assert calls == []
            _assert_fp32_close(y, x.reshape(18, 200), w, ql.bias.detach())
        calls.clear()
        ql(torch.randn(quant.GEMV_PREFILL_MAX_ROWS + 1, 200))
        assert calls == []
