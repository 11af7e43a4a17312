"""Request bodies of the OpenAI API subset the server implements, validated by pydantic.

Unknown fields are refused (``extra="forbid"``), so a client never believes a setting took effect when it
did not; OpenAI fields the server knows but does not implement are accepted only at their neutral value
(e.g. ``presence_penalty: 0``) and otherwise refused by name. Extensions beyond OpenAI (as in vLLM):
``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, and the per-request methods ``adapter``, ``steer``,
``guide`` and ``kv_policy``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmlab.serve.errors import bad_request


class Steer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    coeff: float | None = None  # None = the coefficient the server's config gives this vector


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default is 1
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    # extensions (vLLM names)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False  # generate max_tokens tokens whatever comes (load tests)
    adapter: str | None = None
    steer: Steer | None = None
    guide: str | None = None  # a guide of the server's config (lmlab.control)
    kv_policy: str | None = None  # a kv_policies entry of the server's config; "none" = the full cache
    # known but not implemented: refused unless neutral
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list):
            if len(v) > 4:
                raise ValueError("at most 4 stop sequences")
            if any(not s for s in v):
                raise ValueError("stop sequences must be non-empty")
        if v == "":
            raise ValueError("stop sequences must be non-empty")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check_supported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad_request(f"'{name}' is not supported by this server (use repetition_penalty)", param=name,
                                  code="unsupported_parameter")
        if self.logit_bias:
            raise bad_request("'logit_bias' is not supported by this server", param="logit_bias",
                              code="unsupported_parameter")


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default is 16
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, self.n):
            raise bad_request("'best_of' is not supported by this server (use n)", param="best_of",
                              code="unsupported_parameter")
        if self.suffix:
            raise bad_request("'suffix' is not supported by this server", param="suffix", code="unsupported_parameter")

    def prompt_list(self) -> list[str | list[int]]:
        """The prompt(s) as a list: each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise bad_request("'prompt' is empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: passed to the chat template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_template_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        out = {k: v for k, v in (self.model_extra or {}).items()}
        out.update(role=self.role, content=content or "")
        return out


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: Any = None
    parallel_tool_calls: bool | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            if getattr(self, name) not in (None, [], "none"):
                raise bad_request(f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
        if self.response_format not in (None, {"type": "text"}):
            raise bad_request("'response_format' other than text is not supported by this server",
                              param="response_format", code="unsupported_parameter")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a prompt, or messages rendered with the chat template."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]
