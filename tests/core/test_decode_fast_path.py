"""The lean decode step (issue 18) computes what the general path computes.

A decode step that no hook observes takes shortcuts: projections viewed heads-first without transposes, the
KV cache written through per-layer views, and (weight-only int4) q/k/v from one fused kernel call. These
tests pin each shortcut to the path that hooks force: same logits, on every family (rotary layouts, partial
rotary, GQA, sliding window, parallel residual, learned positions), on right-padded uneven rows with a cache,
over several steps; and the fused int4 call bit for bit equal to the separate ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.core.linear import FusedProjections, Linear
from lmlab.efficient import quant
from lmlab.efficient.quant import QuantizedLinear
from lmlab.efficient.quantization import quantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_models import FAMILIES, VOCAB, save_hf_model  # noqa: E402

PROMPTS = [[5, 17, 3, 9, 42], [11, 2, 60, 7, 1, 33, 8, 90, 4], [23, 71]]  # uneven: right padding, ragged cache
STEPS = 5
OBSERVED = r"blocks\.\d+\.attn\.(q|k|v|z)"  # the hook points whose observers turn the lean path off


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    save_hf_model(request.param, directory)
    return lmlab.load(directory)


def _decode(model, prompts=PROMPTS, steps=STEPS, hooked: bool = False):
    """Prefill right-padded ``prompts`` into a cache, then ``steps`` greedy decode forwards.

    Returns (logits of every decode step [steps, B, V], tokens [B, steps], names the hooks saw)."""
    B, T = len(prompts), max(len(p) for p in prompts)
    x = torch.zeros(B, T, dtype=torch.long)
    for b, p in enumerate(prompts):
        x[b, :len(p)] = torch.tensor(p)
    lengths = torch.tensor([len(p) for p in prompts])
    seen: list[str] = []

    def no_op(t, name):
        seen.append(name)
        return None  # keeps the tensor

    cache = model.new_cache(B, T + steps)
    outs, tokens = [], []
    with torch.no_grad(), model.hooks([(OBSERVED, no_op)] if hooked else []):
        logits = model(x, cache=cache, input_lengths=lengths, logits_at=lengths - 1)[:, 0]  # [B, V]
        for _ in range(steps):
            token = logits.argmax(-1)  # [B]
            tokens.append(token)
            logits = model(token[:, None], cache=cache)[:, -1]  # [B, V]
            outs.append(logits)
    return torch.stack(outs), torch.stack(tokens, dim=1), seen


def test_lean_decode_equals_the_hooked_path_on_padded_uneven_rows(model):
    fast, fast_tokens, none_seen = _decode(model)
    hooked, hooked_tokens, seen = _decode(model, hooked=True)
    n_layers = model.config.n_layers
    assert none_seen == []
    # the hooks fired on the prefill and on every decode step, at each of the four points of every layer
    assert len(seen) == (STEPS + 1) * n_layers * 4
    assert seen[-4:] == [f"blocks.{n_layers - 1}.attn.{h}" for h in ("q", "k", "v", "z")]
    assert torch.equal(fast_tokens, hooked_tokens)
    assert torch.equal(fast, hooked)  # the same arithmetic on the same values: bit for bit, on every family
    assert fast.std() > 0.1  # real logits


def test_lean_decode_equals_the_uncached_forward_of_each_row(model):
    fast, tokens, _ = _decode(model)
    with torch.no_grad():
        for b, prompt in enumerate(PROMPTS):
            sequence = torch.tensor([prompt + tokens[b].tolist()])  # [1, len + STEPS]
            ref = model(sequence)[0, len(prompt):]  # [STEPS, V]: the logits after each generated token
            torch.testing.assert_close(fast[:, b], ref, atol=1e-5, rtol=1e-5)


def test_hooks_still_see_the_decode_shapes(model):
    c = model.config
    shapes = {}

    def keep(t, name):
        shapes[name.split(".", 2)[2]] = tuple(t.shape)

    cache = model.new_cache(2, 8)
    with torch.no_grad(), model.hooks([(r"blocks\.0\.attn\.(q|k|v|z)", keep)]):
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache=cache)
        model(torch.tensor([[7], [8]]), cache=cache)
    assert shapes == {"attn.q": (2, 1, c.n_heads, c.head_dim), "attn.k": (2, 1, c.kv_heads, c.head_dim),
                      "attn.v": (2, 1, c.kv_heads, c.head_dim), "attn.z": (2, 1, c.n_heads, c.head_dim)}


# -- int4: q, k, v (and gate, up) in one kernel call -------------------------------------------------------------

def _layers(bits, group, sizes, K=96, seed=0):
    torch.manual_seed(seed)
    layers = [QuantizedLinear.from_linear(Linear(K, n, bias=True), bits, group) for n in sizes]
    for layer in layers:
        torch.nn.init.normal_(layer.bias)
    return layers


@pytest.mark.parametrize("mode", ["int8", "fp32"])
@pytest.mark.parametrize("group, sizes", [(32, (40, 72, 8)), (32, (1, 2, 3)), (96, (64, 32, 32))])
def test_fused_int4_projections_equal_separate_calls_bit_for_bit(mode, group, sizes, monkeypatch):
    monkeypatch.setattr(quant, "GEMV_ACTIVATIONS", mode)
    layers = _layers(4, group, sizes)
    holder = FusedProjections()
    with torch.no_grad():
        for shape in [(1, 1, 96), (2, 1, 96), (4, 96), (1, 3, 96)]:
            x = torch.randn(*shape)
            fused = holder(x, layers)
            assert fused is not None and holder._quantized_fused is not None
            for got, layer in zip(fused, layers):
                assert got.shape == (*shape[:-1], layer.out_features)
                assert torch.equal(got, layer(x))
        layers[1].scales.mul_(2)  # an in-place change: the fused copy must not serve the old codes
        x = torch.randn(1, 1, 96)
        assert torch.equal(holder(x, layers)[1], layers[1](x))


def test_fused_int4_path_steps_aside(monkeypatch):
    layers = _layers(4, 32, (40, 72))
    holder = FusedProjections()
    with torch.no_grad():
        assert holder(torch.randn(5, 96), layers) is None  # prefill rows: each layer on its own
        assert holder(torch.randn(1, 96), _layers(8, None, (40, 72))) is None  # int8: not fused
        handle = layers[0].register_forward_hook(lambda *a: None)  # a module hook must see its own call
        assert holder(torch.randn(1, 96), layers) is None
        handle.remove()
        monkeypatch.setattr(quant, "USE_GEMV", False)  # PyTorch's kernels: not fused
        assert holder(torch.randn(1, 96), layers) is None
        monkeypatch.setattr(quant, "USE_GEMV", True)
        assert holder(torch.randn(1, 96), layers) is not None


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa"])
def test_int4_decode_with_fused_projections_equals_unfused(family, tmp_path):
    save_hf_model(family, tmp_path)
    model = quantize(lmlab.load(tmp_path), bits=4, group_size=32)
    fused, fused_tokens, _ = _decode(model)
    assert any(getattr(m, "_quantized_fused", None) for b in model.blocks for m in (b.attn._fused_qkv,))
    handles = [b.attn.q_proj.register_forward_hook(lambda *a: None) for b in model.blocks]  # no fusion now
    try:
        separate, separate_tokens, _ = _decode(model)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(fused_tokens, separate_tokens)
    assert torch.equal(fused, separate)
    assert fused.shape == (STEPS, len(PROMPTS), VOCAB)
