"""GGUF both ways on the parity suite's tiny models: export, read back with gguf's own reader, re-import, and
every bad-input path (existing target, truncated file, unknown architecture, unsupported quantization type)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_models import build_hf_model  # noqa: E402

import lmlab  # noqa: E402
from lmlab.errors import LmlabError  # noqa: E402
from lmlab.io.gguf_write import save_gguf  # noqa: E402

FAMILIES = ["gpt2", "neox_parallel", "neox_sequential", "llama_mha", "llama_gqa", "mistral", "qwen2"]
ARCH = {"gpt2": "gpt2", "neox_parallel": "gptneox", "neox_sequential": "gptneox", "llama_mha": "llama",
        "llama_gqa": "llama", "mistral": "llama", "qwen2": "qwen2"}
# Uneven rows: a wrong rotary layout or q/k permutation changes every position after the first.
IDS = torch.tensor([[5, 17, 33, 2, 90, 61, 8, 44, 12, 3, 77, 21, 9, 50], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 96]])


def run(*args):
    """The CLI in-process, as the console script runs it (stdout, stderr, exit code)."""
    from lmlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each family as an lmlab model converted from a random transformers model (the production path)."""
    out = {}
    for family in FAMILIES:
        d = tmp_path_factory.mktemp(family)
        build_hf_model(family).save_pretrained(d)
        out[family] = lmlab.load(d, dtype="float32")
    return out


def _logits(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _hf_q_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's converter permutation, written out independently: each head's rows [x1 | x2] -> interleaved."""
    d = w.shape[0] // n_heads
    heads = w.reshape(n_heads, d, -1)
    out = torch.empty_like(heads)
    out[:, 0::2], out[:, 1::2] = heads[:, : d // 2], heads[:, d // 2:]
    return out.reshape(w.shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_export_reads_back_with_gguf_and_reimports_bit_exact(models, family, tmp_path):
    model = models[family]
    c = model.config
    path = save_gguf(model, tmp_path / "m.gguf", "f32")
    r = gguf.GGUFReader(path)
    arch = ARCH[family]
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.token")}
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.block_count"] == c.n_layers == 2
    assert meta[f"{arch}.embedding_length"] == 64 and meta[f"{arch}.attention.head_count"] == 4
    assert meta[f"{arch}.feed_forward_length"] == c.d_mlp and meta[f"{arch}.context_length"] == c.max_seq_len
    if arch in ("llama", "qwen2"):
        assert meta[f"{arch}.attention.head_count_kv"] == c.kv_heads
        assert meta[f"{arch}.rope.freq_base"] == pytest.approx(c.rope_base)
    if arch == "gptneox":
        assert meta["gptneox.rope.dimension_count"] == 4  # rotary_pct 0.25 of d_head 16
        assert meta["gptneox.use_parallel_residual"] == (family == "neox_parallel")
    if family == "mistral":
        assert meta["llama.attention.sliding_window"] == 12
    tensors = {t.name: t for t in r.tensors}
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tuple(tensors["token_embd.weight"].shape) == (64, c.vocab_size)  # ggml order: [n_embd, n_vocab]
    np.testing.assert_array_equal(tensors["token_embd.weight"].data, model.embed.weight.detach().numpy())
    q = model.blocks[1].attn.q_proj.weight.detach()
    k = model.blocks[1].attn.k_proj.weight.detach()
    if arch == "llama":
        np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"].data, _hf_q_permute(q, 4).numpy())
        np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"].data, _hf_q_permute(k, c.kv_heads).numpy())
        assert set(tensors) >= {"blk.1.ffn_gate.weight", "output_norm.weight", "blk.0.attn_norm.weight"}
    elif arch == "qwen2":
        np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"].data, q.numpy())
        assert "blk.1.attn_q.bias" in tensors and "blk.1.attn_output.bias" not in tensors
    else:
        v = model.blocks[1].attn.v_proj.weight.detach()
        np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"].data, torch.cat([q, k, v]).numpy())
        assert "blk.1.attn_qkv.bias" in tensors
    assert ("output.weight" in tensors) == (not c.tie_embeddings)
    back = lmlab.load(path)
    assert back.config.model_type == c.model_type
    assert torch.equal(_logits(back), _logits(model))


@pytest.mark.parametrize("family", ["llama_mha", "llama_gqa", "qwen2"])  # transformers reads no gptneox; gpt2 sizes it ignores
def test_transformers_reads_our_export_with_the_same_logits(models, family, tmp_path):
    """transformers' own GGUF loader (llama.cpp's conventions, implemented independently) on our F32 file."""
    from transformers import AutoModelForCausalLM

    model = models[family]
    save_gguf(model, tmp_path / "m.gguf", "f32")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(IDS).logits
    torch.testing.assert_close(theirs, _logits(model), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,bound", [("q8_0", 1 / 254), ("q4_0", 1 / 8)])
def test_quantized_export_within_the_format_bound(models, kind, bound, tmp_path):
    """Q8_0 rounds to 1/127 of each 32-value block's absmax (error <= half a step); Q4_0's extreme value clamps
    to 7/8 (error <= absmax / 8). The fp16 block scale adds a relative 2^-11."""
    model = models["llama_gqa"]
    path = save_gguf(model, tmp_path / f"m-{kind}.gguf", kind)
    r = gguf.GGUFReader(path)
    t = {t.name: t for t in r.tensors}["blk.0.ffn_down.weight"]
    assert t.tensor_type.name == kind.upper()
    deq = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
    w = model.blocks[0].mlp.down_proj.weight.detach()
    absmax = w.reshape(w.shape[0], -1, 32).abs().amax(-1, keepdim=True)
    err = (deq - w).reshape(w.shape[0], -1, 32).abs()
    assert (err <= absmax * (bound + 2**-10) + 1e-8).all()
    assert err.max() > 0  # really quantized
    back = lmlab.load(path)
    assert torch.equal(back.blocks[0].mlp.down_proj.weight, deq)  # import dequantizes exactly what gguf does
    assert back.blocks[0].ln1.weight.equal(model.blocks[0].ln1.weight)  # norms stay F32
    full, quant = _logits(model), _logits(back)
    assert (quant - full).abs().max() < (0.05 if kind == "q8_0" else 0.5) * full.abs().max()


def test_f16_and_bf16_exports(models, tmp_path):
    model = models["qwen2"]
    for kind, tol in (("f16", 2**-11), ("bf16", 2**-8)):
        back = lmlab.load(save_gguf(model, tmp_path / f"{kind}.gguf", kind))
        w, b = model.blocks[1].mlp.up_proj.weight, back.blocks[1].mlp.up_proj.weight
        assert not torch.equal(w, b)
        torch.testing.assert_close(b, w, rtol=tol, atol=1e-6)


def test_tokenizer_and_chat_template_round_trip(models, tmp_path):
    from lmlab.core.tokenizer import train_bpe

    texts = ["The capital of Velmora is Quenthal.", "1234 apples cost 56 coins, said the trader."] * 20
    tok = train_bpe(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = lmlab.Transformer(lmlab.ModelConfig.llama_like(vocab_size=320, d_model=64, n_layers=1, n_heads=4)).eval()
    path = save_gguf(model, tmp_path / "t.gguf", "f32", tokenizer=tok)
    back = lmlab.load_tokenizer(path)
    for text in ["The capital of Velmora is Quenthal.", "  99 apples<|im_end|>\n", "naïve café"]:
        assert back.encode(text) == tok.encode(text)
        assert back.decode(back.encode(text)) == tok.decode(tok.encode(text))
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]
    assert back.apply_chat_template(msgs, add_generation_prompt=True) == tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert (back.bos_id, back.eos_id, back.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    r = gguf.GGUFReader(path)
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == 320  # padded to the embedding rows
    assert torch.equal(_logits(lmlab.load(path), torch.tensor([tok.encode(texts[1])])),
                       _logits(model, torch.tensor([tok.encode(texts[1])])))


def test_export_onto_existing_file_refuses_and_keeps_it(models, tmp_path):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"precious")
    with pytest.raises(LmlabError, match="already exists"):
        save_gguf(models["gpt2"], target, "q8_0")
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary left behind


def test_cli_convert_to_gguf_and_errors(models, tmp_path):
    src = tmp_path / "src"
    lmlab.save(models["llama_gqa"], src)
    out = run("convert", src, tmp_path / "m.gguf", "--gguf-type", "q8_0")
    assert out.returncode == 0, out.stderr
    assert "q8_0" in out.stdout and (tmp_path / "m.gguf").exists()
    again = run("convert", src, tmp_path / "m.gguf", "--gguf-type", "q4_0")
    assert again.returncode != 0
    assert len(again.stderr.strip().splitlines()) == 1 and "already exists" in again.stderr
    info = run("info", tmp_path / "m.gguf")
    assert info.returncode == 0 and "llama" in info.stdout


def _write(path, arch="llama", tensors=None, raw_dtype=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    for name, data in (tensors or {"token_embd.weight": np.zeros((8, 32), np.float32)}).items():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _one_line_error(path) -> str:
    with pytest.raises(LmlabError) as err:
        lmlab.load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_gguf_is_one_line(models, tmp_path):
    good = save_gguf(models["qwen2"], tmp_path / "good.gguf", "f32")
    data = good.read_bytes()
    for cut in (len(data) - 100, 300, 10, 0):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        assert "truncated" in _one_line_error(bad)


def test_unknown_architecture_and_quant_type_are_one_line(tmp_path):
    assert "'mamba'" in _one_line_error(_write(tmp_path / "mamba.gguf", arch="mamba"))
    from lmlab.io.gguf_read import GGUFFile

    _block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    q81 = np.zeros((8, size), np.uint8)  # one Q8_1 block per row (gguf-py has no Q8_1 dequantizer)
    f = GGUFFile(_write(tmp_path / "q81.gguf", tensors={"token_embd.weight": q81}, raw_dtype=gguf.GGMLQuantizationType.Q8_1))
    with pytest.raises(LmlabError, match="Q8_1") as err:
        f.tensor("token_embd.weight")
    assert "\n" not in str(err.value) and "token_embd.weight" in str(err.value)
    cli = run("generate", tmp_path / "mamba.gguf", "--ids", "1,2")
    assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1 and "mamba" in cli.stderr


def test_cli_convert_gguf_to_hf_directory_keeps_tokenizer(tmp_path):
    """GGUF in, HF directory out: the tokenizer living inside the file becomes tokenizer.json beside the weights."""
    from lmlab.core.tokenizer import train_bpe

    tok = train_bpe(["a small test corpus, with 12 digits and words"] * 10, vocab_size=280, min_frequency=1)
    torch.manual_seed(1)
    model = lmlab.Transformer(lmlab.ModelConfig.llama_like(vocab_size=288, d_model=64, n_layers=1, n_heads=4)).eval()
    src = save_gguf(model, tmp_path / "m.gguf", "f32", tokenizer=tok)
    out = run("convert", src, tmp_path / "hf")
    assert out.returncode == 0, out.stderr
    back, back_tok = lmlab.load(tmp_path / "hf"), lmlab.load_tokenizer(tmp_path / "hf")
    ids = torch.tensor([tok.encode("a small test, 12 words")])
    assert torch.equal(_logits(back, ids), _logits(model, ids))
    assert back_tok.encode("a small test, 12 words") == tok.encode("a small test, 12 words")
    assert back_tok.chat_template == tok.chat_template


def test_sentencepiece_vocabulary_tokenizes_like_transformers(tmp_path):
    """A llama-style (SentencePiece BPE + byte fallback) GGUF vocabulary: merges recovered from scores, a prefix
    space, bytes for unknown characters; transformers' GGUF tokenizer on the same file is the reference."""
    from transformers import AutoTokenizer

    pieces = ["\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "bc", "\u2581abc", "ca", "\u2581c", "\u2581b"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    w = gguf.GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = lmlab.load_tokenizer(tmp_path / "spm.gguf")
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    for text in ["abc", "ab ca bc", "  cab", "abcabc ba", "a\nb é"]:
        assert ours.encode(text, add_special_tokens=True) == theirs(text).input_ids, text
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs(text).input_ids, skip_special_tokens=True)
    assert ours.encode("ab", add_special_tokens=True)[0] == 1  # llama.cpp adds BOS to a sentencepiece vocabulary


def test_export_is_what_the_model_computes_with_an_adapter(models, tmp_path):
    """An applied, unmerged LoRA is refused (its update would be lost); merged, the file computes the merged model."""
    import copy

    from lmlab.peft import LoraConfig, add_adapter, merge_adapter

    model = copy.deepcopy(models["llama_gqa"])
    torch.manual_seed(2)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "down_proj"], init_b="random"))
    with pytest.raises(LmlabError, match="unmerged adapter"):
        save_gguf(model, tmp_path / "lora.gguf", "f32")
    assert not (tmp_path / "lora.gguf").exists()
    merge_adapter(model)
    expected = _logits(model)
    assert not torch.allclose(expected, _logits(models["llama_gqa"]))
    back = lmlab.load(save_gguf(model, tmp_path / "merged.gguf", "f32"))
    assert torch.equal(_logits(back), expected)


def test_llamacpp_greedy_tokens_equal_lmlab_on_f32_export(tmp_path):
    """llama.cpp itself on our F32 file: 32 greedy tokens as lmlab's. llama-cpp-python is in no extra (an ~8 minute
    source build), so this test skips, saying so, where it is absent."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                    "(pip install llama-cpp-python==0.3.36 builds it from source in ~8 minutes)")
    from lmlab.core.tokenizer import train_bpe

    tok = train_bpe(["the quick brown fox jumps over the lazy dog"] * 10, vocab_size=300, min_frequency=1)
    torch.manual_seed(3)
    model = lmlab.Transformer(lmlab.ModelConfig.llama_like(vocab_size=320, d_model=64, n_layers=2, n_heads=4,
                                                           n_kv_heads=2, tie_embeddings=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() == 2 else p.uniform_(0.5, 1.5)  # peaked logits: greedy ties are unlikely
    path = save_gguf(model, tmp_path / "m.gguf", "f32", tokenizer=tok)
    ids = tok.encode("the quick brown fox")
    mine = lmlab.generate(model, [ids], max_new_tokens=32, stop_token_ids=[])[0][len(ids):]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, logits_all=True)
    llm.eval(ids)
    theirs = []
    for _ in range(32):
        theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([theirs[-1]])
    assert theirs == mine


def test_verbs_on_a_gguf_without_tokenizer_and_without_the_gguf_package(models, tmp_path, monkeypatch):
    path = save_gguf(models["llama_gqa"], tmp_path / "m.gguf", "f32")  # no tokenizer: vocabulary "none"
    out = run("generate", path, "--ids", "1,2,3", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    ids = [int(x) for x in out.stdout.split()]
    assert ids == lmlab.generate(models["llama_gqa"], [[1, 2, 3]], max_new_tokens=4)[0][3:]
    no_tok = run("generate", path, "--prompt", "hi")
    assert no_tok.returncode != 0 and "carries no tokenizer" in no_tok.stderr
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the optional package were not installed
    with pytest.raises(LmlabError, match="pip install 'lmlab\\[gguf\\]'"):
        lmlab.load(path)
