"""Request bodies -> engine jobs, with every check a client's mistake can fail (each an ``APIError`` 4xx):
JSON, fields, model name, methods, prompt tokens, lengths and limits. Nothing here touches the model."""

from __future__ import annotations

import json

from pydantic import BaseModel, ValidationError

from lmlab.core.sampling import SamplingParams
from lmlab.errors import LmlabError
from lmlab.serve.engine import Engine, Job
from lmlab.serve.errors import APIError, bad_request
from lmlab.serve.kv_policies import NO_POLICY
from lmlab.serve.openai_schema import ChatCompletionRequest, CompletionRequest, SamplingFields

_TYPE_TAGS = ("str", "int", "float", "bool", "dict", "list", "none")


def parse_body(raw: bytes, schema: type[BaseModel]):
    """The validated body; bad JSON or a bad field is a 400 naming it."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        parts = []
        for p in err["loc"]:
            if isinstance(p, str) and (p in _TYPE_TAGS or "[" in p):  # a union member's tag: the field ends here
                err = {**err, "msg": "not one of the accepted types"}
                break
            parts.append(str(p))
        loc = ".".join(parts)
        if err["type"] == "extra_forbidden":
            raise bad_request(f"unsupported parameter '{loc}'", param=loc, code="unsupported_parameter") from None
        if err["type"] == "missing":
            raise bad_request(f"missing required parameter '{loc}'", param=loc, code="missing_parameter") from None
        raise bad_request(f"invalid '{loc}': {err['msg']}", param=loc or None, code="invalid_value") from None


def resolve_methods(engine: Engine, body: SamplingFields) -> tuple[str | None, tuple[str, float] | None]:
    """(adapter, steer) the request asks for; ``model`` may also name an adapter (as vLLM serves LoRAs)."""
    adapters = engine.adapters.names
    adapter = body.adapter
    if body.model != engine.model_name:
        if body.model not in adapters:
            known = ", ".join([engine.model_name] + adapters)
            raise APIError(404, f"the model '{body.model}' does not exist (available: {known})", param="model",
                           code="model_not_found")
        if adapter not in (None, body.model):
            raise bad_request(f"model '{body.model}' is an adapter; 'adapter' cannot name another one ({adapter!r})",
                              param="adapter")
        adapter = body.model
    if adapter is not None and adapter not in adapters:
        raise bad_request(f"unknown adapter '{adapter}' (available: {', '.join(adapters) or 'none loaded'})",
                          param="adapter", code="unknown_adapter")
    steer = None
    if body.steer is not None:
        names = engine.steering.names
        if body.steer.name not in names:
            raise bad_request(f"unknown steering vector '{body.steer.name}' (available: "
                              f"{', '.join(names) or 'none loaded'})", param="steer.name", code="unknown_steering")
        coeff = body.steer.coeff if body.steer.coeff is not None else engine.steering.default_coeff(body.steer.name)
        steer = (body.steer.name, float(coeff))
    return adapter, steer


def resolve_guide_and_policy(engine: Engine, body: SamplingFields) -> tuple[str | None, str | None]:
    """(guide, KV policy) the request asks for; a request naming no policy gets the server's default."""
    guide = body.guide
    if guide is not None and guide not in engine.guides.names:
        raise bad_request(f"unknown guide '{guide}' (available: {', '.join(engine.guides.names) or 'none loaded'})",
                          param="guide", code="unknown_guide")
    try:
        policy = engine.kv_policies.resolve(body.kv_policy)
    except KeyError:
        names = engine.kv_policies.names
        raise bad_request(f"unknown kv_policy '{body.kv_policy}' (available: "
                          f"{', '.join(names + [NO_POLICY]) if names else 'none loaded'})",
                          param="kv_policy", code="unknown_kv_policy") from None
    return guide, policy


def sampling_params(body: SamplingFields) -> SamplingParams:
    params = SamplingParams(temperature=body.temperature,
                            top_k=body.top_k if body.top_k not in (None, -1, 0) else None,
                            top_p=body.top_p if body.top_p < 1 else None, min_p=body.min_p or None,
                            repetition_penalty=body.repetition_penalty or 1.0)
    try:
        params.validate()
    except LmlabError as e:
        raise bad_request(str(e)) from None
    return params


def _check_ids(engine: Engine, ids: list[int], where: str) -> None:
    if not ids:
        raise bad_request(f"{where} is empty (no tokens)", param="prompt")
    vocab = engine.model.config.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"{where}: token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")


def _encode(engine: Engine, text: str) -> list[int]:
    if engine.tokenizer is None:
        raise bad_request("this server has no tokenizer: send prompts as token ids", param="prompt")
    return engine.tokenizer.encode(text)


def _check_lengths(engine: Engine, prompts: list[list[int]], max_tokens: int, n: int, what: str) -> None:
    cfg = engine.config
    if max_tokens > cfg.max_tokens_limit:
        raise bad_request(f"max_tokens {max_tokens} exceeds this server's limit of {cfg.max_tokens_limit}",
                          param="max_tokens", code="max_tokens_exceeded")
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > engine.context_length:
        raise bad_request(f"this model's maximum context length is {engine.context_length} tokens, but {longest} "
                          f"{what} tokens + {max_tokens} max_tokens = {longest + max_tokens} were requested",
                          param="max_tokens" if longest < engine.context_length else what,
                          code="context_length_exceeded")
    if n > cfg.max_n:
        raise bad_request(f"n {n} exceeds this server's limit of {cfg.max_n}", param="n")
    if len(prompts) * n > cfg.max_batch_size:
        raise bad_request(f"{len(prompts)} prompts x n {n} = {len(prompts) * n} rows exceed the batch limit "
                          f"{cfg.max_batch_size}", param="n")


def completion_job(engine: Engine, body: CompletionRequest) -> Job:
    body.check_supported()
    adapter, steer = resolve_methods(engine, body)
    guide, kv_policy = resolve_guide_and_policy(engine, body)
    params = sampling_params(body)
    prompts = []
    for i, p in enumerate(body.prompt_list()):
        ids = _encode(engine, p) if isinstance(p, str) else [int(t) for t in p]
        _check_ids(engine, ids, f"prompt {i}" if not isinstance(body.prompt, str) else "the prompt")
        prompts.append(ids)
    max_tokens = body.max_tokens if body.max_tokens is not None else \
        max(1, min(engine.config.max_tokens_limit, engine.context_length - max(map(len, prompts))))
    _check_lengths(engine, prompts, max_tokens, body.n, "prompt")
    if body.stream and body.echo and body.logprobs is not None:
        raise bad_request("'echo' with 'logprobs' is not supported when streaming", param="echo",
                          code="unsupported_parameter")
    if body.max_tokens == 0 and body.n > 1:
        raise bad_request("n > 1 needs max_tokens >= 1", param="n")
    return Job(prompts=prompts, params=params, max_tokens=max_tokens, n=body.n, seed=body.seed,
               stop_token_ids=[] if body.ignore_eos else engine.stop_token_ids, stop_strings=body.stop_strings(),
               logprobs=body.logprobs, prompt_logprobs=body.logprobs if body.echo else None,
               adapter=adapter, steer=steer, guide=guide, kv_policy=kv_policy)


def chat_job(engine: Engine, body: ChatCompletionRequest) -> Job:
    body.check_supported()
    adapter, steer = resolve_methods(engine, body)
    guide, kv_policy = resolve_guide_and_policy(engine, body)
    params = sampling_params(body)
    tok = engine.tokenizer
    if tok is None or tok.chat_template is None:
        raise bad_request("this model has no chat template: use /v1/completions", param="messages",
                          code="no_chat_template")
    try:
        prompt = tok.apply_chat_template([m.as_template_message() for m in body.messages],
                                         add_generation_prompt=True, tokenize=True)
    except LmlabError as e:
        raise bad_request(f"the messages do not fit the chat template: {e}", param="messages") from None
    _check_ids(engine, prompt, "the rendered conversation")
    limit = body.limit
    max_tokens = limit if limit is not None else min(engine.config.max_tokens_limit,
                                                     engine.context_length - len(prompt))
    if max_tokens < 1:
        raise bad_request(f"this model's maximum context length is {engine.context_length} tokens, and the "
                          f"messages take {len(prompt)}", param="messages", code="context_length_exceeded")
    _check_lengths(engine, [prompt], max_tokens, body.n, "messages")
    top = body.top_logprobs or 0
    return Job(prompts=[prompt], params=params, max_tokens=max_tokens, n=body.n, seed=body.seed,
               stop_token_ids=[] if body.ignore_eos else engine.stop_token_ids, stop_strings=body.stop_strings(),
               logprobs=top if body.logprobs else None, adapter=adapter, steer=steer, guide=guide,
               kv_policy=kv_policy)
