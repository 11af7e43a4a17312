"""``lmlab serve`` refuses bad arguments and config files with one line naming the problem, before serving."""

from __future__ import annotations

import pytest

from lmlab.cli.main import main
from lmlab.reference import ASSET_DIR


def run_serve(capsys, *args) -> str:
    assert main(["serve", str(ASSET_DIR), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("yaml_text, words", [
    ("max_batch_size: 0\n", "'max_batch_size' must be >= 1"),
    ("max_batchsize: 4\n", "unknown key 'max_batchsize'"),
    ("steering:\n  s: {path: v.safetensors}\n", "steering 's' needs 'path' and 'hook'"),
    ("context_length: 4096\n", "exceeds the model's max_seq_len 128"),
    ("adapters:\n  a: nowhere\n", "adapter 'a'"),
    ("steering:\n  s: {path: v.safetensors, hook: blocks.99.resid_post}\n", "unknown hook point"),
    ("steering:\n  s: {path: missing.safetensors, hook: blocks.0.resid_post}\n", "cannot read"),
    ("guides:\n  g: {guide: bogus}\n", "guide 'g': 'guide' must be gedi, genarm, vas or proxy"),
    ("guides:\n  g: {omega: 2}\n", "guide 'g' names no guide and no forbidden strings"),
    ("guides:\n  g: {guide: gedi, guide_model: x}\n", "guide 'g': gedi needs desired_code, anti_code"),
    ("guides:\n  g: {guide: proxy, tuned: nowhere, untuned: nowhere}\n", "guide 'g': cannot load nowhere"),
    ("guides:\n  g: {guide: genarm}\n", "guide 'g': genarm needs at least one arm"),
    ("kv_policies:\n  k: {policy: window, budget: 0}\n", "kv policy 'k': KV policy 'window': budget must be at least"),
    ("kv_policies:\n  k: {policy: lru, budget: 4}\n", "kv policy 'k': unknown KV policy 'lru'"),
    ("kv_policies:\n  k: {budget: 4}\n", "kv_policies 'k' needs 'policy'"),
    ("kv_policies:\n  k: {policy: sinks, budget: 8, options: {n_sink: 2}}\n", "kv policy 'k': bad options ['n_sink']"),
    ("default_kv_policy: k\n", "default_kv_policy 'k' is not a kv_policies entry (entries: none)"),
])
def test_bad_config_is_one_line(tmp_path, capsys, yaml_text, words):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml_text)
    err = run_serve(capsys, "--config", str(cfg), "--port", "0")
    assert words in err and err.startswith("lmlab serve: error:"), err


def test_wrong_vector_shape(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    save_file({"v": torch.zeros(7)}, str(tmp_path / "v.safetensors"))
    (tmp_path / "serve.yaml").write_text("steering:\n  s: {path: v.safetensors, hook: blocks.0.resid_post}\n")
    err = run_serve(capsys, "--config", str(tmp_path / "serve.yaml"))
    assert "shape (7,) does not match hook point blocks.0.resid_post (per-token shape (128,))" in err


def test_bad_port_and_threads(capsys):
    assert "--port must be in [0, 65535]" in run_serve(capsys, "--port", "70000")
    assert "--threads must be >= 1" in run_serve(capsys, "--threads", "0")
