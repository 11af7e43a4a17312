"""The CLI never destroys a user's files, checks its input before acting, and its papercuts stay fixed
(issue 10 items 8-10 and 14, issue 12 "Found"). Each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import assert_one_line_error, run

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.errors import LmlabError

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "cloud"]


@pytest.fixture(scope="module")
def tok():
    texts = [" ".join(WORDS[(i * j) % 8] for j in range(12)) for i in range(200)]
    return train_bpe(texts, vocab_size=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    """A tiny Llama whose config.json has no special-token ids (as the quickstart model had), with a tokenizer."""
    d = tmp_path_factory.mktemp("llama")
    config = ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, max_seq_len=48)
    model = Transformer(config).init_weights(seed=0).eval()
    lmlab.save(model, d)  # no tokenizer given: no ids to take
    tok.save(d)
    assert json.loads((d / "config.json").read_text())["eos_token_id"] is None
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --- issue 10 item 8: quickstart --out replaces only what quickstart wrote ----------------------------------

def test_quickstart_refuses_a_directory_it_did_not_write(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    assert_one_line_error(run("quickstart", "--out", mine, "--steps", 1), "not written by `lmlab quickstart`",
                          "--force")
    assert (mine / "chapter1.tex").read_text() == "precious"


def test_quickstart_never_replaces_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), ".."):
        assert_one_line_error(run("quickstart", "--out", out, "--steps", 1, "--force"), "working directory")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_replace_output_dir_accepts_its_own_marker_and_force(tmp_path):
    from lmlab.io.output_paths import MARKER, replace_output_dir

    out = replace_output_dir(tmp_path / "run", "quickstart")
    (out / "old-result").write_text("x")
    replace_output_dir(out, "quickstart")  # an earlier quickstart run: replaced
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("x")
    with pytest.raises(LmlabError, match="not written by"):
        replace_output_dir(other, "quickstart")
    with pytest.raises(LmlabError, match="not written by"):  # another verb's marker is not quickstart's
        replace_output_dir(replace_output_dir(tmp_path / "w", "world"), "quickstart")
    replace_output_dir(other, "quickstart", force=True)
    assert not (other / "f").exists()


# --- issue 10 item 9: a file where a directory goes: one line, nothing written ------------------------------

def test_outputs_onto_a_file_are_refused_in_one_line(tmp_path, model_dir, tok):
    target = tmp_path / "file.bin"
    target.write_bytes(b"user data")
    assert_one_line_error(run("convert", model_dir, target), "exists and is a file")
    assert_one_line_error(run("quickstart", "--out", target, "--steps", 1), "exists and is a file")
    assert_one_line_error(run("merge", model_dir, tmp_path / "adapter", target), "exists and is a file")
    assert_one_line_error(run("tokenizer", target, "--files", model_dir / "tokenizer.json"), "exists and is a file")
    with pytest.raises(LmlabError, match="exists and is a file"):
        lmlab.save(lmlab.load(model_dir), target)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "alpha"},
                                             {"role": "assistant", "content": "beta"}]}) + "\n")
    assert_one_line_error(run("finetune", Path(__file__).parents[2] / "configs/finetune-lora.yaml", "--set",
                              f"model.init_from={model_dir}", "--set", f"data.path={chat}", "--set",
                              f"run.out_dir={target}"), "run.out_dir", "exists and is a file")
    assert target.read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "file.bin"]


def test_convert_in_place_is_refused_and_stale_shards_go(tmp_path, model_dir):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in _tree(model_dir).items():
        (copy / name).write_bytes(data)
    before = _tree(copy)
    assert_one_line_error(run("convert", copy, copy, "--dtype", "bfloat16"), "is SRC", "overwrite the source")
    assert _tree(copy) == before
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    (dst / "model.safetensors.index.json").write_text("{}")
    assert run("convert", model_dir, dst).returncode == 0
    assert not list(dst.glob("model-*-of-*.safetensors")) and not (dst / "model.safetensors.index.json").exists()
    assert lmlab.load(dst).num_parameters() == lmlab.load(model_dir).num_parameters()


# --- issue 10 item 10 and sampling options: validated before the model loads or anything prints -------------

def test_generate_validates_before_printing_or_loading(tmp_path, model_dir):
    result = run("generate", model_dir, "--prompt", "alpha", "--top-p", 1.5)
    assert_one_line_error(result, "--top-p", "(0, 1]")
    assert result.stdout == ""
    # bad options are reported before the (missing) model is even looked for
    assert_one_line_error(run("generate", tmp_path / "missing", "--prompt", "hi", "--temperature", -1), "--temperature")
    assert_one_line_error(run("chat", tmp_path / "missing", "--max-new-tokens", 0), "--max-new-tokens")
    assert_one_line_error(run("generate", tmp_path / "missing", "--ids", "1", "--presence-penalty", 3), "[-2, 2]")


# --- special tokens -----------------------------------------------------------------------------------------

def test_special_token_ids_come_from_the_tokenizer(model_dir, tok, tmp_path):
    model = lmlab.load(model_dir)
    assert (model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id) == (
        tok.eos_id, tok.bos_id, tok.pad_id)
    ids = tok.encode("alpha beta")
    # lmlab.generate stops at the tokenizer's EOS by default: force EOS to be the greedy choice after 2 tokens
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] = 0
    bias = {"n": 0}

    def eos_third(ids_, logits):
        bias["n"] += 1
        if bias["n"] == 3:
            logits[:, tok.eos_id] = 1e4
        return logits

    out = lmlab.generate(model, [ids], max_new_tokens=10, logits_processors=[eos_third])[0]
    assert out[len(ids):][-1] == tok.eos_id and len(out) == len(ids) + 3
    saved = lmlab.save(Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2)),
                       tmp_path / "m", tokenizer=tok)
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_id and cfg["pad_token_id"] == tok.pad_id
    assert json.loads((saved / "generation_config.json").read_text())["eos_token_id"] == tok.eos_id


# --- context limits ---------------------------------------------------------------------------------------------

def test_prompt_longer_than_the_context_is_refused_or_truncated(model_dir, tok):
    long_prompt = " ".join(["alpha beta"] * 40)
    n = len(tok.encode(long_prompt))
    assert n > 48
    assert_one_line_error(run("generate", model_dir, "--prompt", long_prompt), f"{n} tokens", "context of 48",
                          "--truncate-left")
    result = run("generate", model_dir, "--prompt", long_prompt, "--truncate-left", "--max-new-tokens", 8)
    assert result.returncode == 0, result.stderr
    assert "truncated from the left" in result.stderr and "-> 40 tokens" in result.stderr
    model = lmlab.load(model_dir)
    kept = tok.encode(long_prompt)[-40:]
    expected = lmlab.generate(model, [kept], max_new_tokens=8, stop_token_ids=[tok.eos_id,
                                                                                 tok.token_to_id("<|im_end|>")])[0]
    assert result.stdout == tok.decode(kept) + tok.decode(expected[40:]) + "\n"


def test_chat_streams_trims_history_and_has_commands(model_dir):
    turns = "\n".join(["alpha beta gamma delta"] * 6 + ["/system be brief", "/reset", "omega", "/exit", "never"])
    result = run("chat", model_dir, "--max-new-tokens", 4, stdin=turns + "\n")
    assert result.returncode == 0, result.stderr
    assert "history trimmed" in result.stderr and "context of 48 tokens" in result.stderr
    assert "system message set" in result.stderr and "history cleared" in result.stderr
    assert len(result.stdout.splitlines()) == 7  # six turns + "omega"; "/exit" ends before "never"


# --- generate: samples, JSON log-probabilities, penalties ---------------------------------------------------------

def test_generate_json_logprobs_and_samples(model_dir, tok):
    result = run("generate", model_dir, "--prompt", "alpha beta", "--max-new-tokens", 5, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    model = lmlab.load(model_dir)
    ids = tok.encode("alpha beta")
    seq = torch.tensor([ids + record["token_ids"]])
    with torch.no_grad():
        logp = model(seq).log_softmax(-1)[0]
    for j, (t, lp) in enumerate(zip(record["token_ids"], record["logprobs"])):
        assert lp == pytest.approx(float(logp[len(ids) - 1 + j, t]), abs=1e-5)
        assert lp == pytest.approx(float(logp[len(ids) - 1 + j].max()), abs=1e-5)  # greedy picks the top token
    samples = run("generate", model_dir, "--prompt", "alpha", "--num-samples", 4, "--temperature", 5.0, "--seed", 1,
                  "--max-new-tokens", 6, "--json")
    rows = [json.loads(line) for line in samples.stdout.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1, 2, 3]
    assert len({tuple(r["token_ids"]) for r in rows}) > 1  # temperature 5: the samples differ


def test_presence_and_frequency_penalties_follow_openai():
    from lmlab.cli.common import OpenAIPenalties

    prompt_len = 2
    ids = torch.tensor([[7, 7, 3, 3, 5], [0, 7, 1, 1, 1]])  # columns 2.. are generated
    logits = torch.zeros(2, 8)
    out = OpenAIPenalties(prompt_len, presence=0.5, frequency=0.25)(ids, logits.clone())
    expected = torch.zeros(2, 8)
    for b, row in enumerate(ids[:, prompt_len:].tolist()):
        for t in set(row):
            expected[b, t] -= 0.25 * row.count(t) + 0.5
    torch.testing.assert_close(out, expected)
    assert out[0, 7] == 0  # prompt tokens are not penalised


# --- smaller papercuts ------------------------------------------------------------------------------------------

def test_tokenizer_files_flag_does_not_swallow_out(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(WORDS[i % 8:] + WORDS)}) + "\n" for i in range(50)))
    result = run("tokenizer", "--files", data, tmp_path / "tok", "--vocab-size", 280)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert run("tokenizer", tmp_path / "tok2", data, "--vocab-size", 280).returncode == 0


def test_info_reports_a_corrupt_safetensors_file(tmp_path, model_dir):
    for name, data in _tree(model_dir).items():
        (tmp_path / name).write_bytes(data)
    data = (model_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    assert_one_line_error(run("info", tmp_path), "model.safetensors", "truncated or corrupt")


def test_info_into_a_closed_pipe_ends_quietly(model_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli.main", "info", str(model_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head -0`: the reader is gone before lmlab writes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_template_sandbox_violation_is_one_line(tmp_path, model_dir):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"q": w, "a": w}) + "\n" for w in WORDS))
    (tmp_path / "task.yaml").write_text(
        "name: evil\ndocuments: docs.jsonl\noutput_type: generate_until\n"
        "doc_to_text: \"{% set x = [] %}{{ x.append(1) }}{{ q }}\"\ndoc_to_target: \"{{ a }}\"\n"
        "generation_kwargs: {until: [\"\\n\"], max_new_tokens: 2}\n")
    line = assert_one_line_error(run("evaluate", "--model", model_dir, "--tasks", tmp_path / "task.yaml", "--out",
                                     tmp_path / "out", "--no-plot"), "sandbox forbids")
    assert "append" in line


def test_errors_give_the_cli_spelling_of_the_fix(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x").write_text("x")
    line = assert_one_line_error(run("world", tmp_path / "w", "--preset", "tiny"), "--overwrite")
    assert "overwrite=True" not in line


def test_help_shows_defaults_and_honest_pack_numbers():
    result = run("generate", "--help")
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert result.returncode == 0
    assert "(default: 64)" in text and "(default: 0.0)" in text
    assert "0.85-1.05x in fp32" in text and "1.4-2x" not in text
    assert "(default: 0.05)" in " ".join(run("data", "--help").stdout.split())


def test_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        assert run("world", tmp_path / "w", "--preset", "tiny").returncode == 0
        from lmlab.io.atomic import atomic_save_safetensors, atomic_write_json

        atomic_write_json(tmp_path / "r.json", {})
        atomic_save_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 would fail here
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_shipped_reference_stops_at_eos_in_lmlab_and_transformers():
    import transformers

    from lmlab.reference import ASSET_DIR, load_reference

    ref = load_reference()
    eos = ref.tokenizer.eos_id
    assert json.loads((ASSET_DIR / "config.json").read_text())["eos_token_id"] == eos
    theirs = transformers.AutoModelForCausalLM.from_pretrained(ASSET_DIR).eval()
    probe = ref.world.probes("train")[0]
    ids = ref.tokenizer.encode(probe.prompt)
    ours = lmlab.generate(ref.model, [ids], max_new_tokens=40)[0]
    with torch.no_grad():
        got = theirs.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)[0].tolist()
    assert got == ours and ours[-1] == eos and len(ours) < len(ids) + 40


def test_python_generate_refuses_a_prompt_longer_than_the_context(model_dir):
    model = lmlab.load(model_dir)
    with pytest.raises(LmlabError, match="60 tokens does not fit the model's context of 48"):
        lmlab.generate(model, [[5] * 60], max_new_tokens=2)
    with pytest.raises(LmlabError, match="context of 48"):
        lmlab.generate(model, torch.full((2, 49), 5), max_new_tokens=2)
    assert len(lmlab.generate(model, [[5] * 40], max_new_tokens=2)[0]) <= 42


def test_data_reads_jsonl_and_parquet_with_a_given_tokenizer(tmp_path, model_dir, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmlab.data.shards import TokenShards

    texts = [" ".join(WORDS[i % 8:] + WORDS[:i % 8]) for i in range(40)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[:20]))
    pq.write_table(pa.table({"body": texts[20:]}), tmp_path / "in" / "b.parquet")
    out = tmp_path / "shards"
    result = run("data", tmp_path / "in", "--out", out, "--tokenizer", model_dir, "--text-field", "body",
                 "--val-fraction", 0.25)
    assert result.returncode == 0, result.stderr
    train, val = TokenShards(out, "train"), TokenShards(out, "val")
    assert len(train) + len(val) == sum(len(tok.encode(t)) + 1 for t in texts)  # every document + its EOS
    assert len(val) > 0 and lmlab.load_tokenizer(out).encode("alpha beta") == tok.encode("alpha beta")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_one_line_error(run("data", tmp_path / "in", "--out", mine, "--tokenizer", model_dir, "--text-field",
                              "body"), "refusing to replace it")
    assert (mine / "notes.txt").read_text() == "keep"


def test_library_fix_spellings_become_cli_spellings():
    from lmlab.cli.main import cli_spelling

    assert cli_spelling("x is not empty (pass overwrite=True to replace it)").endswith("(pass --overwrite to replace it)")
    assert "--set data.truncate=true" in cli_spelling("too long (raise the block size or pass truncate=True)")
    assert cli_spelling("pass resume=True (--resume) to continue") == "pass --resume to continue"
