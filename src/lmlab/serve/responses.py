"""Engine events -> OpenAI response bodies: whole responses, and server-sent-event streams of chunks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from lmlab.serve.engine import DONE, Engine, Failed, Finish, Job, PromptLogprobs, Token
from lmlab.serve.errors import APIError
from lmlab.serve.text import TextStream


class Choice:
    """What one choice has accumulated: its text stream, tokens, log-probs and finish reason."""

    def __init__(self, index: int, tokenizer, job: Job) -> None:
        self.index = index
        self.text = TextStream(tokenizer, job.stop_strings) if tokenizer is not None else None
        self.stops = set(job.stop_token_ids)
        self.tokens: list[int] = []
        self.logprobs: list[float | None] = []
        self.tops: list = []
        self.finish_reason: str | None = None
        self.prompt: PromptLogprobs | None = None

    def push(self, ev: Token) -> str:
        """Record a token; the newly settled text."""
        self.tokens.append(ev.token)
        self.logprobs.append(ev.logprob)
        self.tops.append(ev.top)
        if self.text is None or ev.token in self.stops:
            return ""
        return self.text.push(ev.token)

    def finish(self, reason: str) -> str:
        rest = self.text.finish() if self.text is not None else ""
        if self.text is not None and self.text.stopped:
            reason = "stop"
        self.finish_reason = reason
        return rest

    @property
    def full_text(self) -> str:
        return self.text.text if self.text is not None else ""


class Collector:
    """Reads a job's queue; ``events()`` yields (choice, new text) as tokens arrive."""

    def __init__(self, engine: Engine, job: Job, queue: asyncio.Queue) -> None:
        self.engine, self.job, self.queue = engine, job, queue
        self.choices = [Choice(i, engine.tokenizer, job) for i in range(job.rows)]

    async def events(self, disconnected: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator:
        """Yields ("token", choice, text, event), ("finish", choice, text, None) and ("prompt", ...) items;
        raises APIError if the engine failed the job. ``disconnected`` is polled while waiting (non-stream)."""
        checked = time.monotonic()
        while True:
            if disconnected is None:
                ev = await self.queue.get()
            else:
                try:
                    ev = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except TimeoutError:
                    ev = None
                if time.monotonic() - checked >= 0.5 or ev is None:  # tokens may arrive faster than that
                    checked = time.monotonic()
                    if await disconnected():
                        self.engine.cancel(self.job)
                        return
                if ev is None:
                    continue
            if ev is DONE:
                return
            if isinstance(ev, Failed):
                raise APIError(ev.status, ev.message)
            if isinstance(ev, PromptLogprobs):
                for c in self.choices[ev.prompt * self.job.n:(ev.prompt + 1) * self.job.n]:
                    c.prompt = ev
                yield ("prompt", None, "", ev)
            elif isinstance(ev, Token):
                c = self.choices[ev.index]
                yield ("token", c, c.push(ev), ev)
            elif isinstance(ev, Finish):
                c = self.choices[ev.index]
                yield ("finish", c, c.finish(ev.reason), None)

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.job.prompts) * self.job.n
        completion = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False) if tokenizer is not None else str(token)


# -- /v1/completions ---------------------------------------------------------------------------------------

def completion_logprobs(tokenizer, c: Choice, echo: bool) -> dict:
    """The legacy completions ``logprobs`` object (prompt entries first when echoing)."""
    toks: list[int] = []
    lps: list[float | None] = []
    tops: list = []
    if echo and c.prompt is not None:
        toks += c.prompt.tokens
        lps += c.prompt.logprobs
        tops += c.prompt.top
    toks += c.tokens
    lps += c.logprobs
    tops += c.tops
    strings = [token_text(tokenizer, t) for t in toks]
    offsets, at = [], 0
    for s in strings:
        offsets.append(at)
        at += len(s)
    top_dicts = [None if t is None else {token_text(tokenizer, i): lp for i, lp in t} for t in tops]
    return {"tokens": strings, "token_logprobs": lps, "top_logprobs": top_dicts, "text_offset": offsets}


def prompt_text(engine: Engine, job: Job, index: int) -> str:
    prompt = job.prompts[index // job.n]
    return engine.tokenizer.decode(prompt) if engine.tokenizer is not None else ""


async def completion_body(collector: Collector, model: str, echo: bool, want_logprobs: bool, disconnected) -> dict:
    async for _ in collector.events(disconnected):
        pass
    engine, job = collector.engine, collector.job
    choices = []
    for c in collector.choices:
        text = (prompt_text(engine, job, c.index) if echo else "") + c.full_text
        choices.append({"index": c.index, "text": text, "finish_reason": c.finish_reason,
                        "logprobs": completion_logprobs(engine.tokenizer, c, echo) if want_logprobs else None})
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": collector.usage()}


def sse(data) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


async def completion_stream(collector: Collector, model: str, echo: bool, want_logprobs: bool,
                            include_usage: bool) -> AsyncIterator[str]:
    engine, job = collector.engine, collector.job
    rid, created = new_id("cmpl"), int(time.time())

    def chunk(index: int, text: str, finish: str | None, logprobs=None) -> str:
        return sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}]})

    try:
        if echo:
            for c in collector.choices:
                yield chunk(c.index, prompt_text(engine, job, c.index), None)
        async for kind, c, text, ev in _guarded(collector.events()):
            if kind == "error":
                yield sse(ev)
                return
            if kind == "token" and (text or want_logprobs):
                lp = None
                if want_logprobs:
                    top = {token_text(engine.tokenizer, i): v for i, v in (ev.top or [])}
                    lp = {"tokens": [token_text(engine.tokenizer, ev.token)], "token_logprobs": [ev.logprob],
                          "top_logprobs": [top], "text_offset": [0]}
                yield chunk(c.index, text, None, lp)
            elif kind == "finish":
                yield chunk(c.index, text, c.finish_reason)
        if include_usage:
            yield sse({"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
                       "usage": collector.usage()})
        yield sse("[DONE]")
    finally:
        engine.cancel(job)  # a no-op once the job is done; frees the rows if the client went away


async def _guarded(events: AsyncIterator) -> AsyncIterator:
    """Engine failures inside a stream become one error event (the status line has already been sent)."""
    try:
        async for item in events:
            yield item
    except APIError as e:
        yield ("error", None, "", e.body())


# -- /v1/chat/completions ----------------------------------------------------------------------------------

def chat_logprob_entry(tokenizer, token: int, logprob: float | None, top) -> dict:
    s = token_text(tokenizer, token)
    return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8")),
            "top_logprobs": [{"token": token_text(tokenizer, i), "logprob": v,
                              "bytes": list(token_text(tokenizer, i).encode("utf-8"))} for i, v in (top or [])]}


async def chat_body(collector: Collector, model: str, want_logprobs: bool, disconnected) -> dict:
    async for _ in collector.events(disconnected):
        pass
    tok = collector.engine.tokenizer
    choices = []
    for c in collector.choices:
        logprobs = None
        if want_logprobs:
            logprobs = {"content": [chat_logprob_entry(tok, t, lp, top)
                                    for t, lp, top in zip(c.tokens, c.logprobs, c.tops)]}
        choices.append({"index": c.index, "message": {"role": "assistant", "content": c.full_text},
                        "logprobs": logprobs, "finish_reason": c.finish_reason})
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": collector.usage()}


async def chat_stream(collector: Collector, model: str, want_logprobs: bool,
                      include_usage: bool) -> AsyncIterator[str]:
    engine, job = collector.engine, collector.job
    rid, created = new_id("chatcmpl"), int(time.time())

    def chunk(index: int, delta: dict, finish: str | None, logprobs=None) -> str:
        return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    try:
        for c in collector.choices:
            yield chunk(c.index, {"role": "assistant", "content": ""}, None)
        async for kind, c, text, ev in _guarded(collector.events()):
            if kind == "error":
                yield sse(ev)
                return
            if kind == "token" and (text or want_logprobs):
                lp = {"content": [chat_logprob_entry(engine.tokenizer, ev.token, ev.logprob, ev.top)]} \
                    if want_logprobs else None
                yield chunk(c.index, {"content": text} if text else {}, None, lp)
            elif kind == "finish":
                yield chunk(c.index, {"content": text} if text else {}, c.finish_reason)
        if include_usage:
            yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": collector.usage()})
        yield sse("[DONE]")
    finally:
        engine.cancel(job)
