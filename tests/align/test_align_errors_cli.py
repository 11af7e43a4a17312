"""Bad preference data and mismatched scorers give one line naming the record or file; `lmlab align` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmlab.align.preference_data import check_same_tokenizer, load_preferences
from lmlab.align.reward import load_reward_model, reward_model, save_reward_model
from lmlab.core.tokenizer import train_bpe
from lmlab.errors import LmlabError
from lmlab.reference import ASSET_DIR, load_reference


def _write(path, *records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Q:", "chosen": " a"}, "missing field 'rejected'"),
    ({"prompt": "Q:", "chosen": "  ", "rejected": " b"}, "'chosen' is an empty response"),
    ({"prompt": "Q:", "chosen": " same", "rejected": " same"}, "chosen and rejected are identical"),
    ({"prompt": "Q:", "chosen": 3, "rejected": " b"}, "'chosen' must be a string"),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": "x", "rejected": []}, "chosen: expected a non-empty"),
])
def test_bad_records_name_file_and_line(tmp_path, record, message):
    good = {"prompt": "Q:", "chosen": " a", "rejected": " b"}
    path = _write(tmp_path / "prefs.jsonl", good, record)
    with pytest.raises(LmlabError) as e:
        load_preferences(path)
    assert f"{path}:2" in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "Q:", "chosen": " a", "rejected": " b"}\n{oops\n')
    with pytest.raises(LmlabError, match=r"p.jsonl:2: not valid JSON"):
        load_preferences(bad)
    with pytest.raises(LmlabError, match="not found"):
        load_preferences(tmp_path / "none.jsonl")


def test_reward_model_with_another_tokenizer_is_refused(tmp_path):
    ref = load_reference()
    out = save_reward_model(reward_model(ref.model), tmp_path / "rm", tokenizer=ref.tokenizer)
    load_reward_model(out, policy_tokenizer=ref.tokenizer)  # same tokenizer: fine
    other = train_bpe(["a b c d e f g"] * 20, vocab_size=300)
    with pytest.raises(LmlabError, match="tokenizer differs from the policy's"):
        check_same_tokenizer(other, ref.tokenizer)
    with pytest.raises(LmlabError, match="tokenizer differs"):
        load_reward_model(out, policy_tokenizer=other)


def test_align_cli_reward_end_to_end(tmp_path):
    """`lmlab align` trains a Bradley-Terry reward model on world pairs; held-out accuracy beats chance."""
    out = tmp_path / "rm"
    cmd = [sys.executable, "-m", "lmlab.cli.main", "align", "configs/align-reward.yaml", "--no-progress",
           "--threads", "1", "--set", f"model.init_from={ASSET_DIR}", "--set", f"run.out_dir={out}",
           "--set", "run.max_steps=15", "--set", "data.path=world:train:politeness",
           "--set", "data.eval_path=world:heldout:politeness"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=_repo())
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["heldout_pair_accuracy"] >= 0.8
    assert (out / "reward_model" / "reward_head.safetensors").is_file()
    bad = subprocess.run(cmd[:-2] + ["--set", "run.objective=ppo"], capture_output=True, text=True, cwd=_repo())
    assert bad.returncode != 0 and "run.objective must be one of dpo, reward, haf_rm" in bad.stderr
    assert "Traceback" not in bad.stderr


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
