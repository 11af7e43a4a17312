"""`lmlab quantize` and `--kv-policy` on the shipped reference model: loadable output; errors are one line."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.cli.main import main
from lmlab.efficient.quant import QuantizedLinear
from lmlab.reference import ASSET_DIR


@pytest.mark.parametrize("args, n_quantized", [
    (["--bits", "8"], 4 * 7 + 1), (["--bits", "8", "--no-head"], 4 * 7),
    (["--bits", "4", "--method", "gptq", "--group-size", "32", "--calibration", "world", "--samples", "8",
      "--seq-len", "64", "--head-bits", "8"], 4 * 7 + 1)])
def test_quantize_cli_writes_a_loadable_checkpoint(tmp_path, capsys, args, n_quantized):
    assert main(["quantize", str(ASSET_DIR), str(tmp_path / "q"), *args]) == 0
    assert "linear layers quantized" in capsys.readouterr().out
    model = lmlab.load(tmp_path / "q")
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == n_quantized
    if n_quantized > 4 * 7:
        assert model.lm_head.bits == 8
    tok = lmlab.load_tokenizer(tmp_path / "q")
    ids = torch.tensor([tok.encode("The capital of")])
    with torch.no_grad():
        assert torch.isfinite(model(ids)).all()


@pytest.mark.parametrize("args, message", [
    (["--method", "gptq"], "--calibration is required with --method gptq"),
    (["--bits", "8", "--group-size", "32"], "int8 is per output channel"),
])
def test_quantize_cli_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["quantize", str(ASSET_DIR), str(tmp_path / "q"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_generate_cli_takes_a_kv_policy(capsys):
    args = ["generate", str(ASSET_DIR), "--prompt", "The capital of", "--max-new-tokens", "6"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--kv-policy", "h2o", "--kv-budget", "1.0"]) == 0  # never evicts: same text
    assert capsys.readouterr().out == plain
    assert main(args + ["--kv-policy", "window", "--kv-budget", "2"]) == 0
    assert capsys.readouterr().out.startswith("The capital of")


@pytest.mark.parametrize("extra, message", [
    (["--kv-policy", "h2o"], "--kv-policy needs --kv-budget"),
    (["--kv-budget", "0.5"], "--kv-budget needs --kv-policy"),
    (["--kv-policy", "window", "--kv-budget", "0"], "budget must be at least 1 token, got 0"),
    (["--kv-policy", "lru", "--kv-budget", "8"], "unknown KV policy 'lru'"),
])
def test_generate_cli_kv_errors_are_one_line(capsys, extra, message):
    assert main(["generate", str(ASSET_DIR), "--prompt", "The", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_rope_search_cli_writes_a_longrope_checkpoint(tmp_path, capsys):
    out = tmp_path / "long"
    assert main(["rope-search", str(ASSET_DIR), str(out), "--length", "256", "--budget", "3", "--windows", "1"]) == 0
    assert "3 evaluations" in capsys.readouterr().out
    model = lmlab.load(out)
    assert model.config.rope_scaling == "longrope" and model.config.max_seq_len == 256
    assert len(dict(model.config.rope_scaling_params)["long_factor"]) == model.config.rot_dim // 2
    assert main(["rope-search", str(ASSET_DIR), str(out), "--length", "64"]) == 2
    assert "must exceed the model's context 128" in capsys.readouterr().err


def _copy_with_config(tmp_path, edit):
    import json
    import shutil

    d = tmp_path / "m"
    shutil.copytree(ASSET_DIR, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["rope_parameters"].update(rope_type="longrope", short_factor=[1.0] * 3, long_factor=[1.0] * 3,
                                           original_max_position_embeddings=128, factor=2.0),
     "short_factor must list rot_dim / 2"),
    (lambda c: c["rope_parameters"].update(rope_type="su", factor=2.0), "rope scaling type 'su' is not supported"),
])
def test_generate_cli_names_a_bad_rope_or_quantized_checkpoint_in_one_line(tmp_path, capsys, edit, message):
    """Issue 18's error cases end to end: a factor list of the wrong length, a scaling type lmlab cannot use
    -> exit 2 and one line on stderr naming it."""
    d = _copy_with_config(tmp_path, edit)
    assert main(["generate", str(d), "--prompt", "The capital of", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_generate_cli_names_a_quantized_config_that_does_not_match_its_tensors(tmp_path, capsys):
    import json

    q = tmp_path / "q"
    assert main(["quantize", str(ASSET_DIR), str(q), "--bits", "8"]) == 0
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"].update(bits=4, group_size=32)  # the file holds int8 codes
    (q / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["generate", str(q), "--prompt", "The capital of", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "quantization_config and config.json imply" in err and err.count("\n") == 1, err
