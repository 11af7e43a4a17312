"""One-line errors: a coefficient that makes the logits non-finite (every guided method), and a guide whose
tokenizer has the base's vocabulary size but other tokens (CLI)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmlab import LmlabError
from lmlab.cli.main import main
from lmlab.control import VAS, GeDi, GeDiConfig, GenARM, ProxyTuning, ValueModel
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.reference import ASSET_DIR

V = 50
PROMPTS = [[3, 9, 4], [11, 2, 7, 8]]


def tiny(seed: int, d: int = 32) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=d, n_layers=1, n_heads=4, max_seq_len=32)
    return Transformer(cfg).init_weights(std=0.3, seed=seed)


@pytest.fixture(scope="module")
def base():
    return tiny(0)


@pytest.mark.parametrize("make", [
    lambda b: GenARM([tiny(1)], weights=[1e38], beta=1e-3, base=b),
    lambda b: ProxyTuning(tiny(1), tiny(2), alpha=1e38, base=b),
    lambda b: GeDi(tiny(1), [3], [4], GeDiConfig(omega=1e39), base=b),
    lambda b: VAS(ValueModel(tiny(1)), beta=1e38, base=b),
], ids=["genarm", "proxy", "gedi", "vas"])
def test_non_finite_coefficient_is_one_line(base, make):
    proc = make(base)
    if isinstance(proc, VAS):  # a non-zero head, so the values differ between candidates
        with torch.no_grad():
            proc.vm.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(LmlabError, match="non-finite") as err:
        generate(base, PROMPTS, max_new_tokens=3, stop_token_ids=[], logits_processors=[proc])
    assert "\n" not in str(err.value)


def test_guide_with_another_tokenizer_of_the_same_size(tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(ASSET_DIR, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = "£", "¤"  # swap two byte tokens: same size, different meaning of two ids
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    m = str(ASSET_DIR)
    for argv in (["--guide", "gedi", "--guide-model", str(other), "--desired-code", "x", "--anti-code", "y"],
                 ["--guide", "proxy", "--tuned", str(other), "--untuned", m],
                 ["--guide", "genarm", "--arm", str(other)]):
        code = main(["generate", m, "--prompt", "Trodina Shoba was born in", "--max-new-tokens", "2", *argv])
        err = capsys.readouterr().err
        assert code == 2 and "its tokenizer differs from the base model's" in err, err
        assert err.count("\n") == 1
