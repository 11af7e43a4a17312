"""YAML recipes + --set overrides -> dataclasses: unknown keys, coercion, wrong types, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from lmlab.config_io import dump_config, load_config, save_config
from lmlab.errors import LmlabError
from lmlab.train.config import TrainConfig


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    steps: int = 10
    name: str | None = None
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    paths: list[str] = field(default_factory=list)


@dataclass
class Outer:
    optim: Inner = field(default_factory=Inner)
    seed: int = 0


def _write(tmp_path, text: str):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_dotted_key_and_file(tmp_path):
    path = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(LmlabError) as info:
        load_config(Outer, path)
    msg = str(info.value)
    assert str(path) in msg and "unknown key 'optim.lrr'" in msg and "known: lr, betas" in msg
    with pytest.raises(LmlabError, match=r"--set: unknown key 'optim\.nope'"):
        load_config(Outer, None, ["optim.nope=1"])
    with pytest.raises(LmlabError, match="unknown key 'sed'"):
        load_config(TrainConfig, None, ["sed=1"])


def test_yaml_1_1_float_strings_are_coerced(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 5e-1\n  steps: 1e3\n  flag: 'true'\n  betas: [0.8, 9e-1]\n")
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == "5e-1"  # the PyYAML behaviour we guard against
    cfg = load_config(Outer, path)
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.steps == 1000 and isinstance(cfg.optim.steps, int)
    assert cfg.optim.flag is True and cfg.optim.betas == (0.8, 0.9)


def test_set_overrides_win_over_file_and_parse_as_yaml(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 0.1\nseed: 3\n")
    cfg = load_config(Outer, path, ["optim.lr=1e-3", "optim.name=null", "optim.mode=b", "optim.betas=0.5,0.6",
                                    "optim.paths=[a, b]"])
    assert cfg.optim.lr == 1e-3 and cfg.seed == 3 and cfg.optim.name is None and cfg.optim.mode == "b"
    assert cfg.optim.betas == (0.5, 0.6) and cfg.optim.paths == ["a", "b"]
    cfg = load_config(TrainConfig, None, ["optim.lr=1e-3", "run.max_steps=7"])
    assert cfg.optim.lr == 1e-3 and cfg.run.max_steps == 7 and cfg.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=fast", "key 'optim.lr' has value 'fast' which is not a valid float"),
    ("optim.steps=2.5", "key 'optim.steps' has value 2.5 which is not a valid int"),
    ("optim.flag=maybe", "key 'optim.flag' has value 'maybe' which is not a valid bool"),
    ("optim.mode=c", "key 'optim.mode' has value 'c'; expected one of ['a', 'b']"),
    ("optim.betas=[1, 2, 3]", "key 'optim.betas' has value [1, 2, 3] which is not a valid tuple[float, float] with 2"),
    ("optim=3", "key 'optim' must be a mapping"),
    ("optim.lr", "expected KEY=VALUE"),
])
def test_wrong_types_name_key_value_and_type(override, expected):
    with pytest.raises(LmlabError) as info:
        load_config(Outer, None, [override])
    assert expected in str(info.value)


def test_wrong_type_in_file_names_file(tmp_path):
    path = _write(tmp_path, "optim:\n  steps: [1]\n")
    with pytest.raises(LmlabError, match=rf"{path}: key 'optim.steps' has value \[1\]"):
        load_config(Outer, path)
    bad = _write(tmp_path, "optim: [\n")
    with pytest.raises(LmlabError, match="invalid YAML"):
        load_config(Outer, bad)
    with pytest.raises(LmlabError, match="cannot read config file"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_train_config_validation_and_round_trip(tmp_path):
    with pytest.raises(LmlabError, match="data.batch_size 10 is not divisible by data.grad_accum 4"):
        load_config(TrainConfig, None, ["data.batch_size=10", "data.grad_accum=4"])
    with pytest.raises(LmlabError, match="expected one of \\['cosine', 'wsd', 'constant'\\]"):
        load_config(TrainConfig, None, ["optim.schedule=linear"])
    cfg = load_config(TrainConfig, None, ["optim.lr=2e-4", "model.overrides={norm_eps: 1e-5}",
                                          "data.kind=random", "distributed.strategy=fsdp"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(TrainConfig, path)
    assert again == cfg and dump_config(again) == dump_config(cfg)
    assert load_config(TrainConfig, None, ["run.seed=5"], base=dump_config(cfg)) == load_config(
        TrainConfig, path, ["run.seed=5"])  # base < file < --set
    assert yaml.safe_load(path.read_text())["optim"]["betas"] == [0.9, 0.95]


def test_recipes_in_configs_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert recipes, "configs/ holds at least one recipe"
    from lmlab.align.recipe import AlignConfig

    for recipe in recipes:
        if recipe.name.startswith("align-"):
            load_config(AlignConfig, recipe)
        elif yaml.safe_load(recipe.read_text()).keys() <= {f for f in TrainConfig.__dataclass_fields__}:
            load_config(TrainConfig, recipe)
