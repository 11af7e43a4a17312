"""Client mistakes get the right 4xx in OpenAI's error shape, as the openai client's typed exceptions; the
server keeps serving; an API key is enforced; a full queue answers 429."""

from __future__ import annotations

import httpx
import openai
import pytest
from servehelpers import metric

MSG = [{"role": "user", "content": "Hi"}]


def _error(exc) -> dict:
    return exc.value.response.json()["error"]


@pytest.mark.parametrize("kwargs, status, param, words", [
    (dict(model="nope"), 404, "model", "available: world, tone"),
    (dict(max_tokens=101), 400, "max_tokens", "limit of 100"),
    (dict(prompt="word " * 130), 400, "prompt", "maximum context length is 128"),
    (dict(max_tokens=100, prompt="word " * 40), 400, "max_tokens", "maximum context length"),
    (dict(temperature=5), 400, "temperature", "less than or equal to 2"),
    (dict(extra_body={"frobnicate": 1}), 400, "frobnicate", "unsupported parameter"),
    (dict(presence_penalty=0.5), 400, "presence_penalty", "not supported"),
    (dict(extra_body={"adapter": "nope"}), 400, "adapter", "available: tone"),
    (dict(extra_body={"steer": {"name": "nope"}}), 400, "steer.name", "available: happy"),
    (dict(extra_body={"steer": {"name": "happy", "coef": 1}}), 400, "steer.coef", "unsupported parameter"),
    (dict(prompt=[5, 10_000]), 400, "prompt", "outside the vocabulary"),
    (dict(prompt=""), 400, "prompt", "empty"),
    (dict(n=30), 400, "n", "limit of 8"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    (dict(logprobs=21), 400, "logprobs", "less than or equal to 20"),
])
def test_completion_mistakes(client, kwargs, status, param, words):
    kw = {"model": "world", "prompt": "Kamsa speaks", "max_tokens": 4, **kwargs}
    exc_type = {400: openai.BadRequestError, 404: openai.NotFoundError}[status]
    with pytest.raises(exc_type) as exc:
        client.completions.create(**kw)
    err = _error(exc)
    assert exc.value.status_code == status
    assert err["param"] == param and words in err["message"], err
    assert err["type"] in ("invalid_request_error", "not_found_error")


@pytest.mark.parametrize("kwargs, param, words", [
    (dict(messages=[]), "messages", "at least 1"),
    (dict(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role", "Input should be"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "not supported"),
    (dict(messages=[{"role": "user", "content": "word " * 130}]), "messages", "maximum context length"),
    (dict(top_logprobs=2), "top_logprobs", "needs 'logprobs'"),
])
def test_chat_mistakes(client, kwargs, param, words):
    kw = {"model": "world", "messages": MSG, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(**kw)
    err = _error(exc)
    assert err["param"] == param and words in err["message"], err


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"prompt": "x"}', "missing required parameter 'model'"),
    (b'{"model": "world"}', "missing required parameter 'prompt'"),
    (b'{"model": "world", "prompt": {"a": 1}}', "invalid 'prompt'"),
    (b'{"model": "world", "prompt": "x", "max_tokens": "many"}', "invalid 'max_tokens'"),
])
def test_malformed_bodies(server, body, words):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405


def test_never_a_500_and_still_serving(client, server):
    """After every mistake above (this runs after them in the module), no 500 was answered."""
    r = client.completions.create(model="world", prompt="Kamsa speaks", max_tokens=3, temperature=0)
    assert r.choices[0].text
    text = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in text
    assert 'status="400"' in text


@pytest.fixture(scope="module")
def keyed(engine):
    from lmlab.serve.app import create_app
    from lmlab.serve.server import ServerThread

    with ServerThread(create_app(engine, api_key="s3cret")) as s:
        yield s


def test_api_key(keyed):
    url = keyed.url + "/v1"
    for key in ("wrong", ""):
        with openai.OpenAI(base_url=url, api_key=key or "x", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as exc:
                c.models.list()
            assert exc.value.status_code == 401
    assert httpx.get(url + "/models").status_code == 401  # no header at all
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200
    with openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0) as c:
        assert [m.id for m in c.models.list().data][0] == "world"
        assert c.chat.completions.create(model="world", messages=MSG, max_tokens=2).choices


def test_full_queue_answers_429():
    """A separate small engine (its own model copy): one row, a queue of one."""
    import lmlab
    from lmlab.reference import ASSET_DIR
    from lmlab.serve.app import create_app
    from lmlab.serve.config import ServeConfig
    from lmlab.serve.engine import Engine
    from lmlab.serve.server import ServerThread

    import time

    model = lmlab.load(ASSET_DIR)
    # ~20 ms a forward, so the running request (100 tokens, ~2 s) still holds its row when the gauges are read; the
    # bare 0.9M model decodes 100 tokens in ~0.1 s, about the time the 429 round trip takes
    model.blocks[0].register_forward_hook(lambda *_: time.sleep(0.02))
    eng = Engine(model, lmlab.load_tokenizer(ASSET_DIR), ServeConfig(max_batch_size=1, max_queue=1),
                 model_name="small").start()
    body = {"model": "small", "prompt": "Kamsa speaks", "max_tokens": 100, "ignore_eos": True, "stream": True}
    try:
        with ServerThread(create_app(eng)) as s, httpx.Client(timeout=30) as h1, httpx.Client(timeout=30) as h2:
            with h1.stream("POST", s.url + "/v1/completions", json=body) as running:
                lines = running.iter_lines()  # (kept: a dropped iterator closes the connection)
                next(lines)  # holds the only row
                with h2.stream("POST", s.url + "/v1/completions", json=body) as waiting:
                    assert waiting.status_code == 200  # queued
                    with openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0) as c:
                        with pytest.raises(openai.RateLimitError) as exc:
                            c.completions.create(model="small", prompt="x", max_tokens=2)
                    assert exc.value.status_code == 429 and "max_queue 1" in _error(exc)["message"]
                    assert metric(s, "lmlab_queue_depth") == 1 and metric(s, "lmlab_batch_size") == 1
            deadline = time.monotonic() + 20
            while (eng.queue_depth or eng.batch_size) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert metric(s, "lmlab_queue_depth") == 0 and metric(s, "lmlab_batch_size") == 0
            assert metric(s, "lmlab_requests_rejected_total") == 1
    finally:
        eng.close()
