"""``lmlab generate --guide gedi|proxy`` and ``--forbid`` on the reference model."""

from __future__ import annotations

from lmlab.cli.main import main
from lmlab.reference import ASSET_DIR

M = str(ASSET_DIR)
PROMPT = ["--prompt", "Trodina Shoba was born in", "--max-new-tokens", "10"]
GEDI = ["--guide", "gedi", "--guide-model", M, "--desired-code", "Stinok", "--anti-code", "Gramotrek"]


def run(capsys, *argv):
    code = main(["generate", M, *PROMPT, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_guides_and_forbid(capsys):
    _, base, _ = run(capsys)
    assert "Gramotrek" in base
    assert run(capsys, *GEDI, "--omega", "0")[1] == base
    code, gedi, _ = run(capsys, *GEDI)
    assert code == 0 and gedi != base
    assert run(capsys, "--guide", "proxy", "--tuned", M, "--untuned", M)[1] == base  # tuned == untuned: no change
    assert run(capsys, "--guide", "genarm", "--arm", M, "--arm-weight", "0")[1] == base  # zero weight: base
    code, arm, err = run(capsys, "--guide", "genarm", "--arm", M, "--beta", "0.5")
    assert code == 0, err
    code, forbidden, _ = run(capsys, "--forbid", "motr")
    assert code == 0 and "motr" not in forbidden and forbidden != base


def test_guide_errors(capsys):
    code, _, err = run(capsys, "--guide", "gedi", "--guide-model", M)
    assert code == 2 and err.strip() == "lmlab generate: error: --guide gedi needs --desired-code, --anti-code"
    code, _, err = run(capsys, "--guide", "genarm", "--arm", M, "--arm-weight", "1", "--arm-weight", "2")
    assert code == 2 and "GenARM: 2 weights for 1 reward models" in err
    code, _, err = run(capsys, "--guide", "proxy", "--tuned", M)
    assert code == 2 and "--guide proxy needs --tuned and --untuned" in err
