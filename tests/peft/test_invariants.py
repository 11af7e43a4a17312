"""Invariants of the adapter machinery: adapter == merged == unmerged, disabled == base, zero-init == base,
named adapters switch and delete cleanly, base parameters and their names are untouched."""

from __future__ import annotations

import copy

import pytest
import torch

import lmlab
from lmlab.errors import LmlabError
from lmlab.peft import (
    LoraConfig, ParallelAdapterConfig, SeriesAdapterConfig, active_adapter, add_adapter, adapter_state_dict,
    count_parameters, delete_adapter, disable_adapters, list_adapters, load_adapter, merge_adapter,
    merge_and_unload, save_adapter, set_adapter, unmerge_adapter,
)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def model(hf_dir):
    return lmlab.load(hf_dir("llama_gqa"))


def _run(m, ids):
    with torch.no_grad():
        return m(ids)


def test_zero_init_b_equals_base_and_disabled_is_bitwise_base(model, ids):
    base = _run(model, ids)
    add_adapter(model, LoraConfig(r=4, target_modules=ALL))
    torch.testing.assert_close(_run(model, ids), base, rtol=0, atol=0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if "lora_B" in _:
                p.normal_()
    assert not torch.allclose(_run(model, ids), base)
    with disable_adapters(model):
        assert torch.equal(_run(model, ids), base)
    assert not torch.allclose(_run(model, ids), base)


def test_adapter_equals_merged_equals_unmerged(model, ids):
    base = _run(model, ids)
    torch.manual_seed(0)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=ALL, init_b="random", use_rslora=True))
    adapted = _run(model, ids)
    w0 = model.blocks[0].attn.q_proj.weight.detach().clone()
    merge_adapter(model)
    assert not torch.equal(model.blocks[0].attn.q_proj.weight, w0)
    torch.testing.assert_close(_run(model, ids), adapted, atol=2e-5, rtol=1e-5)
    unmerge_adapter(model)
    torch.testing.assert_close(model.blocks[0].attn.q_proj.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(_run(model, ids), adapted, atol=2e-5, rtol=1e-5)
    merge_adapter(model)
    with disable_adapters(model):  # a merged adapter is unmerged by disabling
        torch.testing.assert_close(_run(model, ids), base, atol=1e-5, rtol=1e-5)


def test_base_state_dict_names_unchanged_and_only_adapter_trains(model, ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q_class = type(model.blocks[0].attn.q_proj)
    targets = add_adapter(model, LoraConfig(r=2))
    assert targets == [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    after = model.state_dict()
    assert set(before) <= set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(".adapters.default.lora_" in k for k in set(after) - set(before))
    assert type(model.blocks[0].attn.q_proj) is q_class  # the module is not wrapped or replaced
    trainable, total = count_parameters(model)
    assert trainable == 2 * (2 * 64 + 64 * 2 + 2 * 64 + 32 * 2)  # 2 layers x (q: A+B, v: A+B), GQA v is 32 wide
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {k for k in after if "lora_" in k}
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    assert model.blocks[0].attn.q_proj.weight.grad is None
    assert len(adapter_state_dict(model)) == 8


def test_named_adapters_switch_and_delete(model, ids):
    base = _run(model, ids)
    torch.manual_seed(1)
    add_adapter(model, LoraConfig(r=2, target_modules=["q_proj"], init_b="random"), "a")
    out_a = _run(model, ids)
    add_adapter(model, LoraConfig(r=3, target_modules=["down_proj", "v_proj"], init_b="random"), "b")
    assert active_adapter(model) == "b" and list_adapters(model) == ["a", "b"]
    out_b = _run(model, ids)
    assert not torch.allclose(out_a, out_b)
    set_adapter(model, "a")
    assert torch.equal(_run(model, ids), out_a)
    merge_adapter(model, "a")
    set_adapter(model, "b")  # unmerges "a" first
    torch.testing.assert_close(_run(model, ids), out_b, atol=1e-5, rtol=1e-5)
    set_adapter(model, None)
    torch.testing.assert_close(_run(model, ids), base, atol=1e-5, rtol=1e-5)
    set_adapter(model, "b")
    delete_adapter(model, "b")
    assert active_adapter(model) is None and list_adapters(model) == ["a"]
    assert not hasattr(model.blocks[0].mlp.down_proj, "adapters")
    assert not model.blocks[0].mlp.down_proj._forward_hooks
    set_adapter(model, "a")
    torch.testing.assert_close(_run(model, ids), out_a, atol=1e-5, rtol=1e-5)
    with pytest.raises(LmlabError, match="no adapter named 'b'"):
        set_adapter(model, "b")


def test_merge_and_unload_gives_plain_model_that_saves(model, ids, tmp_path):
    torch.manual_seed(2)
    add_adapter(model, LoraConfig(r=4, target_modules=ALL, init_b="random"))
    adapted = _run(model, ids)
    plain = merge_and_unload(model)
    assert not any("adapters" in k for k in plain.state_dict())
    assert all(not m._forward_hooks for m in plain.modules() if isinstance(m, torch.nn.Linear))
    torch.testing.assert_close(_run(plain, ids), adapted, atol=2e-5, rtol=1e-5)
    lmlab.save(plain, tmp_path)
    torch.testing.assert_close(_run(lmlab.load(tmp_path), ids), adapted, atol=2e-5, rtol=1e-5)


def test_deepcopy_keeps_adapters(model, ids):
    torch.manual_seed(3)
    add_adapter(model, LoraConfig(r=2, init_b="random"))
    twin = copy.deepcopy(model)
    assert torch.equal(_run(twin, ids), _run(model, ids))


def test_half_precision_base_keeps_fp32_adapter(hf_dir, ids):
    m = lmlab.load(hf_dir("llama_gqa"), dtype="bfloat16")
    add_adapter(m, LoraConfig(r=2, init_b="random"))
    a = m.blocks[0].attn.q_proj.adapters["default"]
    assert a.lora_A.weight.dtype == torch.float32
    assert _run(m, ids).dtype == torch.bfloat16


@pytest.mark.parametrize("cfg", [
    SeriesAdapterConfig(bottleneck_size=8, init="zeros"),
    SeriesAdapterConfig(bottleneck_size=8, init="zeros", target_modules=["up_proj"], position="input"),
    ParallelAdapterConfig(bottleneck_size=8, init="zeros"),
    ParallelAdapterConfig(bottleneck_size=8, init="zeros", target_modules=["q_proj", "k_proj", "v_proj"]),
], ids=["series-mlp", "series-input", "parallel-mlp", "parallel-qkv"])
def test_bottleneck_adapters(model, ids, cfg, tmp_path):
    base = _run(model, ids)
    add_adapter(model, cfg)
    torch.testing.assert_close(_run(model, ids), base, rtol=0, atol=0)  # zero up-projection == base
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".up." in n + ".":
                p.normal_(std=0.1)
    adapted = _run(model, ids)
    assert not torch.allclose(adapted, base)
    with disable_adapters(model):
        assert torch.equal(_run(model, ids), base)
    with pytest.raises(LmlabError, match="cannot be merged"):
        merge_adapter(model)
    save_adapter(model, tmp_path)  # lmlab's own format: peft has none for bottleneck adapters
    other = copy.deepcopy(model)
    delete_adapter(other, "default")
    load_adapter(other, tmp_path)
    torch.testing.assert_close(_run(other, ids), adapted, rtol=0, atol=0)


def test_series_after_mlp_is_what_it_says(model, ids):
    """series on `mlp`: mlp(x) -> y + up(tanh(down(y))), checked against a hand computation."""
    cfg = SeriesAdapterConfig(bottleneck_size=4)
    add_adapter(model, cfg)
    mlp = model.blocks[1].mlp
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        got = mlp(x)
        with disable_adapters(model):
            y = mlp(x)
        a = mlp.adapters["default"]
        want = y + a.up(torch.tanh(a.down(y)))
    torch.testing.assert_close(got, want)


def test_dropout_follows_train_and_eval_mode(model, ids):
    torch.manual_seed(4)
    add_adapter(model, LoraConfig(r=4, dropout=0.5, init_b="random"))
    assert not model.training
    torch.testing.assert_close(_run(model, ids), _run(model, ids), rtol=0, atol=0)
    model.train()
    assert not torch.equal(_run(model, ids), _run(model, ids))


def test_reserved_adapter_names(model):
    for bad in ("train", "_x", "a.b", ""):
        with pytest.raises(LmlabError, match="adapter name"):
            add_adapter(model, LoraConfig(), bad)
