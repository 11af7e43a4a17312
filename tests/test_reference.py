"""The shipped reference checkpoint reaches its recorded quality, and so does its recipe re-run from scratch.

The recipe run trains for 500 steps (about 2.5 minutes on one thread): it is the one test that shows the
quickstart's headline (>= 90% recall on training facts) from a cold start, so it is worth its time.
"""

from __future__ import annotations

import json

import pytest

from lmlab.data.recall import recall
from lmlab.errors import LmlabError
from lmlab.reference import (
    ASSET_DIR,
    QUALITY_KEYS,
    RECORD_FILE,
    WORLD_NAMES,
    load_reference,
    read_record,
    resolve,
    sha256,
)


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


# ---- by name, corrupted files, and the world reference (issue 11) ------------------------------------
def test_unknown_reference_name_is_a_one_line_error():
    with pytest.raises(LmlabError, match=r"unknown name 'world-llama-9b' \(shipped: world-llama-0.9m, world-llama-2m-1k, world-llama-0.9m-1k, "
                       r"world-llama-2m-1k-v2, world-llama-2m-1k-retrieval, world-llama-2m-1k-retrieval-2, "
                       r"world-llama-2m-1k-aug, world-llama-2m-1k-retrieval-3, world-llama-2m-1k-retrieval-4, "
                       r"world-llama-2m-1k-retrieval-5, world-llama-2m-1k-v5, world-llama-2m-1k-v6\)"):
        load_reference("world-llama-9b")


def test_default_name_is_the_quickstart_model(ref):
    assert ref.record["name"] == "world-llama-0.9m" == read_record(resolve("world-llama-0.9m"))["name"]


def test_corrupted_shipped_file_is_a_one_line_error(tmp_path):
    import shutil

    copy = tmp_path / "ref"
    shutil.copytree(ASSET_DIR, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in a weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(LmlabError, match=r"model.safetensors: sha256 does not match the reference record"):
        load_reference(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(LmlabError, match=r"model.safetensors: missing"):
        load_reference(copy)


@pytest.fixture(scope="module", params=WORLD_NAMES)
def world_ref(request):
    return load_reference(request.param)


def test_world_reference_files_are_small_and_match_the_record(world_ref):
    directory = resolve(world_ref.record["name"])
    total = sum(f.stat().st_size for f in directory.iterdir())
    assert total < 50 * 2**20, f"{directory.name} is {total / 2**20:.1f} MB (limit 50 MB)"
    record = world_ref.record
    assert set(record["files_sha256"]) == {f.name for f in directory.iterdir()} - {RECORD_FILE}
    assert world_ref.model.num_parameters() == record["parameters"]
    assert world_ref.model.config.max_seq_len >= 1024
    assert len(world_ref.world.facts) == record["n_facts"]


def test_world_reference_recorded_figures_reproduce_from_its_weights(world_ref):
    """The record's ``quality_subset`` (same scorers, a fixed evenly spaced subset) re-measured: ±1 point."""
    import torch

    from lmlab.train.world_quality import evaluate_world_model

    record = world_ref.record
    options = dict(record["quality_subset_options"])
    torch.set_num_threads(1)
    measured = evaluate_world_model(world_ref.model, world_ref.tokenizer, world_ref.world,
                                    subset=options.pop("subset"), n_samples=options["n_samples"],
                                    n_per_cell=options["n_per_cell"], context_tokens=tuple(options["context_tokens"]))
    assert set(measured) == set(record["quality_subset"])
    for key, value in record["quality_subset"].items():
        assert measured[key] == pytest.approx(value, abs=0.01), key
    # the full figures are in the record too, one per scorer
    assert set(record["quality"]) >= {"train_fact_recall", "heldout_paraphrase_recall", "qa_heldout_accuracy",
                                      "two_hop_direct", "two_hop_two_step", "attribute_code/sentiment",
                                      "kv_retrieval/1024/0.5"}


def test_reference_cli_rejects_an_unknown_name_in_one_line(capsys, monkeypatch):
    from lmlab.reference import main
    from lmlab.train import world_recipe

    assert main(["--name", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --name: unknown reference 'bogus' (shipped: world-llama-0.9m, world-llama-2m-1k, "
                   "world-llama-0.9m-1k, world-llama-2m-1k-v2, world-llama-2m-1k-retrieval, "
                   "world-llama-2m-1k-retrieval-2, world-llama-2m-1k-aug, world-llama-2m-1k-retrieval-3, "
                   "world-llama-2m-1k-retrieval-4, world-llama-2m-1k-retrieval-5, world-llama-2m-1k-v5, "
                   "world-llama-2m-1k-v6)"]
    # a recipe kept for its record but not shipped builds only into a directory of one's own
    monkeypatch.setitem(world_recipe.WORLD_RECIPES, "world-llama-unshipped", world_recipe.ReferenceRecipe())
    assert main(["--name", "world-llama-unshipped"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --name: 'world-llama-unshipped' is a recipe that is not shipped; give --out DIR to build it there"]


def test_reference_cli_precision_replaces_the_recipes(capsys, monkeypatch, tmp_path):
    from lmlab.reference import main
    from lmlab.train import world_recipe

    assert main(["--precision", "bf16"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --precision: only for a world reference; 'world-llama-0.9m' trains in fp32"]

    class Trained(Exception):
        pass

    seen = []

    def train(run, recipe, **kwargs):
        seen.append(recipe)
        raise Trained

    monkeypatch.setattr(world_recipe, "train_reference_model", train)
    shipped = world_recipe.WORLD_RECIPES["world-llama-2m-1k-v6"]
    with pytest.raises(Trained):
        main(["--name", "world-llama-2m-1k-v6", "--out", str(tmp_path / "v6"), "--precision", "fp32"])
    assert shipped.precision == "bf16" and seen == [shipped.scaled(precision="fp32")]
