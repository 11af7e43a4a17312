"""One configuration path for fine-tuning methods: settings nested under the method's name, parsed by
config_io into the method's own config dataclass (one default per field), HFT / MIGU / interpolation
registered beside the adapter methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlab.config_io import load_config
from lmlab.errors import LmlabError
from lmlab.finetune.config import FinetuneConfig
from lmlab.finetune.hft import HalfFineTuning, HFTConfig
from lmlab.finetune.interpolation import WeightInterpolation
from lmlab.finetune.method_registry import AdapterMethod, available_finetune_methods
from lmlab.finetune.migu import MIGU
from lmlab.peft import BALoRAConfig, LoraConfig

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*sets: str, yaml_path=None) -> FinetuneConfig:
    return load_config(FinetuneConfig, yaml_path, ["data.path=x.jsonl", *sets])


def test_every_method_is_registered_by_name():
    assert {"lora", "balora", "series_adapter", "parallel_adapter", "hft", "migu", "interpolate"} <= set(
        available_finetune_methods())


def test_settings_parse_through_config_io(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("methods:\n  lora:\n    r: 4\n    alpha: 5e-1\n    target_modules: q_proj\n"
                      "  migu: {ratio: '0.25'}\n  interpolate:\n")
    cfg = _cfg("methods.lora.dropout=0.1", yaml_path=recipe)
    lora, migu, interp = cfg.build_methods()
    assert isinstance(lora, AdapterMethod) and isinstance(migu, MIGU) and isinstance(interp, WeightInterpolation)
    assert lora.config == LoraConfig(r=4, alpha=0.5, dropout=0.1, target_modules="q_proj")  # "5e-1" -> 0.5
    assert migu.config.ratio == 0.25 and interp.config.alpha == 0.5 and lora.merge is True


def test_defaults_come_from_the_method_config_alone():
    # the old FTMethodSection said lora_alpha 16 while LoraConfig said 8; now the recipe path has no default
    # of its own: peft's LoraConfig and the LoRA paper (alpha = the first r tried, i.e. scaling 1) give 8
    (lora,) = _cfg("methods.lora={}").build_methods()
    assert lora.config == LoraConfig() and lora.config.alpha == 8.0 and lora.config.r == 8
    (hft,) = _cfg("methods.hft={}").build_methods()
    assert isinstance(hft, HalfFineTuning) and hft.config == HFTConfig()
    (balora,) = _cfg("methods.balora.lambda1=1e-3").build_methods()
    assert balora.config == BALoRAConfig(lambda1=1e-3)


@pytest.mark.parametrize("sets, message", [
    (["methods.lora.rank=3"], "unknown key 'methods.lora.rank'"),
    (["methods.lora.r=x"], "key 'methods.lora.r' has value 'x' which is not a valid int"),
    (["methods.hft.stage_steps=-1"], "hft.stage_steps must be >= 0"),
    (["methods.migu.ratio=2"], "migu.ratio must be in"),
    (["methods.interpolate.alpha=1.5"], "interpolate.alpha must be in"),
    (["methods.ia3.r=1"], "methods: unknown fine-tuning method 'ia3'"),
    (["methods.lora.r=4", "methods.hft.seed=1"], "lora and hft both choose which weights train"),
    (["methods.lora.r=4", "methods.interpolate.alpha=0.5", "merge_adapter=false"], "needs merge_adapter: true"),
    (["methods.lora=3"], "methods.lora: expected a mapping"),
])
def test_bad_settings_are_one_line_errors(sets, message):
    with pytest.raises(LmlabError, match=message) as err:
        _cfg(*sets)
    assert "\n" not in str(err.value)


def test_shipped_recipes_parse():
    for name, kind in (("finetune-lora", AdapterMethod), ("finetune-hft", HalfFineTuning)):
        (method,) = _cfg(yaml_path=ROOT / "configs" / f"{name}.yaml").build_methods()
        assert isinstance(method, kind)
    assert _cfg(yaml_path=ROOT / "configs" / "finetune-sft.yaml").build_methods() == []


def test_lora_defaults_match_peft():
    import dataclasses

    import peft

    theirs = {f.name: f.default for f in dataclasses.fields(peft.LoraConfig)}
    ours = LoraConfig()
    assert (ours.r, ours.alpha, ours.dropout) == (theirs["r"], theirs["lora_alpha"], theirs["lora_dropout"])
    assert ours.alpha == ours.r == 8  # the LoRA paper: alpha set to the first r tried, scaling alpha / r = 1
