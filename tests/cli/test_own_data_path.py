"""The README's "Your own data" commands, run verbatim through the CLI in a temporary directory:
text files -> lmlab data -> lmlab train -> lmlab generate -> lmlab finetune (LoRA) -> lmlab merge -> transformers.

Only size options are appended (``--set`` a tiny model and a few steps) so the test runs in seconds; the
commands themselves, their paths and the recipes they name are the README's and configs/' own.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from cli_runner import run

import lmlab

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=64",
              "data.block_size=32", "data.batch_size=8", "run.max_steps=40", "run.eval_every=20", "run.eval_batches=2",
              "run.ckpt_every=0", "run.log_every=20", "optim.lr=1e-2", "optim.warmup_steps=4", "run.device=cpu"]
TINY_FINETUNE = ["run.max_steps=3", "data.block_size=64", "data.batch_size=4", "optim.warmup_steps=1", "run.device=cpu"]
SENTENCES = ["The cat sat on the mat.", "The dog ran to the park.", "The owl slept in the barn."]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line:
            argv = shlex.split(line)
            assert argv[0] == "lmlab", line
            commands.append(argv[1:])
    return commands


@pytest.fixture(scope="module")
def own_data_run(tmp_path_factory):
    """Run every README command in a fresh directory laid out like the repository (configs/ beside runs/)."""
    import os

    work = tmp_path_factory.mktemp("own-data")
    shutil.copytree(ROOT / "configs", work / "configs")
    (work / "my_texts").mkdir()
    for k in range(3):  # paragraphs = documents (--split paragraph), several files in a directory
        (work / "my_texts" / f"part{k}.txt").write_text("\n\n".join(SENTENCES * 40) + "\n")
    with open(work / "chat.jsonl", "w") as f:
        for s in SENTENCES * 4:
            animal = s.split()[1]
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Where is the {animal}?"},
                                             {"role": "assistant", "content": s}]}) + "\n")
    results = {}
    old = os.getcwd()
    os.chdir(work)
    try:
        for argv in readme_commands():
            extra = {"train": TINY_TRAIN, "finetune": TINY_FINETUNE}.get(argv[0], [])
            result = run(*argv, *[a for s in extra for a in ("--set", s)])
            assert result.returncode == 0, (argv, result.stderr[-2000:])
            results[argv[0]] = result
    finally:
        os.chdir(old)
    return work, results


def test_readme_section_drives_the_whole_path(own_data_run):
    assert [c[0] for c in readme_commands()] == ["data", "train", "generate", "finetune", "merge"]
    work, results = own_data_run
    shards = work / "runs/my-text/shards"
    index = json.loads((shards / "index.json").read_text())
    assert index["splits"]["val"]["documents"] > 0 and index["splits"]["train"]["documents"] > 0
    assert (shards / "tokenizer.json").is_file()  # the trained tokenizer travels with the shards
    # the recipe's relative paths were resolved against configs/, i.e. into work/runs, not configs/runs
    assert not (work / "configs" / "runs").exists()


def test_training_ends_in_a_usable_model_directory(own_data_run):
    work, results = own_data_run
    model_dir = work / "runs/my-text/train/model"
    tok = lmlab.load_tokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_id is not None and config["bos_token_id"] == tok.bos_id
    assert config["pad_token_id"] == tok.pad_id
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == tok.eos_id
    assert tok.chat_template is not None
    # every checkpoint carries the ids too (not only the final directory)
    ckpt = next((work / "runs/my-text/train/checkpoints").iterdir())
    assert json.loads((ckpt / "config.json").read_text())["eos_token_id"] == tok.eos_id


def test_generate_stops_at_eos_in_cli_and_python(own_data_run):
    work, results = own_data_run
    model_dir = work / "runs/my-text/train/model"
    model, tok = lmlab.load(model_dir), lmlab.load_tokenizer(model_dir)
    ids = tok.encode("The cat")
    out = lmlab.generate(model, [ids], max_new_tokens=30)[0]  # no stop ids given: the config's EOS
    assert out[-1] == tok.eos_id and len(out) < len(ids) + 30
    assert results["generate"].stdout == "The cat" + tok.decode(out[len(ids):]) + "\n"
    assert results["generate"].stdout.startswith("The cat sat")  # 40 steps learn the corpus' sentence shape


def test_lora_merge_loads_in_transformers_with_the_same_greedy_text(own_data_run):
    work, results = own_data_run
    assert (work / "runs/my-lora/adapter/adapter_config.json").is_file()
    merged = work / "runs/my-chat-model"
    ours, tok = lmlab.load(merged), lmlab.load_tokenizer(merged)
    base = lmlab.load(work / "runs/my-text/train/model")
    assert any(not torch.equal(a, b) for a, b in zip(ours.state_dict().values(), base.state_dict().values()))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    for prompt in ("The cat", "The owl"):
        ids = tok.encode(prompt)
        expected = lmlab.generate(ours, [ids], max_new_tokens=30)[0]
        with torch.no_grad():
            got = theirs.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)[0].tolist()
        assert got == expected, prompt
        assert got[-1] == tok.eos_id and len(got) < len(ids) + 30  # transformers stopped at EOS as well
