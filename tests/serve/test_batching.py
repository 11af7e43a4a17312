"""Continuous batching through the server: a seeded request is independent of its batch mates, clients that
go away free their rows, and requests for different adapters are scheduled apart yet each gets its own."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from servehelpers import metric

import lmlab
from lmlab.peft import load_adapter
from lmlab.reference import ASSET_DIR


def wait_idle(server, engine, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(server, "lmlab_queue_depth") == 0 and metric(server, "lmlab_batch_size") == 0 \
                and engine.running_jobs == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not idle: queue {engine.queue_depth}, batch {engine.batch_size}")


def test_seeded_request_same_alone_and_with_15_others(client, server, engine):
    seeded = dict(model="world", prompt="The capital of Velmora is", max_tokens=16, temperature=0.9, top_p=0.95,
                  seed=1234, extra_body={"ignore_eos": True})
    wait_idle(server, engine)
    alone = client.completions.create(**seeded).choices[0].text
    def start(i):  # mixed settings: greedy, sampled with and without seeds, other prompts and lengths
        kw = dict(model="world", prompt=["Kamsa speaks", "Where is", "The language of"][i % 3] + " x" * (i % 4),
                  max_tokens=100 - i, temperature=[0.0, 1.0, 0.7][i % 3], stream=True,
                  extra_body={"ignore_eos": True})
        if i % 2:
            kw["seed"] = i
        stream = client.completions.create(**kw)
        next(iter(stream))  # the request has its row: it is decoding
        return stream

    # 5 ms a step: the others' 86-100 tokens outlast the requests' arrival however fast the model decodes
    with engine.model.hooks([("logits", lambda x, hook: time.sleep(0.005))]):
        with ThreadPoolExecutor(15) as pool:  # all at once, so none is near its end when the seeded one comes
            others = list(pool.map(start, range(15)))
        assert engine.batch_size == 15
        loaded = client.completions.create(**seeded).choices[0].text
        assert engine.batch_size == 15  # the others were still running when the seeded one finished
    assert loaded == alone and alone.strip()
    for stream in others:  # hang up: their rows leave the batch
        stream.close()
    wait_idle(server, engine)


def test_closing_a_stream_frees_its_row(server, engine):
    wait_idle(server, engine)
    cancelled = metric(server, "lmlab_requests_cancelled_total")
    body = {"model": "world", "prompt": "Kamsa speaks", "max_tokens": 100, "stream": True, "ignore_eos": True}
    # 10 ms a step: the 100 tokens outlast the 6 lines read here however fast the model decodes
    with engine.model.hooks([("logits", lambda x, hook: time.sleep(0.01))]), httpx.Client(timeout=30) as http, \
            http.stream("POST", server.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
        assert engine.batch_size == 1
    wait_idle(server, engine)  # the row left the batch well before its 100 tokens
    assert metric(server, "lmlab_requests_cancelled_total") == cancelled + 1


def test_abandoned_non_streaming_request_frees_its_row(server, engine):
    wait_idle(server, engine)
    cancelled = metric(server, "lmlab_requests_cancelled_total")
    body = {"model": "world", "prompt": "Kamsa speaks", "max_tokens": 100, "ignore_eos": True, "stream": False}
    # 10 ms a step: the 100 tokens outlast the server's 0.5 s disconnect poll however fast the model decodes
    with engine.model.hooks([("logits", lambda x, hook: time.sleep(0.01))]), httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}) as r:
            next(r.iter_lines())
            with pytest.raises(httpx.ReadTimeout):
                http.post(server.url + "/v1/completions", json=body, timeout=0.2)
        wait_idle(server, engine)
    assert metric(server, "lmlab_requests_cancelled_total") == cancelled + 2  # both, not finished


def test_adapters_are_scheduled_apart_and_each_gets_its_own(client, server, engine):
    prompt = "The capital of Velmora is"
    tok = lmlab.load_tokenizer(ASSET_DIR)
    base_model = lmlab.load(ASSET_DIR).eval()
    tuned = lmlab.load(ASSET_DIR).eval()
    load_adapter(tuned, engine.config.adapters["tone"], "tone")
    ids = tok.encode(prompt)
    want = {}
    for name, model in (("base", base_model), ("tone", tuned)):
        out = lmlab.generate(model, [ids], max_new_tokens=12, stop_token_ids=engine.stop_token_ids)[0][len(ids):]
        want[name] = tok.decode([t for t in out if t not in engine.stop_token_ids])
    assert want["base"] != want["tone"]  # the adapter changes the output: the check below can fail
    streams = []
    for i in range(4):  # interleaved: base, tone, base, tone -> the engine must switch adapters between them
        kw = dict(model="world", prompt=prompt, max_tokens=12, temperature=0, stream=True)
        if i % 2:
            kw["extra_body"] = {"adapter": "tone"}
        streams.append(client.completions.create(**kw))
    texts = ["".join(c.choices[0].text for c in s if c.choices) for s in streams]
    assert texts == [want["base"], want["tone"]] * 2
    via_model = client.completions.create(model="tone", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    assert via_model == want["tone"]
    wait_idle(server, engine)
