"""The server's error vocabulary: every stage reports a request's failure as one of two kinds.

- `RequestError`: the request is wrong (malformed JSON, too long, bad tensor); Triton returns INVALID_ARG, the client
  must not retry it.
- `ServerFault`: the server failed (a bug, the engine raising, a head that does not match the engine); Triton
  returns INTERNAL, never INVALID_ARG.

How a stage turns them into one response per request is `reward_triton/serving/results.py` (`Failure`, `guarded`)
and `reward_triton/serving/triton.py`.
"""

from __future__ import annotations


class RequestError(ValueError):
    """A bad request: the message names the problem; Triton returns it as INVALID_ARG."""


class ServerFault(RuntimeError):
    """The server failed on a request that may well be valid; Triton returns it as INTERNAL."""
