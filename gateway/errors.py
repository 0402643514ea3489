"""Errors the gateway answers, in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

`ApiError` carries its HTTP status; the subclasses name the common ones. `extra` adds fields to the error object
(e.g. `rows` for a `/get_reward` batch that names its bad rows).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from gateway.openai.protocol import ErrorBody, ErrorDetail


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        body = ErrorBody(error=error).model_dump()
        body["error"].update(self.extra)
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidRequest(ApiError):
    """400: the request body, a field, or a conversation is not acceptable."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, **kw: Any) -> None:
        super().__init__(400, message, param=param, code=code, **kw)


class NotFound(ApiError):
    """404: unknown model or path."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "not_found") -> None:
        super().__init__(404, message, param=param, code=code)


class Unavailable(ApiError):
    """503: Triton unreachable, restarting or not ready; the client should retry (Retry-After: 1)."""

    def __init__(
        self, message: str = "the reward model is not available (Triton unreachable or not ready); retry later"
    ) -> None:
        super().__init__(503, message, type="server_error", code="service_unavailable", headers={"Retry-After": "1"})


class InternalError(ApiError):
    """500: a real server fault (the ensemble failed while ready, an invalid model config or score)."""

    def __init__(self, message: str = "internal server error") -> None:
        super().__init__(500, message, type="server_error", code="internal_error")


def unavailable(message: str | None = None) -> ApiError:
    return Unavailable() if message is None else Unavailable(message)
