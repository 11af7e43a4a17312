"""The shipped reference checkpoint reaches its recorded quality, and so does its recipe re-run from scratch.

The recipe run trains for 500 steps (about 2.5 minutes on one thread): it is the one test that shows the
quickstart's headline (>= 90% recall on training facts) from a cold start, so it is worth its time.
"""

from __future__ import annotations

import json

import pytest

from lmlab.data.recall import recall
from lmlab.errors import LmlabError
from lmlab.reference import ASSET_DIR, QUALITY_KEYS, RECORD_FILE, load_reference, read_record, sha256


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_shipped_files_are_small_and_match_the_record(ref):
    total = sum(f.stat().st_size for f in ASSET_DIR.iterdir())
    assert total < 20 * 2**20, f"reference checkpoint is {total / 2**20:.1f} MB (limit 20 MB)"
    assert sha256(ASSET_DIR / "model.safetensors") == ref.record["model_sha256"]
    assert ref.model.num_parameters() == ref.record["parameters"]
    assert len(ref.world.facts) == ref.record["n_facts"]


def test_shipped_model_reaches_recorded_quality(ref):
    q = ref.record["quality"]
    assert q["train_fact_recall"] >= 0.90
    measured = {
        "train_fact_recall": recall(ref.model, ref.tokenizer, ref.world.probes("train")),
        "heldout_paraphrase_recall": recall(ref.model, ref.tokenizer, ref.world.probes("heldout")),
        "two_hop_accuracy": recall(ref.model, ref.tokenizer, ref.world.two_hop_probes()),
    }
    # the same weights: only a different CPU's summation order may flip a near-tied greedy token
    for key in QUALITY_KEYS:
        assert measured[key] == pytest.approx(q[key], abs=0.01), key


def test_missing_or_corrupt_record_is_a_clear_error(tmp_path):
    with pytest.raises(LmlabError, match="no reference record"):
        read_record(tmp_path)
    (tmp_path / RECORD_FILE).write_text("{not json")
    with pytest.raises(LmlabError, match="not valid JSON"):
        read_record(tmp_path)


def test_recipe_from_scratch_reaches_recorded_quality(tmp_path):
    import torch

    from lmlab.train.world_recipe import train_world_model

    record = read_record()
    torch.set_num_threads(1)
    _, _, _, report = train_world_model(tmp_path / "run", steps=record["steps"], seed=record["seed"],
                                        vocab_size=record["vocab_size"], progress=False, say=lambda _: None)
    assert report["parameters"] == record["parameters"]
    assert report["train_fact_recall"] >= 0.90
    assert report["train_fact_recall"] >= record["quality"]["train_fact_recall"] - 0.02
    assert report["final_loss"] == pytest.approx(record["final_loss"], abs=0.05)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["train_fact_recall"] == report["train_fact_recall"]
