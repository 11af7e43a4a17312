"""peft interoperability, both directions, on tiny random transformers models.

lmlab -> peft: a LoRA trained-looking (random non-zero B) in lmlab, saved with ``save_adapter``, loaded by
``peft.PeftModel.from_pretrained`` onto the transformers copy of the base: same logits as lmlab's.
peft -> lmlab: ``get_peft_model`` with random B, ``save_pretrained``, ``load_adapter`` into lmlab: same logits.
GPT-2 (fused Conv1D c_attn) and NeoX (per-head interleaved query_key_value) go through the exact
block-diagonal mapping.
"""

from __future__ import annotations

import json

import peft  # test extra: a missing or broken install fails, never skips
import pytest
import torch
import transformers

import lmlab
from lmlab.peft import LoraConfig, add_adapter, load_adapter, save_adapter

ATOL = 1e-5
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# family -> (lmlab target_modules for export, HF target_modules for import)
CASES = {
    "llama_mha": (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
    "llama_gqa": (LLAMA_ALL, LLAMA_ALL),
    "qwen2": (["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj", "down_proj"]),
    "mistral": (["k_proj", "v_proj", "up_proj"], ["q_proj", "o_proj", "gate_proj"]),
    "gpt2": (["q_proj", "v_proj", "o_proj", "up_proj"], ["c_attn", "c_proj", "c_fc"]),
    "neox_parallel": (["q_proj", "k_proj", "v_proj", "down_proj"], ["query_key_value", "dense"]),
}


def _hf(d):
    return transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()


@pytest.mark.parametrize("family", list(CASES))
def test_lmlab_adapter_loads_in_peft(family, hf_dir, ids, tmp_path):
    d = hf_dir(family)
    ours = lmlab.load(d)
    torch.manual_seed(0)
    add_adapter(ours, LoraConfig(r=4, alpha=8, target_modules=CASES[family][0], init_b="random"))
    save_adapter(ours, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["fan_in_fan_out"] is (family == "gpt2")
    theirs = peft.PeftModel.from_pretrained(_hf(d), tmp_path).eval()
    with torch.no_grad():
        got, want = theirs(ids).logits, ours(ids)
        base = theirs.get_base_model()
        with theirs.disable_adapter():
            unadapted = base(ids).logits
    assert not torch.allclose(want, unadapted, atol=1e-3)  # the adapter really changes the output
    delta = (got - want).abs().max().item()
    assert delta < ATOL, f"{family}: max |peft - lmlab| = {delta:.2e}"


@pytest.mark.parametrize("family", list(CASES))
def test_peft_adapter_loads_in_lmlab(family, hf_dir, ids, tmp_path):
    d = hf_dir(family)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=CASES[family][1], init_lora_weights=False,
                             task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(_hf(d), config).eval()
    theirs.save_pretrained(tmp_path)
    ours = lmlab.load(d)
    load_adapter(ours, tmp_path)
    with torch.no_grad():
        got, want = ours(ids), theirs(ids).logits
    delta = (got - want).abs().max().item()
    assert delta < ATOL, f"{family}: max |lmlab - peft| = {delta:.2e}"


def test_rank_and_alpha_patterns_and_rslora_both_ways(hf_dir, ids, tmp_path):
    """Per-module ranks / alphas (peft rank_pattern, alpha_pattern) and rsLoRA scaling survive a round trip."""
    d = hf_dir("llama_gqa")
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_rslora=True,
                             rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 3},
                             init_lora_weights=False, task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(_hf(d), config).eval()
    theirs.save_pretrained(tmp_path / "peft")
    ours = lmlab.load(d)
    load_adapter(ours, tmp_path / "peft")
    assert ours.blocks[0].mlp.down_proj.adapters["default"].r == 2
    save_adapter(ours, tmp_path / "back")
    again = peft.PeftModel.from_pretrained(_hf(d), tmp_path / "back").eval()
    with torch.no_grad():
        want = theirs(ids).logits
        assert (ours(ids) - want).abs().max().item() < ATOL
        assert (again(ids).logits - want).abs().max().item() < ATOL
    back = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert back["use_rslora"] is True and set(back["target_modules"]) == {"q_proj", "down_proj"}


def test_partial_qkv_on_gpt2_is_block_diagonal(hf_dir, ids, tmp_path):
    """LoRA on q only (not k, v) in lmlab GPT-2 exports as c_attn LoRA whose k/v rows of B are zero."""
    d = hf_dir("gpt2")
    ours = lmlab.load(d)
    torch.manual_seed(2)
    add_adapter(ours, LoraConfig(r=3, target_modules=["q_proj"], init_b="random"))
    save_adapter(ours, tmp_path)
    from safetensors.torch import load_file

    B = load_file(tmp_path / "adapter_model.safetensors")["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert B.shape == (192, 3) and B[64:].abs().sum() == 0
    theirs = peft.PeftModel.from_pretrained(_hf(d), tmp_path).eval()
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids)).abs().max().item() < ATOL


@pytest.mark.parametrize("family", ["llama_gqa", "qwen2"])
def test_training_trajectory_matches_peft(family, hf_dir, ids, tmp_path):
    """Same adapter, same AdamW, same batch: per-step losses and the trained adapters agree with peft's.

    Forward parity alone would not catch a wrong gradient path (e.g. scaling applied twice in backward)."""
    d = hf_dir(family)
    ours = lmlab.load(d).train()
    torch.manual_seed(0)
    add_adapter(ours, LoraConfig(r=4, alpha=8, target_modules=LLAMA_ALL, init_b="random"))
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(_hf(d), tmp_path, is_trainable=True).train()

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    mine = [p for p in ours.parameters() if p.requires_grad]
    peft_params = [p for p in theirs.parameters() if p.requires_grad]
    assert sum(p.numel() for p in mine) == sum(p.numel() for p in peft_params) > 0
    opt_a, opt_b = torch.optim.AdamW(mine, lr=1e-2), torch.optim.AdamW(peft_params, lr=1e-2)
    losses = []
    for step in range(6):
        la, lb = loss_of(ours(ids)), loss_of(theirs(ids).logits)
        losses.append(la.item())
        assert abs(la.item() - lb.item()) < 1e-5, f"step {step}: lmlab {la.item():.6f} vs peft {lb.item():.6f}"
        for opt, loss in ((opt_a, la), (opt_b, lb)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert losses[-1] < losses[0] - 0.1  # the adapters really trained
    save_adapter(ours, tmp_path / "after")
    theirs.save_pretrained(tmp_path / "peft_after")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "after" / "adapter_model.safetensors")
    b = load_file(tmp_path / "peft_after" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"trained adapters differ by {worst:.2e}"
