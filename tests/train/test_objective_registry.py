"""Objectives by name from a fresh interpreter (lazy built-ins), their recipe arguments validated through
config_io, and tokens/s counted for pairwise batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.config_io import load_config
from lmlab.errors import LmlabError
from lmlab.train.config import TrainConfig
from lmlab.train.objective_registry import (BUILTIN_OBJECTIVES, available_objectives, build_objective,
                                            objective_factory, register_objective)
from lmlab.train.objectives import batch_tokens

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "configs" / "smoke-random.yaml")


def _lmlab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lmlab.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_lmlab_train_with_sft_objective_from_a_fresh_interpreter(tmp_path):
    proc = _lmlab("train", RECIPE, "--set", "run.objective=sft", "--set", "run.max_steps=2", "--set",
                  f"run.out_dir={tmp_path}", "--set", "run.progress=false", "--set", "run.eval_every=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = (tmp_path / "config.yaml").read_text()
    assert "objective: sft" in saved
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "assistant_tokens" in rows[-1] and rows[-1]["assistant_tokens"] == 8 * 32  # every target counts


def test_bad_objective_args_are_one_cli_line(tmp_path, capsys):
    from lmlab.cli.main import main

    code = main(["train", RECIPE, "--set", "run.objective=sft", "--set", "run.objective_args.beta=0.1",
                 "--set", f"run.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "run.objective_args.beta" in err, err
    assert not (tmp_path / "config.yaml").exists()


def test_every_builtin_objective_resolves_by_name():
    assert set(BUILTIN_OBJECTIVES) <= set(available_objectives())
    assert {"causal_lm", "sft", "sft_regularized", "classify", "balora"} <= set(BUILTIN_OBJECTIVES)
    for name in BUILTIN_OBJECTIVES:
        assert callable(build_objective(name)), name


def test_objective_args_are_validated_and_coerced():
    cfg = load_config(TrainConfig, None, ["run.objective=balora", "run.objective_args.lambda1=5e-1",
                                          "run.objective_args.svd_k=4"])
    obj = build_objective(cfg.run.objective, cfg.run.objective_args)
    assert obj.overrides == {"lambda1": 0.5, "svd_k": 4}  # "5e-1" is a str to PyYAML: coerced to float
    with pytest.raises(LmlabError, match=r"run\.objective_args\.svd_k.*'x'"):
        load_config(TrainConfig, None, ["run.objective=balora", "run.objective_args.svd_k=x"])
    with pytest.raises(LmlabError, match=r"unknown key 'run\.objective_args\.lambda9'"):
        load_config(TrainConfig, None, ["run.objective=balora", "run.objective_args.lambda9=1"])
    with pytest.raises(LmlabError, match=r"run\.objective: unknown objective 'nope'.*causal_lm"):
        load_config(TrainConfig, None, ["run.objective=nope"])


def test_signature_schema_and_registration():
    @register_objective("test_scaled_lm")
    class Scaled:
        def __init__(self, scale: float = 1.0, label: str = "x") -> None:
            self.scale, self.label = scale, label

        def __call__(self, model, batch):
            raise NotImplementedError

    assert objective_factory("test_scaled_lm") is Scaled
    obj = build_objective("test_scaled_lm", {"scale": "2e0"})
    assert obj.scale == 2.0 and obj.label == "x"
    with pytest.raises(LmlabError, match=r"run\.objective_args\.scale"):
        build_objective("test_scaled_lm", {"scale": "big"})
    with pytest.raises(ValueError, match="already registered|built-in"):
        register_objective("sft")(Scaled)


class _PairwiseMargin:
    """A toy pairwise objective (DPO-shaped batches): mean over pairs of -logsigmoid(score margin)."""

    def __call__(self, model, batch):
        def score(ids):
            return model(ids).float().log_softmax(-1)[..., 0].mean(-1)  # [B]
        margin = score(batch["chosen_input_ids"]) - score(batch["rejected_input_ids"])
        return -torch.nn.functional.logsigmoid(margin).mean(), {}


def test_pairwise_batches_report_tokens(tmp_path, model_factory, config_factory):
    pair = {"chosen_input_ids": torch.zeros(2, 5, dtype=torch.long),
            "rejected_input_ids": torch.ones(2, 7, dtype=torch.long)}
    assert batch_tokens(pair) == 2 * 5 + 2 * 7
    from lmlab.train.loop import Trainer

    cfg = config_factory(tmp_path, "run.max_steps=2", "data.batch_size=2", "run.ckpt_every=0")
    summary = Trainer(model_factory(), cfg, [pair], objective=_PairwiseMargin()).fit()
    assert summary["tokens_seen"] == 2 * 24 and summary["tokens_per_s"] > 0
