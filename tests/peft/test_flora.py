"""FLoRA: the stacked LoRA's update equals the weighted sum of the clients' updates exactly (any ranks);
averaging A and B separately does not."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.errors import LmlabError
from lmlab.peft import (
    LoraConfig, LoraFactors, add_adapter, disable_adapters, fedavg_loras, flora_merge, flora_stack, list_adapters,
    stack_loras,
)


def _client(r, scaling, gen, d_in=48, d_out=40):
    return LoraFactors(torch.randn(r, d_in, generator=gen, dtype=torch.float64),
                       torch.randn(d_out, r, generator=gen, dtype=torch.float64), scaling)


def test_stacking_is_exact_for_heterogeneous_ranks():
    gen = torch.Generator().manual_seed(0)
    clients = [_client(2, 0.5, gen), _client(8, 2.0, gen), _client(5, 1.0 / 5 ** 0.5, gen)]
    w = [0.2, 0.5, 0.3]
    s = stack_loras(clients, w)
    assert s.A.shape == (15, 48) and s.B.shape == (40, 15)
    want = sum(wk * c.delta() for wk, c in zip(w, clients))
    torch.testing.assert_close(s.delta(), want, rtol=0, atol=1e-12)


def test_fedavg_of_factors_is_not_the_average_update():
    gen = torch.Generator().manual_seed(1)
    clients = [_client(4, 1.0, gen) for _ in range(3)]
    avg = sum(c.delta() for c in clients) / 3
    torch.testing.assert_close(stack_loras(clients).delta(), avg, rtol=0, atol=1e-12)
    err = (fedavg_loras(clients).delta() - avg).norm() / avg.norm()
    assert err > 0.5  # "mathematically inaccurate aggregation noise"


def test_flora_on_a_model_equals_sum_of_client_updates(hf_dir, ids):
    model = lmlab.load(hf_dir("llama_gqa"))
    torch.manual_seed(0)
    # heterogeneous clients: different ranks, alphas, rsLoRA, and partly different target modules
    add_adapter(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"], init_b="random"), "c1")
    add_adapter(model, LoraConfig(r=6, alpha=3, target_modules=["q_proj", "down_proj"], init_b="random",
                                  use_rslora=True), "c2")
    add_adapter(model, LoraConfig(r=1, alpha=1, target_modules=["v_proj"], init_b="random"), "c3")
    w = [0.5, 0.3, 0.2]
    slots = {n: m.adapters for n, m in model.named_modules() if hasattr(m, "adapters")}
    want = {n: sum(wk * s[c].delta_weight() for c, wk in zip(["c1", "c2", "c3"], w) if c in s)
            for n, s in slots.items()}
    flora_stack(model, ["c1", "c2", "c3"], w, new_name="global")
    for n, s in slots.items():
        torch.testing.assert_close(s["global"].delta_weight(), want[n], rtol=1e-5, atol=1e-6)
    assert slots["blocks.0.attn.q_proj"]["global"].r == 8 and slots["blocks.0.mlp.down_proj"]["global"].r == 6
    with torch.no_grad():
        stacked_out = model(ids)
    # the server step: merge the stacked update into the base, drop client adapters
    flora_merge(model, ["c1", "c2", "c3"], w)
    assert list_adapters(model) == ["global"]
    with torch.no_grad(), disable_adapters(model):
        torch.testing.assert_close(model(ids), stacked_out, atol=2e-5, rtol=1e-5)


def test_flora_errors():
    with pytest.raises(LmlabError, match="disagree"):
        stack_loras([LoraFactors(torch.zeros(2, 4), torch.zeros(3, 2)),
                     LoraFactors(torch.zeros(2, 5), torch.zeros(3, 2))])
    with pytest.raises(LmlabError, match="2 weights for 1"):
        stack_loras([LoraFactors(torch.zeros(2, 4), torch.zeros(3, 2))], [0.5, 0.5])
