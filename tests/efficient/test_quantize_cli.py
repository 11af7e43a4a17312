"""``lmlab quantize`` on the shipped reference model: writes a checkpoint lmlab.load reads; errors are one line."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.cli.main import main
from lmlab.efficient.quant import QuantizedLinear
from lmlab.reference import ASSET_DIR


@pytest.mark.parametrize("args", [["--bits", "8"],
                                  ["--bits", "4", "--method", "gptq", "--group-size", "32", "--calibration", "world",
                                   "--samples", "8", "--seq-len", "64"]])
def test_quantize_cli_writes_a_loadable_checkpoint(tmp_path, capsys, args):
    assert main(["quantize", str(ASSET_DIR), str(tmp_path / "q"), *args]) == 0
    assert "linear layers quantized" in capsys.readouterr().out
    model = lmlab.load(tmp_path / "q")
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 4 * 7
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
