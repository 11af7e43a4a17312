"""Hugging Face model ids resolve from the local Hugging Face cache, offline (HF_HOME set to a temporary
directory holding a tiny model in the hub cache layout), in Python and on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli_runner import assert_one_line_error, run

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_with_tiny_model(hf_home):
    """$HF_HOME/hub/models--lmlab-test--tiny/{refs/main, snapshots/<commit>/...}: what a download leaves."""
    repo = hf_home / "hub" / "models--lmlab-test--tiny"
    snapshot = repo / "snapshots" / COMMIT
    tok = train_bpe([" ".join(["alpha", "beta", "gamma"] * (i % 5 + 1)) for i in range(50)], vocab_size=280)
    model = Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2,
                                               max_seq_len=32)).init_weights(seed=3).eval()
    lmlab.save(model, snapshot, tokenizer=tok)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def _run_python(code: str, hf_home):
    """A fresh interpreter, so huggingface_hub reads HF_HOME / HF_HUB_OFFLINE from the environment as a user's would."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_model_id_loads_from_the_local_cache_offline(tmp_path):
    snapshot = _cache_with_tiny_model(tmp_path)
    code = ("import json, lmlab\n"
            "from cli_runner import run\n"
            "m = lmlab.load('lmlab-test/tiny'); t = lmlab.load_tokenizer('lmlab-test/tiny')\n"
            "ids = t.encode('alpha beta')\n"
            "gen = run('generate', 'lmlab-test/tiny', '--prompt', 'alpha beta', '--max-new-tokens', '5')\n"
            "info = run('info', 'lmlab-test/tiny', '--json')\n"
            "print(json.dumps({'out': lmlab.generate(m, [ids], max_new_tokens=5)[0], 'n': m.num_parameters(),\n"
            "                  'cli': [gen.returncode, gen.stdout, gen.stderr], 'info': info.stdout}))")
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    ours, tok = lmlab.load(snapshot), lmlab.load_tokenizer(snapshot)
    ids = tok.encode("alpha beta")
    expected = lmlab.generate(ours, [ids], max_new_tokens=5)[0]
    assert got["out"] == expected and got["n"] == ours.num_parameters()
    assert got["cli"] == [0, "alpha beta" + tok.decode(expected[len(ids):]) + "\n", ""]
    assert json.loads(got["info"])["parameters"] == ours.num_parameters()


def test_unknown_model_id_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "hub").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = assert_one_line_error(run("generate", "lmlab-test/absent", "--prompt", "hi"), "lmlab-test/absent",
                                 "local Hugging Face cache", "HF_HUB_OFFLINE")
    assert str(tmp_path / "hub") in line
    # a path that merely looks like an id but exists locally is used as a path
    assert_one_line_error(run("generate", tmp_path / "missing", "--prompt", "hi"), "no such directory")
