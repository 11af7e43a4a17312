"""The engine without HTTP: a model failure mid-batch fails the running requests (500) and the engine goes
on serving with a fresh decoder; jobs waiting at shutdown are answered 503."""

from __future__ import annotations

import asyncio

import pytest

import lmlab
from lmlab.core.hooks import current_context
from lmlab.reference import ASSET_DIR
from lmlab.serve.config import ServeConfig
from lmlab.serve.engine import DONE, Engine, Failed, Finish, Job, Token


@pytest.fixture
def engine():
    eng = Engine(lmlab.load(ASSET_DIR), lmlab.load_tokenizer(ASSET_DIR), ServeConfig(), model_name="m").start()
    yield eng
    eng.close()


async def collect(eng: Engine, job: Job) -> list:
    queue = eng.submit(job, asyncio.get_running_loop())
    events = []
    while True:
        ev = await asyncio.wait_for(queue.get(), timeout=60)
        if ev is DONE:
            return events
        events.append(ev)


def test_model_failure_fails_running_jobs_then_serving_goes_on(engine):
    tok = engine.tokenizer
    prompt = tok.encode("Kamsa speaks")
    state = {"armed": True}

    def explode(x, name):
        ctx = current_context()
        if state["armed"] and ctx is not None and ctx.phase == "decode":
            state["armed"] = False
            raise RuntimeError("boom")

    async def scenario():
        with engine.model.hooks([("blocks.0.resid_post", explode)]):
            failed = await collect(engine, Job(prompts=[prompt], max_tokens=8, stop_token_ids=[]))
            ok = await collect(engine, Job(prompts=[prompt], max_tokens=8, stop_token_ids=[]))
        return failed, ok

    failed, ok = asyncio.run(scenario())
    assert isinstance(failed[-1], Failed) and failed[-1].status == 500 and "boom" in failed[-1].message
    assert [type(e) for e in ok] == [Token] * 8 + [Finish]
    want = lmlab.generate(lmlab.load(ASSET_DIR).eval(), [prompt], max_new_tokens=8, stop_token_ids=[])[0][len(prompt):]
    assert [e.token for e in ok if isinstance(e, Token)] == want
    assert engine.batch_size == 0 and engine.failure is None


def test_waiting_jobs_get_503_at_shutdown():
    eng = Engine(lmlab.load(ASSET_DIR), lmlab.load_tokenizer(ASSET_DIR), ServeConfig(), model_name="m")  # not started

    async def scenario():
        queue = eng.submit(Job(prompts=[[1, 2, 3]], max_tokens=4), asyncio.get_running_loop())
        eng.close()
        await asyncio.sleep(0)  # let the posted events arrive
        return [queue.get_nowait() for _ in range(queue.qsize())]

    events = asyncio.run(scenario())
    assert isinstance(events[0], Failed) and events[0].status == 503 and events[1] is DONE
    assert eng.queue_depth == 0
