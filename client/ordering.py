"""The order in which requests that share a prefix are sent, so that the server's prefix cache reuses it.

TensorRT-LLM's block reuse (and the PyTorch engine's prefix cache, docs/prefix_cache.md) reuses a key/value block
only after a request has filled and stored it: requests sent together each compute their shared prefix. So a
conversation's turn prefixes go one after another, shortest first (`in_turn`), and a prompt's candidates go one
first, then the rest together (`first_then_rest`). Different conversations and prompts still run concurrently:
callers run these per conversation or prompt, side by side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from client.api import RequestRejected, RewardClientError, bounded_map

T = TypeVar("T")
R = TypeVar("R")


async def in_turn(fn: Callable[[T], Awaitable[R]], items: Sequence[T]) -> list[R | RequestRejected]:
    """fn over `items` one at a time, in the given order (a conversation's prefixes, shortest first); a request
    the server rejected takes its item's place and the next item is still sent; other errors propagate."""
    out: list[R | RequestRejected] = []
    for item in items:
        try:
            out.append(await fn(item))
        except RequestRejected as e:
            out.append(e)
    return out


async def first_then_rest(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], *, limit: int
) -> AsyncIterator[tuple[int, R | Exception]]:
    """(index, result or RewardClientError) like client.api.bounded_map, but the first item is sent alone and the
    others (at most `limit` pending) only once it has finished."""
    if not items:
        return
    try:
        first: R | Exception = await fn(items[0])
    except RewardClientError as e:
        first = e
    yield 0, first
    async for i, result in bounded_map(fn, items[1:], limit=limit):
        yield i + 1, result


async def group(fn: Callable[[T], Awaitable[R]], items: Sequence[T], *, limit: int) -> list[R | Exception]:
    """All of `first_then_rest`'s results, in item order."""
    out: list[R | Exception | None] = [None] * len(items)
    async for i, result in first_then_rest(fn, items, limit=limit):
        out[i] = result
    return out  # type: ignore[return-value]
