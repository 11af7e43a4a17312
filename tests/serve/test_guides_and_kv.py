"""Guides and KV policies per request: the server returns what ``lmlab.generate`` returns with the same guide
(built by ``lmlab generate --guide``'s own option code) or the same ``cache_policy``, greedy and seeded; a
guided request shares the batch with plain ones and each still equals its solo result; unknown names are a
400 listing the loaded ones, and the server keeps serving."""

from __future__ import annotations

import argparse
import time

import openai
import pytest
from servehelpers import FORBID, GEDI_CODES, WINDOW_BUDGET, metric

import lmlab
from lmlab.control.cli_options import add_guide_arguments, build_processors
from lmlab.core.generate import GenerationConfig
from lmlab.efficient import kv_policy
from lmlab.reference import ASSET_DIR

PROMPT = "The capital of Velmora is"
OTHER = "Kamsa speaks"  # a prompt of another length, for uneven batches
N_NEW = 16


@pytest.fixture(scope="module")
def local():
    return lmlab.load(ASSET_DIR).eval(), lmlab.load_tokenizer(ASSET_DIR)


def cli_guide(model, tok, name: str) -> tuple:
    """The processors ``lmlab generate`` builds for the flags equivalent to the config's guide ``name``."""
    flags = {"polite": ["--guide", "gedi", "--guide-model", str(ASSET_DIR), "--desired-code", GEDI_CODES[0],
                        "--anti-code", GEDI_CODES[1]],
             "clean": [a for s in FORBID for a in ("--forbid", s)]}[name]
    parser = argparse.ArgumentParser()
    add_guide_arguments(parser)
    return tuple(build_processors(parser.parse_args(flags), model, tok))


def in_process(local, engine, prompt=PROMPT, guide=None, policy=None, temperature=0.0, seed=None) -> str:
    """The text ``lmlab.generate`` gives for the request the server gets (the server's stop ids, stops cut)."""
    model, tok = local
    ids = tok.encode(prompt)
    cfg = GenerationConfig(max_new_tokens=N_NEW, temperature=temperature, seed=seed,
                           stop_token_ids=engine.stop_token_ids,
                           logits_processors=cli_guide(model, tok, guide) if guide else ())
    out = lmlab.generate(model, [ids], cfg, cache_policy=policy)[0][len(ids):]
    return tok.decode([t for t in out if t not in engine.stop_token_ids])


def ask(client, prompt=PROMPT, stream=False, temperature=0.0, seed=None, **methods):
    return client.completions.create(model="world", prompt=prompt, max_tokens=N_NEW, temperature=temperature,
                                     seed=seed, stream=stream, extra_body=methods)


def text_of(stream) -> str:
    return "".join(c.choices[0].text for c in stream if c.choices)


@pytest.mark.parametrize("guide", ["polite", "clean"])
def test_guided_request_equals_generate_with_the_same_guide(client, engine, local, guide):
    plain = in_process(local, engine)
    want = in_process(local, engine, guide=guide)
    assert want != plain  # the guide changes the text, so equality below is not the unguided text twice
    assert ask(client, guide=guide).choices[0].text == want
    seeded = in_process(local, engine, guide=guide, temperature=0.9, seed=11)
    assert ask(client, guide=guide, temperature=0.9, seed=11).choices[0].text == seeded
    if guide == "clean":
        assert not any(s in want for s in FORBID)


@pytest.mark.parametrize("name, policy, budget", [("win", "window", WINDOW_BUDGET), ("h2o-half", "h2o", 0.5)])
def test_kv_policy_request_equals_generate_with_that_cache_policy(client, engine, local, name, policy, budget):
    want = in_process(local, engine, policy=kv_policy(policy, budget=budget))
    assert ask(client, kv_policy=name).choices[0].text == want
    seeded = in_process(local, engine, policy=kv_policy(policy, budget=budget), temperature=0.9, seed=5)
    assert ask(client, kv_policy=name, temperature=0.9, seed=5).choices[0].text == seeded
    if name == "win":  # 11 prompt tokens, 6 kept: the policy evicts and the text differs from the full cache
        assert want != in_process(local, engine)
    assert ask(client, kv_policy="none").choices[0].text == in_process(local, engine)


def test_mixed_batch_each_request_equals_its_solo_result(client, engine, local, server):
    window = kv_policy("window", budget=WINDOW_BUDGET)
    cases = [  # (prompt, request methods, the in-process text)
        (PROMPT, {"guide": "polite"}, in_process(local, engine, guide="polite")),
        (PROMPT, {}, in_process(local, engine)),
        (OTHER, {"guide": "clean"}, in_process(local, engine, OTHER, guide="clean")),
        (OTHER, {}, in_process(local, engine, OTHER)),
        (PROMPT, {"guide": "polite"}, in_process(local, engine, guide="polite")),
        (PROMPT, {"kv_policy": "win"}, in_process(local, engine, policy=window)),
        (OTHER, {"kv_policy": "win", "guide": "clean"}, in_process(local, engine, OTHER, guide="clean",
                                                                   policy=window)),
    ]
    steps0, rows0 = metric(server, "lmlab_decode_steps_total"), metric(server, "lmlab_decode_rows_total")
    streams = [ask(client, prompt, stream=True, **methods) for prompt, methods, _ in cases]  # all queued first
    texts = [text_of(s) for s in streams]
    assert texts == [want for _, _, want in cases]
    steps = metric(server, "lmlab_decode_steps_total") - steps0
    rows = metric(server, "lmlab_decode_rows_total") - rows0
    # requests shared steps: one row per forward would be 1.0; how many join before the first ones finish depends
    # on the machine's load (47 rows in 24 steps seen on a busy 2-core host), so the bar is 1.5, not 2
    assert rows / steps > 1.5, (rows, steps)
    deadline = time.monotonic() + 10
    while (engine.policy_lanes or engine.batch_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.policy_lanes == 0 and engine.batch_size == 0  # every lane closed, every row left
    assert all(not g.rows and not g.claimed for g in engine.main.guides.values())


def test_cancelled_kv_request_frees_its_lane(client, engine, server):
    stream = client.completions.create(model="world", prompt=PROMPT, max_tokens=60, temperature=0, stream=True,
                                       extra_body={"kv_policy": "h2o-half", "ignore_eos": True, "guide": "polite"})
    next(iter(stream))
    stream.close()  # the client hangs up mid-stream
    deadline = time.monotonic() + 20
    while (engine.policy_lanes or engine.batch_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.policy_lanes == 0 and engine.batch_size == 0 and metric(server, "lmlab_queue_depth") == 0


@pytest.mark.parametrize("field, value, listed", [
    ("guide", "kind", "unknown guide 'kind' (available: clean, polite)"),
    ("kv_policy", "lru", "unknown kv_policy 'lru' (available: h2o-half, win, none)"),
])
def test_unknown_guide_or_policy_is_a_400_listing_the_loaded_ones(client, engine, local, field, value, listed):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, **{field: value})
    assert err.value.status_code == 400 and listed in str(err.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="world", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       extra_body={field: value})
    assert ask(client).choices[0].text == in_process(local, engine)  # still serving


def test_methods_route_lists_guides_and_policies(server):
    import httpx

    body = httpx.get(server.url + "/v1/lmlab/methods", timeout=10).json()
    assert body["guides"] == {"clean": {"guide": None, "forbid": list(FORBID)},
                              "polite": {"guide": "gedi", "forbid": []}}
    assert body["kv_policies"] == {"h2o-half": {"policy": "h2o", "budget": 0.5},
                                   "win": {"policy": "window", "budget": WINDOW_BUDGET}}
    assert body["default_kv_policy"] is None


def test_default_kv_policy_from_the_serve_flags(local, engine):
    """``lmlab serve --kv-policy window --kv-budget 6``: requests naming no policy get it, "none" opts out."""
    import httpx

    from lmlab.serve.app import create_app
    from lmlab.serve.config import ServeConfig, set_default_kv_policy
    from lmlab.serve.server import ServerThread, build_engine

    cfg = ServeConfig(model_name="world")
    set_default_kv_policy(cfg, "window", str(WINDOW_BUDGET))
    eng = build_engine(ASSET_DIR, cfg).start()
    try:
        with ServerThread(create_app(eng)) as s:
            def text(**extra):
                r = httpx.post(s.url + "/v1/completions", json={"model": "world", "prompt": PROMPT, "max_tokens": N_NEW,
                                                                "temperature": 0, **extra}, timeout=60)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["text"]

            assert text() == in_process(local, engine, policy=kv_policy("window", budget=WINDOW_BUDGET))
            assert text(kv_policy="none") == in_process(local, engine)
            assert text() != text(kv_policy="none")
            methods = httpx.get(s.url + "/v1/lmlab/methods", timeout=10).json()
            assert methods["default_kv_policy"] == "window"
    finally:
        eng.close()
