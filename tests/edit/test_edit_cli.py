"""``lmlab edit``: writes the edited checkpoint and its delta; bad input is one line, nothing written."""

import json

import pytest
import torch

import lmlab
from lmlab.cli.main import main
from lmlab.core.config import ModelConfig
from lmlab.core.delta import WeightDelta
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe

TEXTS = ["Ana Vell was born in Mirova.", "Bo Trask was born in Kelda.", "Cy Dorn lives in Mirova."] * 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_bpe(TEXTS, vocab_size=280)
    cfg = ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    d = tmp_path_factory.mktemp("model")
    lmlab.save(Transformer(cfg).init_weights(std=0.3, seed=0).float(), d, tokenizer=tok)
    return d


def _inputs(tmp_path):
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"requested_rewrite": {"prompt": "{} was born in", "subject": "Ana Vell",
                                                      "target_new": {"str": "Kelda"}}}) + "\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    return edits, corpus


def test_edit_writes_checkpoint_and_delta(model_dir, tmp_path, capsys):
    edits, corpus = _inputs(tmp_path)
    out = tmp_path / "out"
    code = main(["edit", str(model_dir), "--method", "rome", "--edits", str(edits), "--corpus", str(corpus),
                 "--out", str(out), "--stats-dir", str(tmp_path / "stats"), "--set", "layer=1",
                 "--set", "v_num_grad_steps=3", "--set", "context_template_length_params=[[3, 5]]"])
    assert code == 0, capsys.readouterr().err
    base, edited = lmlab.load(model_dir), lmlab.load(out)
    delta = WeightDelta.load(out / "delta")
    assert delta.names() == ["blocks.1.mlp.down_proj.weight"] and delta.metadata["method"] == "rome"
    delta.apply(base)
    for (n, p), (_, q) in zip(base.state_dict().items(), edited.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


@pytest.mark.parametrize("extra, fragment", [
    (["--set", "layers=[1, 7]"], "layer 7 is out of range"),
    (["--set", "nonsense"], "--set expects KEY=VALUE"),
    (["--method", "grace"], "unknown method 'grace'"),
])
def test_bad_input_is_one_line_and_nothing_written(model_dir, tmp_path, capsys, extra, fragment):
    edits, corpus = _inputs(tmp_path)
    out = tmp_path / "out"
    code = main(["edit", str(model_dir), "--edits", str(edits), "--corpus", str(corpus), "--out", str(out),
                 "--stats-dir", str(tmp_path / "stats"), "--set", "v_num_grad_steps=2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_out_must_be_new_or_empty(model_dir, tmp_path, capsys):
    edits, corpus = _inputs(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code = main(["edit", str(model_dir), "--edits", str(edits), "--corpus", str(corpus), "--out", str(tmp_path / "out")])
    assert code == 2 and "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
