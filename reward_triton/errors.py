"""The server's error vocabulary: every stage reports a request's failure as one of two kinds.

- `RequestError`: the request is wrong (malformed JSON, too long, bad tensor); Triton returns INVALID_ARG, the client
  must not retry it.
- `ServerFault`: the server failed (a bug, the engine raising, a head that does not match the engine); Triton
  returns INTERNAL, never INVALID_ARG.

A stage's `run` returns, per request, either its output tensors or a `Failure` (the kind and the message, without
the exception and its traceback: a traceback would keep the request's tensors alive until the cyclic garbage
collector runs, which for large requests is what made memory grow).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("reward_triton")
T = TypeVar("T")


class RequestError(ValueError):
    """A bad request: the message names the problem; Triton returns it as INVALID_ARG."""


class ServerFault(RuntimeError):
    """The server failed on a request that may well be valid; Triton returns it as INTERNAL."""


@dataclass(frozen=True)
class Failure:
    message: str
    invalid_request: bool  # True: INVALID_ARG (the client's mistake); False: INTERNAL (ours)
    retryable: bool = False  # UNAVAILABLE: the server is busy or restarting, the same request may succeed later

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        if isinstance(error, RequestError):
            return cls(str(error), True)
        if isinstance(error, ServerFault):
            return cls(str(error), False)
        return cls(f"internal error: {type(error).__name__}: {error}", False)


def guarded(fn: Callable[[], T]) -> T | Failure:
    """`fn()`, or the Failure that its exception means. Unexpected exceptions are logged with their traceback."""
    try:
        return fn()
    except (RequestError, ServerFault) as e:
        return Failure.of(e)
    except Exception as e:
        log.exception("request failed with an unexpected error")
        return Failure.of(e)
