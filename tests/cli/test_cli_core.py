"""The CLI verbs of the model core, run as a user would (subprocess), including every bad-input path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lmlab
from lmlab.core.tokenizer import train_bpe

LMLAB = [sys.executable, "-m", "lmlab.cli.main"]


def run(*args, stdin: str | None = None):
    """Run the CLI in-process (same code path as the console script, without a new interpreter per call)."""
    import contextlib
    import io

    from lmlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse --help / usage errors
                code = exit_.code
    finally:
        sys.stdin = old_stdin
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import transformers
    d = tmp_path_factory.mktemp("gpt2")
    words = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "cloud"]
    texts = [" ".join(words[(i * j) % 8] for j in range(12)) for i in range(200)]
    tok = train_bpe(texts, vocab_size=300)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save(d)
    return d


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_for_every_verb_through_the_real_entry_point():
    from lmlab.cli.main import VERBS

    for verb in VERBS:
        result = subprocess.run([*LMLAB, verb, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "usage: lmlab " + verb in result.stdout, result.stderr


def test_info_reports_parameter_count(model_dir):
    result = run("info", model_dir, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == lmlab.load(model_dir).num_parameters()
    assert info["model_type"] == "gpt2" and info["n_layers"] == 2


def test_generate_greedy_matches_library(model_dir):
    model, tok = lmlab.load(model_dir), lmlab.load_tokenizer(model_dir)
    ids = tok.encode("alpha beta")
    expected = lmlab.generate(model, [ids], max_new_tokens=8, stop_token_ids=[tok.eos_id])[0]
    result = run("generate", model_dir, "--prompt", "alpha beta", "--max-new-tokens", 8)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == "alpha beta" + tok.decode(expected[len(ids):])
    by_ids = run("generate", model_dir, "--ids", ",".join(map(str, ids)), "--max-new-tokens", 3)
    assert by_ids.returncode == 0 and len(by_ids.stdout.split()) == 3
    packed = run("generate", model_dir, "--prompt", "alpha beta", "--max-new-tokens", 8, "--pack")
    assert packed.returncode == 0 and packed.stdout == result.stdout  # prepacked weights: same greedy text


def test_convert_roundtrip_and_dtype(model_dir, tmp_path):
    result = run("convert", model_dir, tmp_path / "bf16", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    converted = lmlab.load(tmp_path / "bf16")
    assert converted.dtype == torch.bfloat16 and (tmp_path / "bf16" / "tokenizer.json").exists()
    ref = lmlab.load(model_dir, dtype="bfloat16")
    for (name, a), b in zip(ref.state_dict().items(), converted.state_dict().values()):
        assert torch.equal(a, b), name


def test_chat_reads_turns_from_stdin(model_dir):
    result = run("chat", model_dir, "--max-new-tokens", 4, stdin="hello\nagain\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_legacy_bin_is_read_with_weights_only(model_dir, tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    torch.save(load_file(model_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(lmlab.load(tmp_path)(ids), lmlab.load(model_dir)(ids))


# --- bad input: one line, naming the problem, non-zero exit, no traceback ---------------------------------

def test_missing_directory(tmp_path):
    assert_one_line_error(run("generate", tmp_path / "nope", "--ids", "1"), "nope", "no such directory")


def test_non_hf_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    assert_one_line_error(run("info", tmp_path), "not a Hugging Face checkpoint directory", "config.json")


def test_truncated_safetensors(model_dir, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    data = (model_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("generate", tmp_path, "--ids", "1"), "model.safetensors", "truncated")


def test_unknown_model_type(model_dir, tmp_path):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run("info", tmp_path), "model_type 'bert' is not supported", "llama")


def test_tokenizer_larger_than_embedding(model_dir, tmp_path):
    cfg = json.loads((model_dir / "config.json").read_text())
    small = lmlab.load(model_dir)
    (tmp_path / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    # shrink the embedding to 200 rows: the 300-token tokenizer no longer fits
    import transformers
    cfg.pop("transformers_version", None)
    hf_cfg = transformers.GPT2Config(**{**cfg, "vocab_size": 200})
    transformers.GPT2LMHeadModel(hf_cfg).save_pretrained(tmp_path)
    n_tokens = len(lmlab.load_tokenizer(model_dir))
    assert small.config.vocab_size == n_tokens > 200
    assert_one_line_error(run("generate", tmp_path, "--prompt", "alpha"), f"{n_tokens} tokens", "200 rows")


def test_missing_tensor_is_named(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    tensors = load_file(model_dir / "model.safetensors")
    tensors.pop("transformer.h.1.mlp.c_fc.weight")
    save_file(tensors, tmp_path / "model.safetensors")
    assert_one_line_error(run("generate", tmp_path, "--ids", "1"), "transformer.h.1.mlp.c_fc.weight", "missing")


def test_misshaped_tensor_is_named(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    tensors = load_file(model_dir / "model.safetensors")
    tensors["transformer.ln_f.weight"] = torch.ones(31)
    save_file(tensors, tmp_path / "model.safetensors")
    assert_one_line_error(run("generate", tmp_path, "--ids", "1"), "ln_final.weight", "(31,)")


def test_bad_ids_argument(model_dir):
    assert_one_line_error(run("generate", model_dir, "--ids", "1,x"), "--ids")
    vocab = lmlab.load(model_dir).config.vocab_size
    assert_one_line_error(run("generate", model_dir, "--ids", "99999"), "--ids", f"[0, {vocab})")
