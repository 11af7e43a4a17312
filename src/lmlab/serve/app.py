"""The FastAPI app: OpenAI-compatible routes over an :class:`~lmlab.serve.engine.Engine`, plus ``/health``,
``/metrics`` (Prometheus text) and the playground page at ``/``.

    engine = Engine(model, tokenizer, ServeConfig(), model_name="world").start()
    app = create_app(engine, api_key=None)      # uvicorn.run(app, host="127.0.0.1", port=8000)

With ``api_key`` every ``/v1`` route and ``/metrics`` need ``Authorization: Bearer <key>`` (401 otherwise);
``/health`` and the page stay open (the page asks for the key and sends it with its calls).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmlab.serve.engine import Engine
from lmlab.serve.errors import APIError, error_body
from lmlab.errors import LmlabError
from lmlab.serve.openai_schema import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from lmlab.serve.prepare import chat_job, completion_job, parse_body
from lmlab.serve.responses import Collector, chat_body, chat_stream, completion_body, completion_stream

_COUNTED = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/", "/tokenize",
            "/detokenize", "/tokenizer_info")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _CountRequests:
    """ASGI middleware counting answered requests by endpoint and status (a pure ASGI wrapper, so streaming
    responses and client disconnects pass through untouched)."""

    def __init__(self, app, engine: Engine) -> None:
        self.app, self.engine = app, engine

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            self.engine.metrics.count_request(path if path in _COUNTED else "other", status[0])


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="lmlab serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(400, f"invalid request: {exc.errors()[0].get('msg')}"), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # a server bug, never a client's mistake
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}"), status_code=500)

    @app.get("/health")
    async def health():
        if engine.failure is not None:
            return JSONResponse(error_body(503, f"engine failed: {engine.failure}"), status_code=503)
        return {"status": "ok", "model": engine.model_name}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return resources.files("lmlab.serve").joinpath("playground/index.html").read_text(encoding="utf-8")

    v1 = APIRouter(dependencies=[Depends(check_key)])

    @v1.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(engine.metrics.render(engine.gauges()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @v1.get("/v1/models")
    async def models():
        created = int(time.time())
        base = {"id": engine.model_name, "object": "model", "created": created, "owned_by": "lmlab",
                "max_model_len": engine.context_length}
        adapters = [{"id": a, "object": "model", "created": created, "owned_by": "lmlab", "parent": engine.model_name,
                     "max_model_len": engine.context_length} for a in engine.adapters.names]
        return {"object": "list", "data": [base] + adapters}

    @v1.get("/v1/lmlab/methods")
    async def methods():
        """What a request may name: adapters, steering vectors (with hook point and default coefficient),
        guides and KV policies (with the default one)."""
        return {"adapters": engine.adapters.names,
                "steering": {n: {"hook": s.hook, "coeff": s.coeff} for n, s in engine.steering.specs.items()},
                "guides": {n: engine.guides.describe(n) for n in engine.guides.names},
                "kv_policies": {n: engine.kv_policies.describe(n) for n in engine.kv_policies.names},
                "default_kv_policy": engine.kv_policies.default,
                "limits": {"max_tokens": engine.config.max_tokens_limit, "context_length": engine.context_length,
                           "max_batch_size": engine.config.max_batch_size, "max_queue": engine.config.max_queue}}

    # vLLM's tokenizer routes: lm-eval's local-completions finds them and then needs no local tokenizer
    @v1.get("/tokenizer_info")
    async def tokenizer_info():
        tok = need_tokenizer()
        return {"eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                "chat_template": tok.chat_template, "model_max_length": engine.context_length,
                "vocab_size": tok.vocab_size}

    @v1.post("/tokenize")
    async def tokenize(request: Request):
        body = parse_body(await request.body(), TokenizeRequest)
        tok = need_tokenizer()
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of 'prompt' and 'messages'", param="prompt")
        if body.prompt is not None:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            try:
                ids = tok.apply_chat_template([m.as_template_message() for m in body.messages],
                                              add_generation_prompt=body.add_generation_prompt, tokenize=True)
            except LmlabError as e:
                raise APIError(400, f"the messages do not fit the chat template: {e}", param="messages") from None
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_length}

    @v1.post("/detokenize")
    async def detokenize(request: Request):
        body = parse_body(await request.body(), DetokenizeRequest)
        tok = need_tokenizer()
        vocab = engine.model.config.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="tokens")
        return {"prompt": tok.decode(body.tokens)}

    def need_tokenizer():
        if engine.tokenizer is None:
            raise APIError(400, "this server has no tokenizer (the checkpoint has no tokenizer.json)")
        return engine.tokenizer

    @v1.post("/v1/completions")
    async def completions(request: Request):
        body = parse_body(await request.body(), CompletionRequest)
        job = completion_job(engine, body)
        queue = engine.submit(job, asyncio.get_running_loop())
        collector = Collector(engine, job, queue)
        want_lp = body.logprobs is not None
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(completion_stream(collector, body.model, body.echo, want_lp, include),
                                     media_type="text/event-stream", headers=_SSE_HEADERS)
        try:
            return await completion_body(collector, body.model, body.echo, want_lp, request.is_disconnected)
        finally:
            engine.cancel(job)

    @v1.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_body(await request.body(), ChatCompletionRequest)
        job = chat_job(engine, body)
        queue = engine.submit(job, asyncio.get_running_loop())
        collector = Collector(engine, job, queue)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(chat_stream(collector, body.model, body.logprobs, include),
                                     media_type="text/event-stream", headers=_SSE_HEADERS)
        try:
            return await chat_body(collector, body.model, body.logprobs, request.is_disconnected)
        finally:
            engine.cancel(job)

    app.include_router(v1)
    app.add_middleware(_CountRequests, engine=engine)
    return app
