"""run_training / `python -m lmlab.train` end to end on real token shards (lmlab.data.shards)."""

from __future__ import annotations

import json

import pytest

from lmlab.errors import LmlabError
from lmlab.train.__main__ import main
from lmlab.train.run import run_training


class CharTokenizer:
    """Duck-typed tokenizer for build_shards: bytes 0..126 as ids, 127 = eos."""

    vocab_size, eos_id = 128, 127

    def encode(self, text: str) -> list[int]:
        return [min(b, 126) for b in text.encode()]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    from lmlab.data.shards import build_shards

    out = tmp_path_factory.mktemp("shards") / "world"
    docs = [f"The capital of country {i} is city {i * 7 % 13}. " * 3 for i in range(200)]
    build_shards(docs, CharTokenizer(), out, val_fraction=0.1, seed=0)
    return out


def _sets(shard_dir, out_dir, *extra):
    base = [f"data.path={shard_dir}", f"run.out_dir={out_dir}", "data.block_size=32", "data.batch_size=8",
            "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64", "run.log_every=1",
            "run.eval_every=4", "run.eval_batches=2", "run.ckpt_every=4", "run.device=cpu",
            "optim.warmup_steps=2", "optim.lr=3e-3", "optim.schedule=wsd", *extra]
    return base


def test_run_training_on_shards_and_resume_via_cli(tmp_path, shard_dir, capsys):
    summary = run_training(None, _sets(shard_dir, tmp_path / "a", "run.max_steps=8"), progress=False)
    assert summary["steps"] == 8 and summary["final_val_loss"] is not None
    assert summary["final_loss"] < 4.85  # below ln(128): it learns the character statistics

    out = tmp_path / "b"
    args = [a for s in _sets(shard_dir, out, "run.max_steps=8") for a in ("--set", s)]
    assert main(args + ["--no-progress"]) == 0  # first run ...
    (out / "checkpoints" / "step-00000008").rename(out / "checkpoints" / "step-00000008.old")
    assert main(args + ["--resume", "--no-progress"]) == 0  # ... resumed from step 4 to 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    losses_a = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == losses_a  # interrupted + resumed == uninterrupted, through the CLI
    saved = (out / "config.yaml").read_text()
    assert "schedule: wsd" in saved and f"path: {shard_dir}" in saved


def test_cli_reports_user_errors_in_one_line(tmp_path, shard_dir, capsys):
    assert main(["--set", "optim.lrr=1", "--no-progress"]) == 2
    assert "error: --set: unknown key 'optim.lrr'" in capsys.readouterr().err
    with pytest.raises(LmlabError, match="data.block_size 128 exceeds the model's max_seq_len 64"):
        run_training(None, _sets(shard_dir, tmp_path, "data.block_size=128"), progress=False)
    with pytest.raises(LmlabError, match="data.path: required"):
        run_training(None, [f"run.out_dir={tmp_path}"], progress=False)


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, shard_dir):
    from tensorboard.backend.event_processing import event_accumulator  # test extra: a missing one fails
    run_training(None, _sets(shard_dir, tmp_path, "run.max_steps=5", "run.tensorboard=true"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "val_loss"} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    want = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in logged] == [s for s, _ in want] == list(range(1, 6))
    assert [v for _, v in logged] == pytest.approx([v for _, v in want], rel=1e-6)  # stored as float32
