"""Per-request results of a stage: its output tensors, or a `Failure` that stays with that request.

A stage's `run(batch)` takes one dict of input arrays per request (absent optional inputs are None; arrays keep
Triton's leading batch dim of 1) and returns, per request, a dict of output arrays or a `Failure` (INVALID_ARG,
INTERNAL or UNAVAILABLE for that request only). Every request runs under `guarded`, so whatever one request does,
it gets its own result. `reward_triton.serving.triton` turns these into Triton responses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from reward_triton.errors import RequestError, ServerFault

log = logging.getLogger("reward_triton")
T = TypeVar("T")


# A stage's `run` returns, per request, either its output tensors or a `Failure` (the kind and the message, without
# the exception and its traceback: a traceback would keep the request's tensors alive until the cyclic garbage
# collector runs, which for large requests is what made memory grow).
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

    @classmethod
    def caught(cls, error: BaseException) -> Failure:
        """In an `except` block: the Failure `error` means; an unexpected one is logged with its traceback. The
        stages catch per request inline (`except Exception as e: out.append(Failure.caught(e))`), so that a request
        that succeeds makes no call here."""
        if not isinstance(error, (RequestError, ServerFault)):
            log.exception("request failed with an unexpected error")
        return cls.of(error)


def guarded(fn: Callable[[], T]) -> T | Failure:
    """`fn()`, or the Failure that its exception means (`Failure.caught`)."""
    try:
        return fn()
    except Exception as e:
        return Failure.caught(e)


Inputs = Mapping[str, np.ndarray | None]
Outputs = dict[str, np.ndarray]
Result = Outputs | Failure


class Stage(Protocol):
    input_names: tuple[str, ...]

    def run(self, batch: Sequence[Inputs]) -> list[Result]: ...
