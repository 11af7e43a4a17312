"""Weight-only quantization: per-group error bounds, packed kernels == dequantised matmul, GPTQ beats RTN on
its own objective, save/reload to identical logits, LoRA on a quantized base, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.linear import Linear
from lmlab.core.model import Transformer
from lmlab.efficient import quant
from lmlab.efficient.gptq import GPTQConfig, HessianAccumulator, gptq_quantize
from lmlab.efficient.quant import QuantizedLinear, dequantize_codes, rtn
from lmlab.efficient.quantization import dequantize_model, quantize
from lmlab.errors import LmlabError


@pytest.fixture(autouse=True)
def _fp32_gemv_activations(monkeypatch):
    """These tests check PyTorch's packed kernels and the exact (fp32-activation) path against the dequantised
    matmul; the int8-activation default (and its int4 prefill over row blocks) is tested in test_gemv_kernel.py."""
    monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", "fp32")


def _tiny(seed: int = 0, **over) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=101, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=96,
                                 max_seq_len=64, tie_embeddings=False, **over)
    return Transformer(cfg).init_weights(std=0.05, seed=seed).eval()


def _ids(rows: int = 3, seq: int = 24, seed: int = 1, vocab: int = 101) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, seq), generator=torch.Generator().manual_seed(seed))


def _weight(n=48, k=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3, 5] = 0.9  # an outlier, so a group's range really varies
    w[7] = 0.0  # an all-zero row
    return w


@pytest.mark.parametrize("bits, group", [(8, 96), (4, 32), (4, 40), (4, 96)])
def test_round_trip_error_within_half_a_step_per_group(bits, group):
    w = _weight()
    q, scale, zero = rtn(w, bits, group)
    lo, hi = quant.qrange(bits)
    assert q.min() >= lo and q.max() <= hi and torch.equal(q, q.round())
    err = (w - dequantize_codes(q, scale, zero, group)).abs()  # [N, K]
    bound = scale.repeat_interleave(group, 1)[:, :w.shape[1]] / 2
    assert (err <= bound * (1 + 1e-5) + 1e-8).all()
    assert err[7].max() == 0  # zero rows stay exactly zero
    # 4 bits is really 16 levels per group: a coarser grid than 8 bits
    assert len(torch.unique(q[0, :group])) <= (256 if bits == 8 else 16)


def test_int4_packing_round_trips_odd_width():
    q = torch.randint(0, 16, (5, 13), generator=torch.Generator().manual_seed(0))
    packed = quant.pack_int4(q)
    assert packed.shape == (5, 7) and packed.dtype == torch.uint8
    assert torch.equal(quant.unpack_int4(packed, 13).long(), q)


@pytest.mark.parametrize("bits, group, act", [(8, None, torch.float32), (4, 32, torch.float32),
                                              (8, None, torch.bfloat16), (4, 64, torch.bfloat16)])
def test_packed_kernel_equals_dequantised_matmul(bits, group, act):
    lin = Linear(128, 48, bias=True)
    torch.nn.init.normal_(lin.bias)
    ql = QuantizedLinear.from_linear(lin, bits, group, activation_dtype=act)
    assert ql.kernel_supported()
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = ql(x)
        assert ql._kernel is not None  # the kernel path really ran
        ref = torch.nn.functional.linear(x.to(act).float(), ql.dequantize(), ql.bias)
    tol = 1e-4 if act == torch.float32 else 2e-2  # bf16 rounds the kernel's output
    torch.testing.assert_close(fast, ref, atol=tol, rtol=tol)
    assert (fast - ref).abs().max() < 0.1 * (ref - lin(x).detach()).abs().max() + tol  # far below quant error


@pytest.mark.parametrize("n, k, group", [(101, 64, 32), (50, 96, 64), (37, 40, 32)])
def test_int4_kernel_pads_rows_and_columns_to_its_shape(n, k, group):
    """Rows not a multiple of 16 (a 50257-word head) and inputs not a whole number of groups: the packed
    kernel runs on zero-padded codes and equals the dequantised matmul on several rows."""
    lin = Linear(k, n, bias=True)
    torch.nn.init.normal_(lin.bias)
    ql = QuantizedLinear.from_linear(lin, 4, group, activation_dtype=torch.float32)
    assert ql.kernel_supported()
    x = torch.randn(3, 2, k, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast = ql(x)
        assert ql._kernel is not None and fast.shape == (3, 2, n)
        ref = torch.nn.functional.linear(x, ql.dequantize(), ql.bias)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


def test_unsupported_kernel_shape_falls_back_to_dequantised_matmul():
    lin = Linear(40, 24, bias=False)  # 24 outputs: not a multiple of 16; group 40 is not a kernel group size
    ql = QuantizedLinear.from_linear(lin, 4, 40)
    assert not ql.kernel_supported()
    x = torch.randn(3, 40)
    with torch.no_grad():
        torch.testing.assert_close(ql(x), x @ ql.dequantize().T)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[-1])
    for chunk in x.split(50):
        acc.add(chunk)
    return acc.H


@pytest.mark.parametrize("bits, group, act_order", [(4, 32, False), (4, 32, True), (8, 64, False)])
def test_gptq_reconstruction_error_is_below_rtn(bits, group, act_order):
    """GPTQ's objective ||W X - Q X||^2 on correlated calibration inputs: lower than round-to-nearest."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g)
    x = torch.randn(400, 64, generator=g) @ mix  # [M, K], correlated features as in real activations
    w = torch.randn(32, 64, generator=g) * 0.1
    H = _hessian(x)
    torch.testing.assert_close(H, 2 * x.double().T @ x.double() / len(x))  # the running mean is exact

    def loss(q, s, z):
        return ((x @ w.T - x @ dequantize_codes(q, s, z, group).T) ** 2).sum().item()

    rtn_loss = loss(*rtn(w, bits, group))
    q, s, z = gptq_quantize(w, H, bits, group, GPTQConfig(act_order=act_order, block_size=16))
    assert q.min() >= quant.qrange(bits)[0] and q.max() <= quant.qrange(bits)[1]
    gptq_loss = loss(q, s, z)
    assert gptq_loss < 0.8 * rtn_loss, (gptq_loss, rtn_loss)


def test_gptq_with_identity_hessian_is_round_to_nearest():
    """With H = I no column informs another: GPTQ must reduce to RTN exactly (a check on the update rule)."""
    w = _weight(16, 64)
    q, s, z = gptq_quantize(w, torch.eye(64, dtype=torch.float64), 4, 64, GPTQConfig(damp=1e-9))
    rq, rs, rz = rtn(w, 4, 64)
    assert torch.equal(q, rq) and torch.allclose(s, rs) and torch.equal(z, rz)


def test_gptq_group_parameters_follow_the_reference_lazy_batch():
    """The reference code finds a group's scale/zero from W as the lazy batch left it: updated by earlier
    blocks only. So inside one block (K <= block_size) every group's parameters are RTN's on the original W;
    with blocks as small as a group, later groups see the earlier columns' error updates and differ."""
    w = _weight(16, 96)
    x = torch.randn(256, 96, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    H = 2 * x.T @ x / 256  # correlated inputs: every column's error moves the others
    _, rs, rz = rtn(w, 4, 32)
    _, s, z = gptq_quantize(w, H, 4, 32, GPTQConfig(block_size=128))
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    assert torch.equal(z, rz)
    _, s_small, _ = gptq_quantize(w, H, 4, 32, GPTQConfig(block_size=32))
    torch.testing.assert_close(s_small[:, 0], rs[:, 0], rtol=1e-6, atol=0)  # the first group sees no update
    assert (s_small[:, 1:] - rs[:, 1:]).abs().max() > 1e-4


@pytest.mark.parametrize("bits, method, group", [(8, "rtn", None), (4, "rtn", 32), (8, "gptq", None),
                                                 (4, "gptq", 32)])
def test_quantized_model_saves_and_reloads_to_identical_logits(tmp_path, bits, method, group):
    model = _tiny()
    ids = _ids()
    with torch.no_grad():
        before = model(ids)
    quantize(model, bits=bits, method=method, group_size=group, calibration=_ids(8, 32, seed=5))
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 2 * 7 + 1  # q k v o gate up down, head
    assert isinstance(model.lm_head, QuantizedLinear) and model.lm_head.bits == 8  # the head, int8, by default
    with torch.no_grad():
        after = model(ids)
    rel = ((after - before).norm() / before.norm()).item()
    assert 0 < rel < (0.05 if bits == 8 else 0.3), rel
    lmlab.save(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"]["bits"] == bits and cfg["quantization_config"]["method"] == method
    again = lmlab.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids), after)
    generated = lmlab.generate(again, [ids[0, :5].tolist()], max_new_tokens=4)
    assert len(generated[0]) >= 4


def test_gptq_model_error_below_rtn_on_calibration_text():
    base = _tiny(seed=3)
    calib = _ids(16, 32, seed=7)
    with torch.no_grad():
        ref = base(calib).log_softmax(-1)
    errs = {}
    for method in ("rtn", "gptq"):
        model = _tiny(seed=3)
        quantize(model, bits=4, method=method, group_size=32, calibration=calib, activation_dtype="float32")
        with torch.no_grad():
            errs[method] = (model(calib).log_softmax(-1) - ref).pow(2).mean().item()
    assert errs["gptq"] < errs["rtn"], errs


def test_lora_trains_on_quantized_base_and_merges_only_after_dequantising():
    from lmlab.peft import lora  # noqa: F401  (registers "lora")
    from lmlab.peft.inject import add_adapter, merge_adapter
    from lmlab.peft.lora import LoraConfig

    model = quantize(_tiny(), bits=4, group_size=32)
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_b="random"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    codes_before = model.blocks[0].attn.q_proj.qweight.clone()
    opt = torch.optim.SGD(trainable, lr=0.1)
    ids = _ids(4, 16)
    model.train()
    losses = []
    for _ in range(5):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(model.blocks[0].attn.q_proj.qweight, codes_before)  # the base stays frozen
    model.eval()
    with pytest.raises(LmlabError, match="base weight is quantized; dequantize first"):
        merge_adapter(model)
    with torch.no_grad():
        quant.FAST_KERNELS = False
        try:
            adapted = model(ids)
        finally:
            quant.FAST_KERNELS = True
        dequantize_model(model)
        assert isinstance(model.blocks[0].attn.q_proj, Linear)
        torch.testing.assert_close(model(ids), adapted, atol=1e-5, rtol=1e-5)  # adapters moved with the layer
        merge_adapter(model)
        torch.testing.assert_close(model(ids), adapted, atol=1e-4, rtol=1e-4)


def _saved(tmp_path, bits=4):
    model = quantize(_tiny(), bits=bits, group_size=32 if bits == 4 else None)
    lmlab.save(model, tmp_path)
    return tmp_path


def _edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d, fn):
    state = load_file(str(d / "model.safetensors"))
    fn(state)
    save_file(state, str(d / "model.safetensors"))


@pytest.mark.parametrize("edit, match", [
    (lambda d: _edit_config(d, lambda c: c["quantization_config"].update(bits=8, group_size=None)),
     r"tensor 'blocks\.0\.attn\.q_proj\.qweight' has shape \(64, 32\), .* imply \(64, 64\)"),
    (lambda d: _edit_config(d, lambda c: c["quantization_config"].update(group_size=64)),
     r"tensor 'blocks\.0\.attn\.q_proj\.qzeros' has shape \(64, 2\), .* imply \(64, 1\)"),
    (lambda d: _edit_config(d, lambda c: c["quantization_config"].update(quantized=["blocks.0.attn.q_proj"])),
     r"layer 'blocks\.0\.attn\.k_proj' is stored quantized but quantization_config.quantized does not list"),
    (lambda d: _edit_config(d, lambda c: c["quantization_config"]["quantized"].append("blocks.9.attn.q_proj")),
     r"lists 'blocks\.9\.attn\.q_proj', which is not a module"),
    (lambda d: _edit_config(d, lambda c: c["quantization_config"].update(quant_method="gptq")),
     r"quant_method 'gptq' is not supported"),
    (lambda d: _edit_config(d, lambda c: c["quantization_config"].update(bits=3)), r"bits must be one of"),
    (lambda d: _edit_tensors(d, lambda s: s.pop("blocks.1.mlp.down_proj.scales")),
     r"missing tensor 'blocks\.1\.mlp\.down_proj\.scales'"),
    (lambda d: _edit_tensors(d, lambda s: s.update({"blocks.0.attn.v_proj.qweight":
                                                    s["blocks.0.attn.v_proj.qweight"].to(torch.int8)})),
     r"'blocks\.0\.attn\.v_proj\.qweight' is torch\.int8, quantization_config implies torch\.uint8"),
])
def test_quantized_file_that_does_not_match_its_config_is_one_line_error(tmp_path, edit, match):
    d = _saved(tmp_path)
    edit(d)
    with pytest.raises(LmlabError, match=match) as err:
        lmlab.load(d)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=3), "bits must be one of"), (dict(method="awq"), "method must be one of"),
    (dict(bits=8, group_size=32), "int8 is per output channel"), (dict(bits=4, group_size=0), "positive integer"),
    (dict(method="gptq"), "needs calibration="), (dict(modules="nothing"), "matches no linear layer"),
    (dict(head_bits=2), "head_bits must be one of"),
])
def test_bad_quantize_arguments(kwargs, match):
    with pytest.raises(LmlabError, match=match):
        quantize(_tiny(), **kwargs)


@pytest.mark.parametrize("bits, method, head_bits", [(8, "rtn", None), (4, "rtn", None), (4, "gptq", 4)])
def test_tied_head_is_quantized_table_stays_float_and_round_trips(tmp_path, bits, method, head_bits):
    """A head tied to the embedding: its matmul reads codes, the lookup keeps the exact float table; the
    checkpoint reloads to identical logits; dequantize_model re-ties the head to that table."""
    tied = Transformer(ModelConfig.llama_like(vocab_size=101, d_model=64, n_layers=2, n_heads=4, d_mlp=96,
                                              max_seq_len=64, tie_embeddings=True)).init_weights(std=0.05, seed=2).eval()
    table = tied.embed.weight.detach().clone()
    ids = _ids()
    with torch.no_grad():
        before = tied(ids)
    quantize(tied, bits=bits, method=method, group_size=32 if bits == 4 else None, head_bits=head_bits,
             calibration=_ids(8, 32, seed=5))
    head = tied.lm_head
    assert isinstance(head, QuantizedLinear) and head.bits == (head_bits or 8)
    assert head.group_size == (64 if head.bits == 8 else 32)
    assert isinstance(tied.embed.weight, torch.nn.Parameter) and torch.equal(tied.embed.weight, table)
    err = (head.dequantize() - table).abs()  # RTN: the codes stand for the table within half a step per group
    assert 0 < err.max() <= (head.scales.max() / 2 * (1 + 1e-5) if method == "rtn" else 0.1)
    with torch.no_grad():
        after = tied(ids)
    assert 0 < ((after - before).norm() / before.norm()).item() < 0.3
    lmlab.save(tied, tmp_path)
    again = lmlab.load(tmp_path)
    assert isinstance(again.lm_head, QuantizedLinear) and torch.equal(again.embed.weight, table)
    with torch.no_grad():
        assert torch.equal(again(ids), after)
    dequantize_model(again)
    assert again.lm_head.weight is again.embed.weight  # tied again, to the exact float table


def test_head_can_stay_float_and_gptq_head_beats_rtn_head():
    model = quantize(_tiny(), bits=4, group_size=32, head=False)
    assert isinstance(model.lm_head, Linear) and "lm_head" not in model.quantization_config.quantized
    calib = _ids(16, 32, seed=7)
    base = _tiny(seed=3)
    with torch.no_grad():
        ref = base(calib).log_softmax(-1)
    errs = {}
    for method in ("rtn", "gptq"):  # blocks float, only the head quantized: GPTQ's head solve is what differs
        m = quantize(_tiny(seed=3), bits=4, method=method, group_size=32, modules="lm_head", calibration=calib,
                     activation_dtype="float32", head_bits=4)
        with torch.no_grad():
            errs[method] = (m(calib).log_softmax(-1) - ref).pow(2).mean().item()
    assert 0 < errs["gptq"] < errs["rtn"], errs


def test_quantizing_twice_is_refused():
    model = quantize(_tiny())
    with pytest.raises(LmlabError, match="already quantized"):
        quantize(model)


def test_public_quantize_is_the_function_even_after_its_module_is_imported():
    """``from lmlab.efficient import quantize`` (the README's usage) must not return a submodule that an
    earlier import bound to the same name on the package."""
    import importlib

    import lmlab.efficient

    importlib.import_module("lmlab.efficient.quantization")
    from lmlab.efficient import quantize as public

    assert callable(public) and public.__name__ == "quantize"
    assert lmlab.efficient.quantize is public


def test_quant_case_strings_parse_to_quantize_settings_and_bad_ones_name_the_flag():
    from lmlab.efficient.quantization import parse_quant_case

    assert parse_quant_case("4-gptq-h8") == (4, "gptq", 128, {"head_bits": 8})
    assert parse_quant_case("4-rtn-32-nohead") == (4, "rtn", 32, {"head": False})
    assert parse_quant_case("8-rtn") == (8, "rtn", None, {})
    for bad in ("5-rtn", "4-awq", "4-rtn-h3", "4"):
        with pytest.raises(LmlabError, match="--cases"):
            parse_quant_case(bad)


def test_int8_prefill_kernel_takes_odd_widths_and_misaligned_memory():
    """PyTorch's int8 prefill kernel crashes on AVX-512 CPUs for a weight row or an input that is not aligned (K=200,
    a checkpoint tensor memory-mapped at an odd offset, an input view): the layer pads and copies where needed and
    computes the dequantised product, on a weight stored at a 12-byte offset and an input view at an odd one."""
    from lmlab.efficient.quant import QuantizedLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 24)
    ql = QuantizedLinear.from_linear(lin, 8, None)
    storage = torch.zeros(12 + ql.qweight.numel(), dtype=torch.int8)
    odd = storage[12:].view_as(ql.qweight)
    odd.copy_(ql.qweight)
    ql.qweight = odd  # a buffer whose data pointer is 12 bytes past an aligned one
    assert ql.qweight.data_ptr() % 16 != 0
    for dtype in (torch.float32, torch.bfloat16):  # a bf16 input reaches the kernel as it is (no cast copies it)
        base = torch.randn(1 + 10 * 200).to(dtype)
        x = base[1:].view(10, 200)  # 10 rows: past the batch-1 kernel, PyTorch's int8 kernel (bf16 activations)
        assert x.data_ptr() % 64 != 0
        with torch.no_grad():
            y = ql(x).float()
        want = torch.nn.functional.linear(x.float(), ql.dequantize(), ql.bias)
        torch.testing.assert_close(y, want, atol=5e-2, rtol=2e-2)
