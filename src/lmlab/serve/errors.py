"""Errors a client receives, in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Every client mistake becomes an :class:`APIError` with a 4xx status before it reaches the engine, so a bad
request never costs the running batch anything and never surfaces as a 500.
"""

from __future__ import annotations

# status -> OpenAI error type (the openai client maps the status to its typed exceptions)
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_overloaded"}


class APIError(Exception):
    """An HTTP error answer: ``status``, a one-line ``message``, the offending ``param`` and a ``code``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)
