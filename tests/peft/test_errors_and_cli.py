"""Error paths name what is wrong; ``lmlab merge`` writes a checkpoint transformers loads with merged logits."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmlab
from lmlab.errors import LmlabError
from lmlab.peft import (
    LoraConfig, SeriesAdapterConfig, add_adapter, config_from_dict, load_adapter, merge_adapter, save_adapter,
)


@pytest.fixture
def model(hf_dir):
    return lmlab.load(hf_dir("llama_gqa"))


def test_targets_matching_nothing_name_patterns_and_available_modules(model):
    with pytest.raises(LmlabError) as err:
        add_adapter(model, LoraConfig(target_modules=["c_attn", "query"]))
    msg = str(err.value)
    assert "['c_attn', 'query']" in msg and "q_proj" in msg and "blocks.0.attn.q_proj" in msg
    with pytest.raises(LmlabError, match="target_modules 'blocks.*match no module"):
        add_adapter(model, LoraConfig(target_modules=r"blocks\.9\..*"))
    assert not hasattr(model, "adapter_configs") or not model.adapter_configs  # nothing half-attached


def test_regex_targets_select_whole_names(model):
    targets = add_adapter(model, LoraConfig(target_modules=r"blocks\.1\.mlp\.(up|down)_proj"))
    assert targets == ["blocks.1.mlp.up_proj", "blocks.1.mlp.down_proj"]


def test_config_validation_and_from_dict():
    with pytest.raises(LmlabError, match="r must be a positive integer"):
        LoraConfig(r=0).validate()
    cfg = config_from_dict({"method": "lora", "r": "16", "alpha": "5e-1", "target_modules": ["q_proj"]})
    assert cfg.r == 16 and cfg.alpha == 0.5
    with pytest.raises(LmlabError, match=r"unknown key 'rank'"):  # the config_io message (one parsing path)
        config_from_dict({"method": "lora", "rank": 4})
    with pytest.raises(LmlabError, match="unknown adapter method 'ia3'"):
        config_from_dict({"method": "ia3"})
    with pytest.raises(LmlabError, match="key 'r' has value 2.5 which is not a valid int"):
        config_from_dict({"method": "lora", "r": 2.5})
    assert config_from_dict({"method": "lora", "target_modules": "q_proj"}).target_modules == "q_proj"  # a regex
    with pytest.raises(LmlabError, match="key 'use_rslora' has value 'maybe'"):
        config_from_dict({"method": "lora", "use_rslora": "maybe"})


def _saved(model, tmp_path, **cfg):
    torch.manual_seed(0)
    add_adapter(model, LoraConfig(r=4, init_b="random", **cfg))
    save_adapter(model, tmp_path)
    return tmp_path


def test_adapter_shapes_that_do_not_fit_the_base_are_named(model, hf_dir, tmp_path):
    d = _saved(model, tmp_path)
    tensors = load_file(d / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key] = torch.zeros(48, 4)  # v_proj is 32 wide in the GQA model
    save_file(tensors, d / "adapter_model.safetensors")
    fresh = lmlab.load(hf_dir("llama_gqa"))
    with pytest.raises(LmlabError) as err:
        load_adapter(fresh, d)
    assert key in str(err.value) and "(48, 4)" in str(err.value) and "(32, 4)" in str(err.value)
    assert not getattr(fresh, "adapter_configs", {})  # nothing attached on failure


def test_adapter_for_a_model_without_that_module(model, hf_dir, tmp_path):
    d = _saved(model, tmp_path, target_modules=["gate_proj"])
    gpt2 = lmlab.load(hf_dir("gpt2"))
    with pytest.raises(LmlabError, match="model.layers.0.mlp.gate_proj.*not a linear layer of a gpt2 model"):
        load_adapter(gpt2, d)


@pytest.mark.parametrize("field,value,needle", [
    ("use_dora", True, "use_dora=True is not supported (DoRA"),
    ("modules_to_save", ["lm_head"], "modules_to_save=['lm_head'] is not supported"),
    ("peft_type", "IA3", "peft_type 'IA3' is not supported"),
    ("bias", "all", "bias='all' is not supported"),
    ("init_lora_weights", "pissa_niter_4", "init_lora_weights='pissa_niter_4' is not supported"),
    ("task_type", "SEQ_CLS", "task_type 'SEQ_CLS'"),
])
def test_unsupported_peft_configs_are_refused_by_field(model, hf_dir, tmp_path, field, value, needle):
    d = _saved(model, tmp_path)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg[field] = value
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmlabError) as err:
        load_adapter(lmlab.load(hf_dir("llama_gqa")), d)
    assert needle in str(err.value)


def test_not_an_adapter_directory(model, tmp_path):
    with pytest.raises(LmlabError, match="missing adapter_config.json"):
        load_adapter(model, tmp_path)


def test_tied_head_merge_and_duplicate_names(hf_dir):
    gpt2 = lmlab.load(hf_dir("gpt2"))  # lm_head is tied to the embedding
    add_adapter(gpt2, LoraConfig(target_modules=["lm_head"]))
    with pytest.raises(LmlabError, match="tied to embed.weight"):
        merge_adapter(gpt2)
    with pytest.raises(LmlabError, match="already exists"):
        add_adapter(gpt2, LoraConfig(), "default")
    with pytest.raises(LmlabError, match="without dots"):
        add_adapter(gpt2, LoraConfig(), "a.b")
    with pytest.raises(LmlabError, match="position must be"):
        add_adapter(gpt2, SeriesAdapterConfig(position="before"), "s")


def test_merge_cli_writes_a_checkpoint_transformers_loads(model, hf_dir, ids, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmlab.cli import merge

    torch.manual_seed(3)
    add_adapter(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "down_proj"], init_b="random"))
    save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        want = model(ids)
    p = argparse.ArgumentParser()
    merge.add_arguments(p)
    args = p.parse_args([str(hf_dir("llama_gqa")), str(tmp_path / "adapter"), str(tmp_path / "merged")])
    assert merge.run(args) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(LmlabError, match="OUT must differ from BASE"):
        merge.run(p.parse_args([str(hf_dir("llama_gqa")), str(tmp_path / "adapter"), str(hf_dir("llama_gqa"))]))
