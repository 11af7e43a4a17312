"""configs/adapt-*.yaml run as shipped through ``lmlab adapt-vocab --config`` on a tiny model; flags and --set
override the recipe; YAML 1.1 float strings are coerced; bad recipes give one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.adapt import WechselConfig, extend_vocabulary, swap_tokenizer
from lmlab.adapt.recipe import load_recipe
from lmlab.cli.main import main
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.errors import LmlabError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _layout(tmp_path, world_text, recipe: str) -> Path:
    """tmp/configs/<recipe> + the tmp/runs/adapt/... files it points at (a tiny model on the world's text)."""
    base, target, dictionary, _ = world_text
    root, data = tmp_path / "runs" / "adapt", tmp_path / "runs" / "adapt" / "data"
    data.mkdir(parents=True)
    src_tok = train_bpe(base[:60], 300)
    model = Transformer(ModelConfig.llama_like(len(src_tok), d_model=32, n_layers=1, n_heads=2, d_mlp=64,
                                               max_seq_len=64)).init_weights(seed=0)
    lmlab.save(model, root / "base", tokenizer=src_tok)
    train_bpe(target[:60], 300).save(root / "target-tokenizer")
    (data / "source.txt").write_text("\n".join(base[:60]) + "\n", encoding="utf-8")
    (data / "target.txt").write_text("\n".join(target[:60]) + "\n", encoding="utf-8")
    (data / "dictionary.tsv").write_text("".join(f"{b}\t{a}\n" for b, a in dictionary.items()), encoding="utf-8")
    (data / "new-tokens.txt").write_text("mirokel\nstavina\nbrottu\n", encoding="utf-8")
    (tmp_path / "configs").mkdir()
    return Path(shutil.copy(CONFIGS / recipe, tmp_path / "configs" / recipe))


def _expected_swap(tmp_path, world_text, neighbors, temperature):
    base, target, dictionary, _ = world_text
    root = tmp_path / "runs" / "adapt"
    return swap_tokenizer(lmlab.load(root / "base"), lmlab.load_tokenizer(root / "base"),
                          lmlab.load_tokenizer(root / "target-tokenizer"), "wechsel", copy_overlap=False,
                          source_texts=base[:60], target_texts=target[:60], dictionary=dictionary,
                          config=WechselConfig(neighbors=neighbors, temperature=temperature, dim=64, window=4))


def test_wechsel_swap_recipe_runs_as_shipped_and_flags_override(tmp_path, world_text, capsys):
    recipe = _layout(tmp_path, world_text, "adapt-wechsel-swap.yaml")
    assert main(["adapt-vocab", "--config", str(recipe)]) == 0
    out = lmlab.load(tmp_path / "runs" / "adapt" / "wechsel-swap")
    expected = _expected_swap(tmp_path, world_text, 10, 0.1)  # the recipe's k, temperature, dim, no overlap copy
    assert torch.equal(out.embed.weight, expected.embed.weight)
    # flags and --set win over the file; the positional OUT is relative to the working directory
    other = tmp_path / "other"
    assert main(["adapt-vocab", "--config", str(recipe), str(tmp_path / "runs" / "adapt" / "base"), str(other),
                 "--temperature", "0.5", "--set", "wechsel.neighbors=3"]) == 0
    overridden = lmlab.load(other)
    assert torch.equal(overridden.embed.weight, _expected_swap(tmp_path, world_text, 3, 0.5).embed.weight)
    assert not torch.allclose(overridden.embed.weight, out.embed.weight)


def test_extend_recipe_runs_as_shipped_and_init_flag_overrides(tmp_path, world_text, capsys):
    recipe = _layout(tmp_path, world_text, "adapt-extend.yaml")
    assert main(["adapt-vocab", "--config", str(recipe)]) == 0
    root = tmp_path / "runs" / "adapt"
    src, tok = lmlab.load(root / "base"), lmlab.load_tokenizer(root / "base")
    out = lmlab.load(root / "extended")
    expected, new_tok = extend_vocabulary(src, tok, ["mirokel", "stavina", "brottu"], init="subword_mean")
    assert out.config.vocab_size == src.config.vocab_size + 3
    assert torch.equal(out.embed.weight, expected.embed.weight)
    assert lmlab.load_tokenizer(root / "extended").encode("mirokel") == new_tok.encode("mirokel")
    assert main(["adapt-vocab", "--config", str(recipe), "--init", "random", "--set", f"out={tmp_path / 'r'}"]) == 0
    rand = lmlab.load(tmp_path / "r")
    n = src.config.vocab_size
    assert torch.equal(rand.embed.weight[:n], out.embed.weight[:n])  # old rows exact either way
    assert not torch.allclose(rand.embed.weight[n:], out.embed.weight[n:])


def test_yaml_float_strings_coerced(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("src: a\nout: b\nextend: t.txt\nwechsel:\n  temperature: 5e-2\n  neighbors: 1e1\n")
    r = load_recipe(path, [], {})
    assert r.wechsel.temperature == 0.05 and isinstance(r.wechsel.temperature, float)
    assert r.wechsel.neighbors == 10 and isinstance(r.wechsel.neighbors, int)
    assert r.src == str(tmp_path / "a") and r.extend == str(tmp_path / "t.txt")  # relative to the recipe
    r = load_recipe(path, ["wechsel.temperature=1e-1"], {"wechsel.neighbors": 4})
    assert r.wechsel.temperature == 0.1 and isinstance(r.wechsel.temperature, float) and r.wechsel.neighbors == 4


@pytest.mark.parametrize("text,sets,message", [
    ("src: a\nout: b\nextend: t\nneighbours: 3\n", [], "unknown key 'neighbours'"),
    ("src: a\nout: b\nextend: t\nwechsel:\n  temperature: hot\n", [], "key 'wechsel.temperature' has value 'hot'"),
    ("src: a\nout: b\n", [], "exactly one of --extend FILE / --target-tokenizer DIR"),
    ("out: b\nextend: t\n", [], "no SRC"),
    ("src: a\nout: b\nextend: t\n", ["seed=x"], "--set: key 'seed' has value 'x'"),
])
def test_bad_recipe_one_line(tmp_path, capsys, text, sets, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(LmlabError, match=message.replace("(", r"\(")):
        load_recipe(path, sets, {})
    args = ["adapt-vocab", "--config", str(path)] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
