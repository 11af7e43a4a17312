"""``lmlab steer`` writes a vector file; ``lmlab generate --steer`` applies it; mistakes are one line, exit 2."""

from __future__ import annotations

import json

from lmlab.cli.main import main
from lmlab.reference import ASSET_DIR

PROMPT = ["--prompt", "Trodina Shoba was born in", "--max-new-tokens", "8"]


def test_steer_then_generate(tmp_path, capsys):
    out = tmp_path / "love.safetensors"
    assert main(["steer", str(ASSET_DIR), "--positive", "Love", "--negative", "Hate", "--layer", "1",
                 "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["hook"] == "blocks.1.resid_pre" and info["shape"] == [3, 128] and out.exists()
    assert main(["generate", str(ASSET_DIR), *PROMPT]) == 0
    base = capsys.readouterr().out
    assert main(["generate", str(ASSET_DIR), *PROMPT, "--steer", str(out), "--coeff", "0"]) == 0
    assert capsys.readouterr().out == base  # zero coefficient: the base text
    assert main(["generate", str(ASSET_DIR), *PROMPT, "--steer", str(out), "--coeff", "8",
                 "--steer-positions", "all"]) == 0
    assert capsys.readouterr().out != base
    assert main(["generate", str(ASSET_DIR), *PROMPT, "--steer", str(out), "--coeff", "1e30",
                 "--steer-positions", "all"]) == 2
    err = capsys.readouterr().err
    assert "makes activations non-finite" in err and err.count("\n") == 1


def test_concept_method_and_errors(tmp_path, capsys):
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("Sakella works as a builder\nSerella works as a fisher\n")
    neg.write_text("Bevek works as a builder\nBrotir works as a fisher\n")
    out = tmp_path / "gender.safetensors"
    assert main(["steer", str(ASSET_DIR), "--method", "concept", "--positive", str(pos), "--negative", str(neg),
                 "--layer", "2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [128]
    assert main(["steer", str(ASSET_DIR), "--positive", "a", "--negative", "b", "--layer", "9",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "lmlab steer: error: layer must be in [0, 4), got 9"
    assert main(["generate", str(ASSET_DIR), *PROMPT, "--steer", str(tmp_path / "none.safetensors")]) == 2
    assert "no such steering-vector file" in capsys.readouterr().err
