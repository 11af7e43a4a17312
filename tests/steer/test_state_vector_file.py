"""ICL state vectors as steering files (the ActAdd format: safetensors + JSON naming hook points, width and model
fingerprint): the round trip patches exactly as the in-memory vector, ``lmlab steer --method icv`` writes one and
``lmlab generate --steer FILE --coeff C`` applies it (coefficient 0 = the base text), and a file for another
model, width or layer count is one line naming the problem."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab import LmlabError
from lmlab.cli.main import main
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.reference import ASSET_DIR, load_reference
from lmlab.steer import StateVector, SteeringVector, actadd, in_context_vector, load_steering, model_fingerprint
from lmlab.steer.state_vector import format_query

DEMOS = [("Alice Moreau", "Stinok"), ("Bo Ek", "Gramotrek"), ("Ada", "Trodina"), ("Mo", "Stinok")]
SEP = " =>"


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_round_trip_patches_exactly_as_in_memory(ref, tmp_path):
    m, tok = ref.model, ref.tokenizer
    sv = in_context_vector(m, tok, DEMOS, "Ed Fog", separator=SEP, n_layers=2)
    path = sv.save(tmp_path / "icv.safetensors")
    back = load_steering(path, m)
    assert isinstance(back, StateVector) and torch.equal(back.vector, sv.vector) and back.meta == sv.meta
    assert back.hooks == ["blocks.0.attn.z", "blocks.1.attn.z"]
    rows = torch.tensor([format_query(tok, "Ute", SEP)])  # [1, T]: the separator's tokens are the last ones
    with torch.no_grad():
        plain = m(rows)
        with sv.apply(m):
            expected = m(rows)
        with back.apply(m):
            got = m(rows)
        with back.apply(m, strength=0.0):
            zero = m(rows)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(zero, plain, rtol=0, atol=0)
    assert not torch.allclose(got, plain)
    # one format, two kinds: each loader names the other kind instead of misreading it
    vec_path = actadd(m, tok, " Stinok", " Gramotrek", layer=1).save(tmp_path / "vec.safetensors")
    assert isinstance(load_steering(vec_path, m), SteeringVector)
    with pytest.raises(LmlabError, match="kind 'icl_state_vector', not a vector"):
        SteeringVector.load(path)
    with pytest.raises(LmlabError, match="not an ICL state vector"):
        StateVector.load(vec_path)


def other_model(d: int, layers: int, vocab: int) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=4, max_seq_len=64)
    return Transformer(cfg).init_weights(seed=0).eval()


def test_wrong_model_width_or_layers_is_one_line(ref, tmp_path):
    m = ref.model
    c = m.config
    width = c.n_heads * c.head_dim
    sv = StateVector(torch.randn(2, 2, width), model_fingerprint(m))
    path = sv.save(tmp_path / "icv.safetensors")
    cases = [(other_model(c.d_model, c.n_layers, c.vocab_size + 1), "made for model fingerprint"),
             (other_model(c.d_model // 2, c.n_layers, c.vocab_size), f"width {width} does not match"),
             (other_model(c.d_model, 1, c.vocab_size), "hook point 'blocks.1.attn.z' does not exist")]
    for model, message in cases:
        with pytest.raises(LmlabError, match=message) as err:
            load_steering(path, model)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    load_steering(path, m)  # the model it was read from: accepted


M = str(ASSET_DIR)
PROMPT = ["--prompt", "Ute =>", "--max-new-tokens", "6"]


def test_cli_builds_an_icv_file_and_generate_steers_with_it(tmp_path, capsys):
    demos = tmp_path / "demos.tsv"
    demos.write_text("".join(f"{q}\t{a}\n" for q, a in DEMOS))
    out = tmp_path / "icv.safetensors"
    assert main(["steer", M, "--method", "icv", "--demos", str(demos), "--query", "Ed Fog", "--separator", SEP,
                 "--icv-layers", "2", "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "icl_state_vector" and info["hooks"] == ["blocks.0.attn.z", "blocks.1.attn.z"]
    assert main(["generate", M, *PROMPT]) == 0
    base = capsys.readouterr().out
    assert main(["generate", M, *PROMPT, "--steer", str(out), "--coeff", "0"]) == 0
    assert capsys.readouterr().out == base
    assert main(["generate", M, *PROMPT, "--steer", str(out), "--coeff", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["token_ids"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    assert main(["steer", M, "--method", "icv", "--demos", str(bad), "--query", "x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "line 1 is not 'input<TAB>answer'" in err and err.count("\n") == 1
    assert main(["steer", M, "--method", "icv", "--demos", str(demos), "--out", str(out)]) == 2
    assert "--method icv needs --query" in capsys.readouterr().err
