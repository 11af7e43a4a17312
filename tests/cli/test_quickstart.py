"""`lmlab quickstart` end to end, shortened (--steps): every artefact is written and consistent.

The full run's recall (>= 90% on training facts) is a claim measured in docs/claims.md: at 500 steps it
takes minutes, too long for the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lmlab


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    cmd = [sys.executable, "-m", "lmlab.cli.main", "quickstart", "--out", str(out), "--steps", "15",
           "--set", "run.log_every=1", "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_quickstart_writes_world_model_and_report(quick_run):
    out, stdout = quick_run
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 15 and report["n_facts"] > 300
    for key in ("train_fact_recall", "heldout_paraphrase_recall", "two_hop_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert "Fact recall against the ground truth" in stdout and "lmlab generate" in stdout
    assert (out / "world" / "facts.json").exists() and (out / "train" / "metrics.jsonl").exists()
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]  # 15 steps already lower the loss from ~ln(vocab)


def test_quickstart_model_loads_in_transformers_with_same_logits(quick_run):
    import transformers
    out, _ = quick_run
    ours = lmlab.load(out / "model")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tok = lmlab.load_tokenizer(out / "model")
    ids = torch.tensor([tok.encode("The capital of")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_quickstart_rejects_bad_steps(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lmlab.cli.main", "quickstart", "--out", str(tmp_path / "x"),
                             "--steps", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--steps must be positive" in result.stderr and "Traceback" not in result.stderr
