"""The server's error vocabulary: every stage reports a request's failure as one of two kinds, with a code.

- `RequestError`: the request is wrong (malformed JSON, too long, bad tensor); Triton returns INVALID_ARG, the client
  must not retry it. Its `code` (`ErrorCode`) is machine-readable and reaches clients in a stable form: the message
  Triton returns starts with `[code] ` (`tagged`; `untag` reads it back), so clients and the gateway map codes,
  never message text.
- `ServerFault`: the server failed (a bug, the engine raising, a head that does not match the engine); Triton
  returns INTERNAL, never INVALID_ARG. Its status says what it is; the message is not tagged (the stand-in for
  TensorRT-LLM's C++ backend answers with that backend's own messages).

How a stage turns them into one response per request is `reward_triton/serving/results.py` (`Failure`, `guarded`)
and `reward_triton/serving/triton.py`.
"""

from __future__ import annotations

import re
from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"  # a bad tensor, field or value
    INVALID_JSON = "invalid_json"  # the conversation is not readable JSON
    INVALID_CONVERSATION = "invalid_conversation"  # readable, but not a conversation this model can score
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # more tokens than the engine's maximum input length
    REQUEST_TOO_LARGE = "request_too_large"  # more bytes or rows than the server takes in one request


# Triton prefixes the message of a composing model's error with "in ensemble 'NAME', ".
_TAG = re.compile(r"^(?:in ensemble '[^']*', )?\[([a-z_]+)\] ")


def tagged(code: ErrorCode, message: str) -> str:
    return f"[{code}] {message}"


def untag(message: str) -> tuple[ErrorCode | None, str]:
    """(code, message without the tag) of a tagged message (also as Triton passes it out of an ensemble); (None,
    message) when it carries no known code (e.g. Triton's own INVALID_ARG for a wrong shape or dtype)."""
    m = _TAG.match(message)
    if m is None or m.group(1) not in ErrorCode._value2member_map_:
        return None, message
    return ErrorCode(m.group(1)), message[m.end() :]


class RequestError(ValueError):
    """A bad request: the message names the problem; Triton returns it as INVALID_ARG."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class ServerFault(RuntimeError):
    """The server failed on a request that may well be valid; Triton returns it as INTERNAL."""
