"""``lmlab adapt-vocab``: writes a checkpoint transformers loads; bad input gives one line and exit 2."""

from __future__ import annotations

import torch
from conftest import word_tokenizer
from hf_models import VOCAB, save_hf_model

import lmlab
from lmlab.cli.main import main
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe


def test_extend_cli_writes_loadable_checkpoint(tmp_path, capsys):
    import transformers

    save_hf_model("qwen2", tmp_path / "src")
    word_tokenizer().save(tmp_path / "src")
    (tmp_path / "new.txt").write_text("alpha\nbeta\n\n", encoding="utf-8")
    assert main(["adapt-vocab", str(tmp_path / "src"), str(tmp_path / "out"), "--extend", str(tmp_path / "new.txt")]) == 0
    src, out = lmlab.load(tmp_path / "src"), lmlab.load(tmp_path / "out")
    assert out.config.vocab_size == VOCAB + 2
    ids = torch.tensor([[1, 4, 8, 15, 16, 23]])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(out(ids)[..., :VOCAB], src(ids))
        torch.testing.assert_close(hf(ids).logits, out(ids), rtol=1e-4, atol=1e-4)
    assert lmlab.load_tokenizer(tmp_path / "out").encode("w4 beta") == [4, VOCAB + 1]


def _world_files(tmp_path, world_text):
    base, target, dictionary, _ = world_text
    src_tok = train_bpe(base[:60], 300)
    model = Transformer(ModelConfig.llama_like(len(src_tok), d_model=32, n_layers=1, n_heads=2, d_mlp=64,
                                               max_seq_len=64)).init_weights(seed=0)
    lmlab.save(model, tmp_path / "src", tokenizer=src_tok)
    train_bpe(target[:60], 300).save(tmp_path / "tgt")
    (tmp_path / "base.txt").write_text("\n".join(base[:60]), encoding="utf-8")
    (tmp_path / "target.txt").write_text("\n".join(target[:60]), encoding="utf-8")
    (tmp_path / "dict.tsv").write_text("".join(f"{b}\t{a}\n" for b, a in dictionary.items()), encoding="utf-8")
    (tmp_path / "unknown.tsv").write_text("qqq\tzzz\nxxx\tyyy\n", encoding="utf-8")


def _swap_args(tmp_path, dictionary):
    return ["adapt-vocab", str(tmp_path / "src"), str(tmp_path / "out"), "--target-tokenizer", str(tmp_path / "tgt"),
            "--dictionary", str(tmp_path / dictionary), "--source-text", str(tmp_path / "base.txt"),
            "--target-text", str(tmp_path / "target.txt")]


def test_wechsel_swap_cli(tmp_path, world_text, capsys):
    _world_files(tmp_path, world_text)
    assert main(_swap_args(tmp_path, "dict.tsv")) == 0
    out = lmlab.load(tmp_path / "out")
    assert out.config.vocab_size == lmlab.load_tokenizer(tmp_path / "tgt").max_token_id + 1
    capsys.readouterr()
    assert main(_swap_args(tmp_path, "unknown.tsv")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of its 2 word pairs occur" in err[0], err


def test_cli_errors_one_line(tmp_path, capsys):
    save_hf_model("gpt2", tmp_path / "src")
    word_tokenizer().save(tmp_path / "src")
    (tmp_path / "clash.txt").write_text("alpha\n<s>\n", encoding="utf-8")
    (tmp_path / "bad.tsv").write_text("one two three\n", encoding="utf-8")
    cases = [(["--extend", str(tmp_path / "clash.txt")], "collide with the model's special tokens"),
             (["--extend", str(tmp_path / "missing.txt")], "file not found"),
             (["--target-tokenizer", str(tmp_path / "src")], "needs --dictionary"),
             (["--target-tokenizer", str(tmp_path / "src"), "--dictionary", str(tmp_path / "bad.tsv")],
              "line 1 must be 'source<TAB>target'")]
    capsys.readouterr()  # transformers' own log lines from building the source model
    for extra, message in cases:
        assert main(["adapt-vocab", str(tmp_path / "src"), str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
