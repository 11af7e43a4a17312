"""The real ``openai`` client against the server: models, completions, chat, streaming, log-probs, and
what it answers equals in-process decoding of the same weights."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.reference import load_reference


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def local_greedy(ref, ids, max_new, stops):
    """In-process greedy continuation (token ids, the stop token dropped)."""
    out = lmlab.generate(ref.model, [ids], max_new_tokens=max_new, stop_token_ids=stops)[0][len(ids):]
    return [t for t in out if t not in stops]


def test_models_lists_the_model_and_its_adapters(client, engine):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["world", "tone"]
    assert engine.context_length == 128


def test_completion_equals_in_process_greedy(client, engine, ref):
    prompt = "The capital of Velmora is"
    r = client.completions.create(model="world", prompt=prompt, max_tokens=20, temperature=0)
    ids = ref.tokenizer.encode(prompt)
    want = local_greedy(ref, ids, 20, engine.stop_token_ids)
    assert r.choices[0].text == ref.tokenizer.decode(want)
    assert r.choices[0].text.strip()  # something was generated
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_token_id_prompts_and_batches(client, ref):
    a, b = "The capital of Velmora is", "Kamsa speaks"
    one = [client.completions.create(model="world", prompt=p, max_tokens=8, temperature=0).choices[0].text
           for p in (a, b)]
    both = client.completions.create(model="world", prompt=[ref.tokenizer.encode(a), ref.tokenizer.encode(b)],
                                     max_tokens=8, temperature=0)
    assert [c.text for c in sorted(both.choices, key=lambda c: c.index)] == one
    assert one[0] != one[1]


def test_chat_uses_the_template_and_equals_in_process(client, engine, ref):
    messages = [{"role": "user", "content": "Where is Velmora?"}]
    r = client.chat.completions.create(model="world", messages=messages, max_tokens=24, temperature=0)
    prompt = ref.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = ref.tokenizer.decode(local_greedy(ref, prompt, 24, engine.stop_token_ids))
    assert r.choices[0].message.content == want and want.strip()
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(prompt)


def test_chat_stream_pieces_make_the_whole(client):
    kw = dict(model="world", messages=[{"role": "user", "content": "Tell me about Kamsa."}], max_tokens=30,
              temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3  # streamed token by token, not in one piece
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_stream_with_usage(client):
    kw = dict(model="world", prompt="Kamsa speaks", max_tokens=12, temperature=0)
    whole = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    assert chunks[-1].usage.completion_tokens >= 1 and not chunks[-1].choices


def test_echo_logprobs_equal_in_process(client, ref):
    """What lm-eval's local-completions asks: echo + logprobs gives every prompt token's log-probability."""
    prompt = "The capital of Velmora is Vupevia."
    ids = ref.tokenizer.encode(prompt)
    with torch.no_grad():
        logp = torch.log_softmax(ref.model(torch.tensor([ids]))[0].float(), -1)  # [T, V]
    want = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    for max_tokens in (0, 1):
        r = client.completions.create(model="world", prompt=prompt, max_tokens=max_tokens, temperature=0, echo=True,
                                      logprobs=1)
        lp = r.choices[0].logprobs
        assert len(lp.token_logprobs) == len(ids) + max_tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert lp.token_logprobs[1:len(ids)] == pytest.approx(want, abs=1e-4)
        assert r.choices[0].text.startswith(prompt)
        for i in range(1, len(ids)):  # top-1 is the argmax
            assert max(lp.top_logprobs[i].values()) == pytest.approx(logp[i - 1].max().item(), abs=1e-4)
    # the generated token's log-prob is the model's next-token log-prob
    nxt = logp[-1].argmax().item()
    assert lp.token_logprobs[-1] == pytest.approx(logp[-1, nxt].item(), abs=1e-4)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="world", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 3 and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model="world", prompt="The capital of Velmora is", max_tokens=20,
                                     temperature=0, extra_body={"ignore_eos": True}).choices[0]
    assert full.finish_reason == "length"
    cut_at = full.text.strip().split()[1][:2]  # a piece of the second word
    r = client.completions.create(model="world", prompt="The capital of Velmora is", max_tokens=20, temperature=0,
                                  stop=[cut_at]).choices[0]
    assert r.text == full.text[:full.text.index(cut_at)] and r.finish_reason == "stop"


def test_seeded_samples_n_equal_separate_seeds(client):
    kw = dict(model="world", prompt="Kamsa speaks", max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
    many = client.completions.create(n=3, seed=11, **kw)
    texts = [c.text for c in sorted(many.choices, key=lambda c: c.index)]
    singles = [client.completions.create(seed=11 + r, **kw).choices[0].text for r in range(3)]
    assert texts == singles
    assert len(set(texts)) > 1  # sampling, not greedy


def test_stream_with_n_and_echo(client):
    kw = dict(model="world", prompt="Kamsa speaks", max_tokens=10, temperature=1.0, seed=5, n=2,
              extra_body={"ignore_eos": True})
    whole = sorted(client.completions.create(**kw).choices, key=lambda c: c.index)
    chunks = list(client.completions.create(stream=True, echo=True, **kw))
    texts = ["", ""]
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
    assert texts == ["Kamsa speaks" + w.text for w in whole]
    assert whole[0].text != whole[1].text


def test_tokenizer_routes(server, ref):
    import httpx

    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == ref.tokenizer.eos_token and info["chat_template"] == ref.tokenizer.chat_template
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "Kamsa speaks"}).json()["tokens"]
    assert ids == ref.tokenizer.encode("Kamsa speaks")
    assert httpx.post(server.url + "/detokenize", json={"tokens": ids}).json()["prompt"] == "Kamsa speaks"
    chat = httpx.post(server.url + "/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["tokens"] == ref.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                               add_generation_prompt=True, tokenize=True)
    r = httpx.post(server.url + "/detokenize", json={"tokens": [10**6]})
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
