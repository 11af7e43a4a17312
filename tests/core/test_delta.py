"""WeightDelta: bit-exact apply/revert, arithmetic, safetensors round trip, packed copies, refusals by name."""

import json

import pytest
import torch

import lmlab
from lmlab.core import linear as lin
from lmlab.core.config import ModelConfig
from lmlab.core.delta import WeightDelta
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError

V = 53
DOWN = "blocks.1.mlp.down_proj.weight"
Q = "blocks.0.attn.q_proj.weight"


def _model(tie: bool = True, dtype=torch.float32) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, tie_embeddings=tie)
    return Transformer(cfg).init_weights(std=0.2, seed=0).to(dtype)


def _delta(model, names=(DOWN, Q), scale=0.05, seed=1) -> WeightDelta:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters(remove_duplicate=False))
    return WeightDelta({n: torch.randn(params[n].shape, generator=g) * scale for n in names}, {"method": "test"})


def _ids():
    return torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_then_revert_is_bit_exact_and_only_named_params_change(dtype):
    model = _model(dtype=dtype)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    delta = _delta(model)
    assert delta.apply(model) is delta and delta.is_applied(model)
    after = model.state_dict()
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed == sorted([DOWN, Q])
    if dtype == torch.float32:  # the applied value is w + d
        torch.testing.assert_close(after[DOWN], before[DOWN] + delta[DOWN], rtol=0, atol=0)
    delta.revert(model)
    assert not delta.is_applied(model)
    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n]), n  # bit for bit, although (w + d) - d != w in floating point
    w, d = before[DOWN].float(), delta[DOWN]
    assert dtype != torch.float32 or not torch.equal((w + d) - d, w)  # why originals are kept


def test_arithmetic_scaling_addition_subtraction():
    model = _model()
    a, b = _delta(model, seed=1), _delta(model, names=(DOWN,), seed=2)
    s = 2 * a + b
    assert sorted(s.names()) == sorted([DOWN, Q])
    torch.testing.assert_close(s[DOWN], 2 * a[DOWN] + b[DOWN])
    torch.testing.assert_close(s[Q], 2 * a[Q])
    torch.testing.assert_close((a - a)[Q], torch.zeros_like(a[Q]))
    torch.testing.assert_close((a * 0.5)[DOWN], a[DOWN] / 2)
    assert s.metadata["op"] == "add"
    with pytest.raises(LmlabError, match="shape"):
        a + WeightDelta({DOWN: torch.zeros(3, 3)})


def test_sequential_deltas_revert_in_reverse_order_only():
    model = _model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    first, second = _delta(model, seed=1), _delta(model, names=(DOWN,), seed=2)
    first.apply(model)
    second.apply(model)
    with pytest.raises(LmlabError, match=f"{DOWN} changed since"):
        first.revert(model)  # would silently undo the second delta
    with pytest.raises(LmlabError, match="already applied"):
        second.apply(model)
    second.revert(model)
    first.revert(model)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    with pytest.raises(LmlabError, match="not applied"):
        first.revert(model)


def test_save_load_round_trip(tmp_path):
    model = _model()
    delta = 0.5 * _delta(model)
    out = delta.save(tmp_path / "d")
    meta = json.loads((out / "delta.json").read_text())
    assert meta["format"] == "lmlab.weight_delta" and meta["tensors"][DOWN]["shape"] == [32, model.config.d_mlp]
    back = WeightDelta.load(out)
    assert back.metadata == delta.metadata and sorted(back.names()) == sorted(delta.names())
    assert all(torch.equal(back[n], delta[n]) for n in delta)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    (out / "delta.json").write_text("{not json")
    with pytest.raises(LmlabError, match="delta.json is not valid JSON"):
        WeightDelta.load(out)
    with pytest.raises(LmlabError, match="not found"):
        WeightDelta.load(tmp_path / "missing")


def test_refusals_name_the_parameter_and_change_nothing():
    model = _model(tie=True)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    cases = [
        (WeightDelta({"blocks.1.mlp.down_prj.weight": torch.zeros(2)}), "blocks.1.mlp.down_prj.weight is not a parameter"),
        (WeightDelta({DOWN: torch.zeros(32, 3)}), f"{DOWN} has shape"),
        (WeightDelta({DOWN: torch.zeros(32, model.config.d_mlp), Q: torch.full((32, 32), float("nan"))}), "NaN"),
        (WeightDelta({"embed.weight": torch.zeros(V, 32), "lm_head.weight": torch.zeros(V, 32)}), "tied tensor"),
    ]
    for delta, fragment in cases:
        with pytest.raises(LmlabError) as err:
            delta.apply(model)
        assert fragment in str(err.value) and "\n" not in str(err.value)
        assert not delta.is_applied(model)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert "did you mean blocks.1.mlp.down_proj.weight" in str(pytest.raises(
        LmlabError, WeightDelta({"blocks.1.mlp.down_prj.weight": torch.zeros(2)}).apply, model).value)
    with pytest.raises(LmlabError, match="floating-point"):
        WeightDelta({DOWN: torch.zeros(2, dtype=torch.long)})


def test_tied_weight_by_one_name_changes_both_uses_and_reverts():
    model = _model(tie=True)
    ids = _ids()
    base = model(ids)
    delta = WeightDelta({"lm_head.weight": torch.randn(V, 32) * 0.1})
    delta.apply(model)
    assert torch.equal(model.embed.weight, model.lm_head.weight)
    assert not torch.allclose(model(ids), base)
    delta.revert(model)
    assert torch.equal(model(ids), base)


@pytest.mark.parametrize("inference_built", [False, True])
def test_packed_model_serves_the_edited_weights(inference_built):
    if not lin._probe():
        pytest.skip("oneDNN linear not available in this torch build")
    ids = _ids()
    plain = _model(tie=False)
    delta = _delta(plain, names=(DOWN, Q, "lm_head.weight"), scale=0.5)
    with torch.no_grad():
        base_out = plain(ids)
        delta.apply(plain)
        edited_out = plain(ids)
        delta.revert(plain)
    assert (edited_out - base_out).abs().max() > 1e-2
    with torch.inference_mode(inference_built):
        model = _model(tie=False)
    with torch.inference_mode():
        assert lin.pack_for_inference(model) > 0
        torch.testing.assert_close(model(ids), base_out, rtol=1e-5, atol=1e-5)
        delta.apply(model)
        torch.testing.assert_close(model(ids), edited_out, rtol=1e-5, atol=1e-5)
        delta.revert(model)
        torch.testing.assert_close(model(ids), base_out, rtol=1e-5, atol=1e-5)


def test_packed_inference_model_notices_any_in_place_change():
    """The staleness of issue 9: a model built under inference_mode, packed, then changed in place by code
    that knows nothing of packing (a plain mul_) must serve the new weight, not the packed old one."""
    if not lin._probe():
        pytest.skip("oneDNN linear not available in this torch build")
    ids = _ids()
    with torch.inference_mode():
        model = _model(tie=True)
        before = model(ids)
        lin.pack_for_inference(model)
        assert model.lm_head.weight is model.embed.weight  # still tied after packing
        assert all(not m.weight.is_inference() for m in model.modules() if isinstance(m, lin.Linear))
        model.blocks[1].mlp.down_proj.weight.mul_(3.0)
        got = model(ids)
        lin.unpack(model)
        want = model(ids)
    assert not torch.allclose(want, before)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_top_level_export():
    assert lmlab.WeightDelta is WeightDelta
