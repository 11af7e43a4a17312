"""Steering vectors per request: the server's output equals in-process decoding with the same hook, and
the vector touches only its own request's rows when steered and unsteered requests share a batch."""

from __future__ import annotations

import pytest
import torch
from servehelpers import STEER_COEFF, STEER_HOOK
from safetensors.torch import load_file

import lmlab
from lmlab.reference import ASSET_DIR

PROMPT = "The capital of Velmora is"


@pytest.fixture(scope="module")
def local(methods_dir):
    model = lmlab.load(ASSET_DIR).eval()
    tok = lmlab.load_tokenizer(ASSET_DIR)
    vec = load_file(str(methods_dir / "vectors.safetensors"))["happy"]
    return model, tok, vec


def local_text(local, engine, coeff):
    model, tok, vec = local
    ids = tok.encode(PROMPT)
    with model.hooks([(STEER_HOOK, lambda x, name: x + coeff * vec)]):
        out = lmlab.generate(model, [ids], max_new_tokens=16, stop_token_ids=engine.stop_token_ids)[0][len(ids):]
    return tok.decode([t for t in out if t not in engine.stop_token_ids])


def ask(client, steer=None, stream=False):
    extra = {"steer": steer} if steer is not None else {}
    r = client.completions.create(model="world", prompt=PROMPT, max_tokens=16, temperature=0, stream=stream,
                                  extra_body=extra)
    return r


def test_steered_equals_in_process_hook(client, engine, local):
    base = ask(client).choices[0].text
    steered = ask(client, {"name": "happy"}).choices[0].text  # the config's coefficient
    assert base == local_text(local, engine, 0.0)
    assert steered == local_text(local, engine, STEER_COEFF)
    assert steered != base
    assert ask(client, {"name": "happy", "coeff": 0.0}).choices[0].text == base
    twice = ask(client, {"name": "happy", "coeff": 2 * STEER_COEFF}).choices[0].text
    assert twice == local_text(local, engine, 2 * STEER_COEFF)


def test_steering_touches_only_its_rows(client, engine, local):
    base, steered = local_text(local, engine, 0.0), local_text(local, engine, STEER_COEFF)
    streams = [ask(client, {"name": "happy"} if i % 2 else None, stream=True) for i in range(6)]
    texts = ["".join(c.choices[0].text for c in s if c.choices) for s in streams]
    assert texts == [base, steered] * 3
    assert engine.steering.num_attached == 0  # rows detached when they left


def test_steered_prompt_logprobs(client, local):
    model, tok, vec = local
    ids = tok.encode(PROMPT)
    with torch.no_grad(), model.hooks([(STEER_HOOK, lambda x, name: x + STEER_COEFF * vec)]):
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
    want = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    r = client.completions.create(model="world", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0,
                                  extra_body={"steer": {"name": "happy"}})
    assert r.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
