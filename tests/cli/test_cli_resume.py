"""`lmlab train` / `lmlab finetune`: --resume says what it resumed and refuses to resume nothing, Ctrl-C
writes a checkpoint that resumes bit-exactly, a LoRA fine-tune resumes with its adapter, warm-up longer
than the run is scaled with a warning, and recipe paths resolve against the recipe file."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from cli_runner import assert_one_line_error, run

import lmlab
from lmlab.data.prepare import prepare_corpus
from lmlab.errors import LmlabError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "data.block_size=16",
        "data.batch_size=4", "run.eval_every=0", "run.log_every=1", "optim.warmup_steps=1", "optim.lr=3e-3",
        "run.device=cpu", "run.progress=false"]
SENTENCES = ["The cat sat on the mat.", "The dog ran to the park.", "The owl slept in the barn."]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "t.txt").write_text("\n\n".join(SENTENCES * 30))
    prepare_corpus([d / "t.txt"], d / "shards", vocab_size=300, split="paragraph", val_fraction=0.1)
    return d / "shards"


def _sets(*pairs):
    return [a for p in pairs for a in ("--set", p)]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_nothing_to_resume_is_refused(tmp_path, shards):
    recipe = ROOT / "configs/pretrain-my-text.yaml"
    args = _sets(*TINY, f"data.path={shards}", f"run.out_dir={tmp_path / 'run'}", "run.max_steps=2")
    assert_one_line_error(run("train", recipe, *args, "--resume"), "--resume: no checkpoint", "to resume from")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(tmp_path, shards, monkeypatch):
    from lmlab.train.loop import Trainer

    recipe = ROOT / "configs/pretrain-my-text.yaml"
    common = [*TINY, f"data.path={shards}", "run.max_steps=6", "run.ckpt_every=0"]
    assert run("train", recipe, *_sets(*common, f"run.out_dir={tmp_path / 'full'}")).returncode == 0

    plain = Trainer.train_step

    def step_with_ctrl_c(self):
        out = plain(self)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C during step 3... or right after it
        return out

    monkeypatch.setattr(Trainer, "train_step", step_with_ctrl_c)
    out = tmp_path / "cut"
    cut = run("train", recipe, *_sets(*common, f"run.out_dir={out}"))
    assert cut.returncode == 2 and "Traceback" not in cut.stderr
    notice, line = [x for x in cut.stderr.splitlines() if x.strip()]
    assert notice.startswith("interrupt: finishing this step") and "interrupted after step 3" in line
    assert "continue with --resume" in line
    assert (out / "checkpoints" / "step-00000003").is_dir() and str(out / "checkpoints") in line
    monkeypatch.setattr(Trainer, "train_step", plain)
    resumed = run("train", recipe, *_sets(*common, f"run.out_dir={out}"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 3" in resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from_step"] == 3
    assert _losses(out) == _losses(tmp_path / "full")  # interrupted + resumed == uninterrupted
    assert (out / "model" / "tokenizer.json").is_file()


def test_warmup_longer_than_the_run_is_scaled_with_a_warning(tmp_path, shards):
    result = run("train", ROOT / "configs/pretrain-my-text.yaml",
                 *_sets(*TINY, f"data.path={shards}", f"run.out_dir={tmp_path}", "run.max_steps=3",
                        "optim.warmup_steps=100"))
    assert result.returncode == 0, result.stderr
    assert "warning: optim.warmup_steps 100 >= run.max_steps 3; using 1 warm-up steps" in result.stderr
    assert "warmup_steps: 1" in (tmp_path / "config.yaml").read_text()


def test_recipe_paths_are_relative_to_the_recipe(tmp_path, shards, monkeypatch):
    from lmlab.train.run import recipe_path_overrides

    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    recipe = project / "recipes" / "r.yaml"
    recipe.write_text(f"data:\n  path: ../data/shards\nrun:\n  out_dir: ../out\nmodel:\n  tokenizer: {shards}\n")
    # relative recipe paths are joined to the recipe's directory; absolute ones stay as they are
    assert recipe_path_overrides(recipe) == [f"data.path={project / 'data/shards'}", f"run.out_dir={project / 'out'}"]
    recipe.write_text("data:\n  path: ../data/shards\nrun:\n  out_dir: ../out\n")
    (project / "data").mkdir()
    (project / "data" / "shards").symlink_to(shards)
    monkeypatch.chdir(tmp_path)  # anywhere but the project
    result = run("train", recipe, *_sets(*TINY, "run.max_steps=2"))
    assert result.returncode == 0, result.stderr
    assert (project / "out" / "model" / "config.json").is_file()
    # a --set path is relative to the working directory
    with pytest.raises(LmlabError, match="nope"):
        from lmlab.train.run import run_training
        run_training(str(recipe), [*TINY, "data.path=nope"])


def test_finetune_lora_resumes_with_its_adapter(tmp_path, shards):
    base = tmp_path / "base"
    assert run("train", ROOT / "configs/pretrain-my-text.yaml",
               *_sets(*TINY, f"data.path={shards}", f"run.out_dir={base}", "run.max_steps=2")).returncode == 0
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "Where?"},
                                                     {"role": "assistant", "content": s}]}) + "\n"
                            for s in SENTENCES * 3))
    recipe = ROOT / "configs/finetune-lora.yaml"

    def finetune(out, *extra):
        return run("finetune", recipe, *_sets(f"model.init_from={base / 'model'}", f"data.path={chat}",
                                              f"run.out_dir={out}", "run.max_steps=4", "run.ckpt_every=2",
                                              "run.keep_last=0", "run.log_every=1", "data.block_size=32",
                                              "data.batch_size=2", "merge_adapter=false", "optim.warmup_steps=1"),
                   *extra, "--no-progress")

    assert_one_line_error(finetune(tmp_path / "none", "--resume"), "--resume: no checkpoint")
    assert finetune(tmp_path / "full").returncode == 0
    cut = tmp_path / "cut"
    assert finetune(cut).returncode == 0
    import shutil

    shutil.rmtree(cut / "checkpoints" / "step-00000004")  # as if stopped after step 2
    assert (cut / "checkpoints" / "step-00000002" / "extra_state.safetensors").is_file()  # the LoRA tensors
    resumed = finetune(cut, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 2" in resumed.stderr
    assert _losses(cut) == _losses(tmp_path / "full")
    assert lmlab.load(base / "model").num_parameters() > 0
