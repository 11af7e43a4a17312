import json

import pytest

import lmlab
from lmlab.config_io import load_config
from lmlab.errors import LmlabError
from lmlab.finetune.config import FinetuneConfig


@pytest.mark.parametrize("kind", ["hft", "lora"])
def test_finetune_verb_end_to_end(tok, tiny, convs, tmp_path, kind):
    from lmlab.cli.finetune import run_finetune

    lmlab.save(tiny, tmp_path / "base", tokenizer=tok)
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    cfg = load_config(FinetuneConfig, "configs/finetune-hft.yaml" if kind == "hft" else "configs/finetune-lora.yaml",
                      [f"model.init_from={tmp_path / 'base'}", f"data.path={chat}", "run.max_steps=2",
                       f"run.out_dir={tmp_path / 'out'}", "data.batch_size=2", "run.progress=false",
                       "methods.interpolate.alpha=0.5"])
    summary = run_finetune(cfg, progress=False)
    assert summary["steps"] == 2 and summary["assistant_tokens"] > 0
    m = lmlab.load(tmp_path / "out" / "model")
    assert m.num_parameters() == tiny.num_parameters()


def test_config_errors():
    with pytest.raises(LmlabError, match="data.path is required"):
        load_config(FinetuneConfig, None, [])
    with pytest.raises(LmlabError, match="unknown key 'methods.lora.rank'"):
        load_config(FinetuneConfig, None, ["data.path=x", "methods.lora.rank=3"])
