"""lmlab's fp32 decode kernels (lmlab.core.native): the GEMV and one-query attention against float64 references,
the model's decode with them against PyTorch's ops, batch invariance, and the fallbacks."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.core import jit_extension, native
from lmlab.core.config import ModelConfig
from lmlab.core.linear import fast_linear
from lmlab.core.model import Block, Transformer


@pytest.fixture(scope="module", autouse=True)
def _kernels_built():
    """A machine that can build the kernels (AVX2, a compiler) must: otherwise these tests test nothing."""
    assert native.EXTENSION.unavailable_reason() is None, native.EXTENSION.unavailable_reason()
    assert native.kernels() is not None, "the fp32 decode kernels failed to build (see the warning above)"


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("N,K", [(13, 37), (70, 256), (129, 261), (8, 8)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemv_matches_float64(M, N, K, with_bias):
    g = torch.Generator().manual_seed(N * K + M)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if with_bias else None
    y = native.kernels().f32_gemv(x, w, b)
    ref = x.double() @ w.double().T + (b.double() if with_bias else 0)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * math.sqrt(K))


def test_gemv_row_does_not_depend_on_its_batch():
    """Each output row is the same arithmetic for M = 1..4: a row's logits do not change with its batch."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(4, 203, generator=g), torch.randn(77, 203, generator=g), torch.randn(77, generator=g)
    alone = torch.cat([native.kernels().f32_gemv(x[i:i + 1], w, b) for i in range(4)])
    for M in (2, 3, 4):
        assert torch.equal(native.kernels().f32_gemv(x[:M], w, b), alone[:M])


def test_fast_linear_takes_the_gemv_for_decode_rows_only(monkeypatch):
    calls = []
    real = native.f32_gemv
    monkeypatch.setattr(native, "f32_gemv", lambda *a: calls.append(a[0].shape) or real(*a))
    w, b = torch.randn(48, 40), torch.randn(48)
    with torch.inference_mode():
        for shape in [(1, 1, 40), (2, 2, 40), (1, 5, 40)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(fast_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert calls == [(1, 1, 40), (2, 2, 40), (1, 5, 40)]  # asked every time; it declines 5 rows (returns None)
    assert real(torch.randn(1, 5, 40), w, b) is None and real(torch.randn(1, 4, 40), w, b) is not None
    assert real(torch.randn(1, 40), w.T.contiguous().T, b) is None  # a strided weight: PyTorch's op


def test_gemv_not_used_when_autograd_needs_the_op():
    w = torch.randn(16, 8, requires_grad=True)
    y = fast_linear(torch.randn(1, 8), w)
    assert y.grad_fn is not None


@pytest.mark.parametrize("shape", [(1, 1, 64), (4, 1, 72), (2, 13), (7,)])
def test_rms_norm_matches_float64(shape):
    g = torch.Generator().manual_seed(len(shape))
    x, w = torch.randn(*shape, generator=g) * 4, torch.randn(shape[-1], generator=g)
    y = native.rms_norm(x, w, 1e-5)
    x64 = x.double()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    assert native.rms_norm(x.requires_grad_(), w, 1e-5) is None  # autograd: PyTorch's op
    assert native.rms_norm(torch.randn(5, 8), torch.ones(8), 1e-5) is None  # prefill rows: PyTorch's op


@pytest.mark.parametrize("shape", [(1, 1, 768), (4, 1, 77), (2, 13), (3, 8), (5,)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_float64(shape, affine):
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    x = torch.randn(*shape, generator=g) * 4 + 3  # a mean far from 0: a one-pass variance would lose digits
    w, b = (torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)) if affine else (None, None)
    y = native.layer_norm(x, w, b, 1e-5)
    ref = F.layer_norm(x.double(), (shape[-1],), None if w is None else w.double(), None if b is None else b.double(), 1e-5)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=2e-6)
    assert native.layer_norm(x.clone().requires_grad_(), w, b, 1e-5) is None  # autograd: PyTorch's op
    assert native.layer_norm(torch.randn(5, 8), None, None, 1e-5) is None  # prefill rows: PyTorch's op
    assert native.layer_norm(torch.randn(2, 8).t(), None, None, 1e-5) is None  # strided


def test_gelu_tanh_and_silu_mul_match_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3, 1, 1021, generator=g) * 6,  # uneven length: the vector loop and its tail
                   torch.tensor([-1e30, -100.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 100.0, 1e30]).expand(3, 1, 9)], -1)
    up = torch.randn(x.shape, generator=g)
    ref_gelu = F.gelu(x.double(), approximate="tanh")
    ref_silu = F.silu(x.double()) * up.double()
    for y, ref in ((native.gelu_tanh(x), ref_gelu), (native.silu_mul(x, up), ref_silu)):
        torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-30 + 1e-6 * 1e-3)
        assert torch.isfinite(y).all()
    assert native.gelu_tanh(torch.randn(5, 16)) is None  # prefill rows: PyTorch's op
    assert native.silu_mul(torch.randn(1, 16), torch.randn(1, 8)) is None  # shapes differ
    assert native.gelu_tanh(torch.randn(1, 16, requires_grad=True)) is None  # autograd


def _sdpa64(q, k, v):
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    p = (q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    return p @ v


@pytest.mark.parametrize("S", [1, 5, 63, 64, 65, 700, 4100])
@pytest.mark.parametrize("H,Hkv,D", [(6, 2, 64), (4, 4, 32), (3, 1, 8), (2, 2, 80)])
def test_decode_attention_matches_float64(S, H, Hkv, D):
    g = torch.Generator().manual_seed(S * 7 + D)
    cap = S + 9  # keys and values are views of a larger cache, as in decoding
    q = torch.randn(2, H, 1, D, generator=g)
    k = (torch.randn(2, Hkv, cap, D, generator=g) * 3).narrow(2, 0, S)  # * 3: peaked softmax, large exponents
    v = torch.randn(2, Hkv, cap, D, generator=g).narrow(2, 0, S)
    out = native.decode_attention(q, k, v)
    assert out.shape == (2, H, 1, D)
    torch.testing.assert_close(out.double(), _sdpa64(q, k, v), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("S", [1, 70, 4100])
def test_decode_attention_probabilities_are_the_softmax(S):
    """What H2O / Keyformer observe: the kernel's softmax [B, H, 1, S], across its chunks, sums to one per head."""
    g = torch.Generator().manual_seed(S)
    q, k, v = torch.randn(2, 6, 1, 16, generator=g), torch.randn(2, 2, S, 16, generator=g) * 3, torch.randn(2, 2, S, 16, generator=g)
    out, probs = native.decode_attention(q, k, v, with_probs=True)
    want = (q.double() @ k.double().repeat_interleave(3, 1).transpose(-1, -2) / 4).softmax(-1)  # [2, 6, 1, S]
    torch.testing.assert_close(probs.double(), want, rtol=1e-5, atol=1e-7)
    assert torch.equal(out, native.decode_attention(q, k, v))


def test_decode_attention_row_does_not_depend_on_its_batch():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 6, 1, 32, generator=g), torch.randn(3, 2, 300, 32, generator=g), torch.randn(3, 2, 300, 32, generator=g)
    both = native.decode_attention(q, k, v)
    for b in range(3):
        assert torch.equal(native.decode_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1]), both[b:b + 1])


def test_decode_attention_declines_what_it_does_not_do():
    q, k = torch.randn(1, 2, 1, 12), torch.randn(1, 2, 5, 12)
    assert native.decode_attention(q, k, k) is None  # D not a multiple of 8
    q, k = torch.randn(1, 2, 1, 16, dtype=torch.float64), torch.randn(1, 2, 5, 16, dtype=torch.float64)
    assert native.decode_attention(q, k, k) is None  # not fp32
    q, k = torch.randn(1, 2, 1, 16, requires_grad=True), torch.randn(1, 2, 5, 16)
    assert native.decode_attention(q, k, k) is None  # autograd needs the op


def _model(**kw):
    cfg = ModelConfig.llama_like(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=96,
                                 max_seq_len=128, **kw)
    return Transformer(cfg).init_weights(std=0.1, seed=3).eval()


def _greedy_logits(model, prompts, steps=6):
    """Per-step logits [steps, B, V] of greedy decoding rows of uneven length (right-padded prefill)."""
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    lengths = torch.tensor([len(p) for p in prompts])
    cache = model.new_cache(B, T + steps + 1)
    out = []
    with torch.inference_mode():
        logits = model(ids, cache=cache, input_lengths=lengths, logits_at=lengths - 1)[:, 0]
        for _ in range(steps):
            out.append(logits)
            logits = model(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]
    return torch.stack(out)


def _count_native_layers(monkeypatch, calls):
    """Count the blocks computed by the one-call decode layer (``Block._native_decode`` returning a tensor)."""
    real = Block._native_decode

    def counted(self, *a):
        y = real(self, *a)
        calls["layer"] += y is not None
        return y

    monkeypatch.setattr(Block, "_native_decode", counted)


def test_model_decode_with_the_kernels_matches_pytorch_ops(monkeypatch):
    """Rows of uneven length (a ragged cache takes the masked SDPA path, a uniform one the kernel) on a
    grouped-query model: logits agree with the kernels switched off, and the kernels did run."""
    model = _model()
    prompts = [[5, 9, 2, 7, 1], [3, 3], [8, 1, 4, 4, 6, 2, 9]]
    calls = {"attn": 0, "layer": 0}
    real = native.decode_attention
    monkeypatch.setattr(native, "decode_attention", lambda *a: calls.__setitem__("attn", calls["attn"] + 1) or real(*a))
    _count_native_layers(monkeypatch, calls)
    with_kernels = _greedy_logits(model, prompts)
    single = _greedy_logits(model, [prompts[2]])  # a uniform cache: every decode step takes the one-call layer
    assert calls["layer"] > 0
    monkeypatch.setattr(native, "ENABLED", False)
    without = _greedy_logits(model, prompts)
    single_without = _greedy_logits(model, [prompts[2]])
    torch.testing.assert_close(with_kernels, without, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, single_without, rtol=1e-5, atol=1e-5)
    assert single.std() > 0.1


def test_gpt2_like_decode_with_the_kernels_matches_pytorch_ops(monkeypatch):
    """LayerNorm, tanh GELU and learned positions (GPT-2's family): decode logits agree with the kernels off,
    and the norm and activation kernels did run."""
    cfg = ModelConfig(model_type="gpt2", vocab_size=97, d_model=64, n_layers=2, n_heads=4, d_mlp=256, max_seq_len=64,
                      norm_type="layernorm", norm_eps=1e-5, pos_type="learned", mlp_type="plain", activation="gelu_new",
                      qkv_bias=True, attn_out_bias=True, mlp_bias=True, norm_bias=True, tie_embeddings=True)
    model = Transformer(cfg).init_weights(std=0.1, seed=4).eval()
    calls = {"ln": 0, "gelu": 0}
    real_ln, real_gelu = native.layer_norm, native.gelu_tanh
    monkeypatch.setattr(native, "layer_norm", lambda *a: calls.__setitem__("ln", calls["ln"] + 1) or real_ln(*a))
    monkeypatch.setattr(native, "gelu_tanh", lambda *a: calls.__setitem__("gelu", calls["gelu"] + 1) or real_gelu(*a))
    prompts = [[5, 9, 2, 7, 1], [3, 3], [8, 1, 4, 4, 6, 2, 9]]
    with_kernels = _greedy_logits(model, prompts)
    assert calls["ln"] > 0 and calls["gelu"] > 0
    monkeypatch.setattr(native, "ENABLED", False)
    torch.testing.assert_close(with_kernels, _greedy_logits(model, prompts), rtol=1e-5, atol=1e-5)
    assert with_kernels.std() > 0.1


@pytest.mark.parametrize("bias", [False, True])
def test_one_call_decode_layer_matches_the_layer_by_layer_path(bias, monkeypatch):
    """Three rows of one length (a uniform cache), grouped-query heads, with and without q/k/v and MLP biases
    (Qwen2-style): the one-call layer gives the logits of the layer-by-layer kernels, and it did run."""
    model = _model(qkv_bias=bias, mlp_bias=bias)
    if bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    prompts = [[5, 9, 2, 7, 1], [3, 3, 8, 1, 2], [8, 1, 4, 4, 6]]
    calls = {"layer": 0}
    _count_native_layers(monkeypatch, calls)
    fused = _greedy_logits(model, prompts, steps=8)
    assert calls["layer"] == 8 * model.config.n_layers  # every decode step of every block
    for block in model.blocks:
        monkeypatch.setattr(block, "_native_shape", False)
    torch.testing.assert_close(fused, _greedy_logits(model, prompts, steps=8), rtol=1e-5, atol=1e-5)
    assert fused.std() > 0.1


def _gpt2_like(n_layers=2):
    cfg = ModelConfig(model_type="gpt2", vocab_size=97, d_model=64, n_layers=n_layers, n_heads=4, d_mlp=256,
                      max_seq_len=64, norm_type="layernorm", norm_eps=1e-5, pos_type="learned", mlp_type="plain",
                      activation="gelu_new", qkv_bias=True, attn_out_bias=True, mlp_bias=True, norm_bias=True,
                      tie_embeddings=True)
    model = Transformer(cfg).init_weights(std=0.1, seed=4).eval()
    with torch.no_grad():  # biases and norm shifts away from their init, so a dropped one changes the logits
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("weights", ["fp32", "int4-a8", "int4-fp32act"])
def test_one_call_decode_layer_covers_gpt2_and_quantized_blocks(family, weights, monkeypatch):
    """The GPT-2 family (LayerNorm with bias, learned positions, tanh GELU, biased projections) and int4
    (group 32, int8 or fp32 activations) projections through the same one-call layer: every decode step of every
    block takes it, and the logits equal the layer-by-layer kernels' (which call the same GEMV kernels)."""
    from lmlab.efficient import quant, quantize

    model = _gpt2_like() if family == "gpt2" else _model(qkv_bias=True, mlp_bias=True)
    if weights != "fp32":
        quantize(model, bits=4, group_size=32, head=False)
        monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", "int8" if weights == "int4-a8" else "fp32")
    prompts = [[5, 9, 2, 7, 1], [3, 3, 8, 1, 2], [8, 1, 4, 4, 6]]
    calls = {"layer": 0}
    _count_native_layers(monkeypatch, calls)
    fused = _greedy_logits(model, prompts, steps=8)
    assert calls["layer"] == 8 * model.config.n_layers
    for block in model.blocks:
        monkeypatch.setattr(block, "_native_shape", False)
    torch.testing.assert_close(fused, _greedy_logits(model, prompts, steps=8), rtol=1e-5, atol=1e-5)
    assert fused.std() > 0.1


def test_one_call_decode_layer_steps_aside_for_an_adapter_and_for_int8(monkeypatch):
    """A projection that is neither a plain Linear nor an int4 layer on lmlab's kernel sends its block through the
    layer-by-layer path: a LoRA adapter (random B, so it changes the logits) on block 0's o_proj computes the
    adapted model, and int8 (whose q/k/v are not fused) never takes the one-call layer."""
    from lmlab.efficient import quantize
    from lmlab.peft import LoraConfig, add_adapter

    calls = {"layer": 0}
    _count_native_layers(monkeypatch, calls)
    model = _gpt2_like()
    plain = _greedy_logits(model, [[5, 9, 2]], steps=4)
    add_adapter(model, LoraConfig(r=4, target_modules=r"blocks\.0\.attn\.o_proj", init_b="random"))
    calls["layer"] = 0
    adapted = _greedy_logits(model, [[5, 9, 2]], steps=4)
    assert calls["layer"] == 4  # block 1 only
    for block in model.blocks:
        monkeypatch.setattr(block, "_native_shape", False)
    torch.testing.assert_close(adapted, _greedy_logits(model, [[5, 9, 2]], steps=4), rtol=1e-5, atol=1e-5)
    assert (adapted - plain).abs().max() > 1e-2
    calls["layer"] = 0
    _greedy_logits(quantize(_gpt2_like(), bits=8, head=False), [[5, 9, 2]], steps=4)
    assert calls["layer"] == 0


def test_one_call_decode_layer_steps_aside_for_a_hook(monkeypatch):
    """A hook on any of the block's points (here the attention output of layer 1) is called at every decode step
    and changes the logits: the block takes the layer-by-layer path."""
    model = _model()
    calls = {"layer": 0, "hook": 0}
    _count_native_layers(monkeypatch, calls)
    plain = _greedy_logits(model, [[5, 9, 2]])

    def hook(z, name):
        calls["hook"] += 1
        return z * 0.5

    with model.hooks([("blocks.1.attn.out", hook)]):
        calls["layer"] = 0
        hooked = _greedy_logits(model, [[5, 9, 2]])
    assert calls["hook"] == 7  # the prefill and 6 decode steps
    assert calls["layer"] == 6  # block 0 still took the one-call layer; block 1 did not
    assert not torch.allclose(plain, hooked)


@pytest.mark.parametrize("policy", ["h2o", "keyformer", "window"])
def test_evicting_decode_with_the_kernels_matches_pytorch_ops(policy, monkeypatch):
    """A score-based policy observes the kernel's softmax instead of the eager path's: the same tokens kept,
    the same logits, through several evictions."""
    from lmlab.efficient import kv_policy

    model = _model()
    prompt = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(5))

    def run():
        cache = model.new_cache(1, 80, policy=kv_policy(policy, budget=16))
        out = []
        with torch.inference_mode():
            logits = model(prompt, cache=cache)[:, -1]
            for _ in range(20):
                out.append(logits)
                logits = model(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]
        return torch.stack(out), cache.slot_pos.clone()

    with_kernels, kept = run()
    monkeypatch.setattr(native, "ENABLED", False)
    without, kept_without = run()
    torch.testing.assert_close(with_kernels, without, rtol=1e-5, atol=1e-5)
    assert torch.equal(kept, kept_without)


@pytest.mark.parametrize("policy", ["h2o", "keyformer"])
def test_score_accumulation_kernel_matches_the_tensor_ops(policy, monkeypatch):
    """``native.accumulate_scores`` against the policy's tensor ops, on the accumulated per-head scores: three
    right-padded prompts of uneven length (padded queries add nothing), prefilled in chunks of 7 (T > 1, S not a
    multiple of 8), then decode steps with per-head evictions (key positions differ per head, empty slots -1);
    for Keyformer a rising temperature and its Gumbel noise. The kernel did run, and a wrong contribution (the
    probabilities for Keyformer's softmax, or no padding mask) would move the scores by far more than 1e-5."""
    from lmlab.efficient import kv_policy

    model = _model()
    prompts = [[5, 9, 2, 7, 1, 3, 3, 8, 1, 2, 6, 6, 4], [3, 3, 8], [8, 1, 4, 4, 6, 2, 9, 9, 1]]
    B, T = len(prompts), max(map(len, prompts))
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, row in enumerate(prompts):
        ids[i, :len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(r) for r in prompts])
    calls = {"n": 0}
    real = native.accumulate_scores
    monkeypatch.setattr(native, "accumulate_scores", lambda *a: calls.__setitem__("n", calls["n"] + 1) or real(*a))

    def scores():
        cache = model.new_cache(B, 40, policy=kv_policy(policy, budget=8, slack=2))
        with torch.inference_mode():
            for i in range(0, T, 7):
                chunk = ids[:, i:i + 7]
                model(chunk, cache=cache, input_lengths=(lengths - i).clamp(0, chunk.shape[1]))
            tok = torch.tensor([[1], [2], [3]])
            for _ in range(9):
                tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
        return cache.policy.score.clone(), cache.positions_per_head().clone()

    fast, pos = scores()
    assert calls["n"] > 0
    monkeypatch.setattr(native, "accumulate_scores", lambda *a: False)  # the tensor ops
    slow, pos_slow = scores()
    assert torch.equal(pos, pos_slow)  # the same evictions
    assert (pos[..., :8] != pos[..., :1, :8]).any()  # heads of one layer keep different tokens
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert slow.abs().max() > 0.5


def test_switched_off_by_environment_without_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(native.EXTENSION, "_module", jit_extension._UNBUILT)
    monkeypatch.setenv("LMLAB_NATIVE", "0")
    assert native.kernels() is None
    assert native.f32_gemv(torch.randn(1, 8), torch.randn(4, 8), None) is None
    assert capsys.readouterr().err == ""


def test_no_avx2_falls_back_with_one_warning_line(monkeypatch, capsys):
    monkeypatch.setattr(native.EXTENSION, "_module", jit_extension._UNBUILT)
    monkeypatch.setattr(jit_extension, "cpu_has_avx2_fma", lambda: False)
    assert native.kernels() is None
    with torch.inference_mode():
        x, w = torch.randn(1, 8), torch.randn(4, 8)
        torch.testing.assert_close(fast_linear(x, w), F.linear(x, w))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: lmlab's fp32 decode kernels") and "lacks AVX2" in err
    native.kernels()
    assert capsys.readouterr().err == ""  # said once, not per call


def test_hash_uniform_is_the_tensor_computation_bit_for_bit():
    """Keyformer's noise: the kernel's uniforms equal the int64 tensor ops', empty slots (-1) and seeds of any
    sign included, so evictions do not depend on whether the kernel ran."""
    from lmlab.efficient.kv_policies import _hash_uniform

    g = torch.Generator().manual_seed(3)
    key_pos = torch.randint(-1, 5000, (3, 2, 2, 37), generator=g)
    query = torch.randint(0, 1 << 20, (2, 4), generator=g)
    layers = torch.tensor([0, 5, 11])
    for seed in (0, 7, -3, 1 << 40):
        u = native.hash_uniform(seed, layers, query, key_pos, 3)
        want = _hash_uniform(seed, layers, query, key_pos, 3).view(3, 2, 6, 4, 37)
        assert torch.equal(u, want) and 0 < float(u.min()) and float(u.max()) < 1


def test_a_stale_build_lock_is_removed_and_a_live_one_waited_for(tmp_path, monkeypatch, capsys):
    """torch's build lock is a bare file and torch waits for it without limit: one left by a killed build would
    make every later process hang. A lock older than STALE_LOCK_SECONDS (a build takes 1-2 minutes) is removed
    with a note; a younger one is waited for, until its build removes it or it grows stale while we wait (the
    lock of a build killed a moment before this process started: session 14's hang)."""
    import os
    import threading
    import time

    monkeypatch.setenv("LMLAB_KERNEL_DIR", str(tmp_path))
    where = native.EXTENSION.build_directory()
    assert where == tmp_path / "lmlab_native"
    where.mkdir()
    lock = where / "lock"
    lock.touch()
    old = time.time() - jit_extension.STALE_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    assert native.EXTENSION.clear_stale_lock(where) and not lock.exists()
    err = capsys.readouterr().err
    assert err.startswith("note: removed a stale build lock") and err.count("\n") == 1
    assert not native.EXTENSION.clear_stale_lock(where)  # nothing left to remove

    # a live build: its lock goes away after 0.3 s; we wait, say so once, and remove nothing
    lock.touch()
    threading.Timer(0.3, lock.unlink).start()
    start = time.monotonic()
    assert not native.EXTENSION.clear_stale_lock(where, poll_seconds=0.05)
    assert 0.25 < time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert err.startswith("note: waiting for another build") and err.count("\n") == 1

    # a lock fresh when we start that nobody removes: it becomes stale while we wait, then it is removed
    monkeypatch.setattr(jit_extension, "STALE_LOCK_SECONDS", 0.5)
    lock.touch()
    start = time.monotonic()
    assert native.EXTENSION.clear_stale_lock(where, poll_seconds=0.05) and not lock.exists()
    assert 0.4 < time.monotonic() - start < 5
    assert capsys.readouterr().err.count("note: removed a stale build lock") == 1
