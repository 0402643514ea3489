"""Several Triton replicas behind one scoring interface, with cache affinity, load spreading and failover.

    async with ReplicaPool.from_urls(["a:8001", "b:8001"], concurrency=16) as pool:
        s = await pool.score({"messages": [...]})      # the same calls as RewardClient

Affinity: requests that share a prompt (a conversation's turn prefixes, a prompt's candidates, a preference pair)
share the prompt's key/value blocks in a replica's prefix cache, so they go to one replica. A request's key is its
conversation up to the first assistant turn (or `affinity=` when given); the pool remembers which replica a key went
to (the most recent `KEYS_KEPT` keys) and sends the key's later requests there while it stays healthy.

Load: a key seen for the first time goes to the healthy replica with the fewest requests in flight (ties: the one
given the fewest keys).

Failover: each replica's RewardClient retries an unavailable server for a short while (`REPLICA_RETRY_S`); when it
gives up with a retryable status (UNAVAILABLE, DEADLINE_EXCEEDED, a dead backend stub) the replica is marked down,
its keys move to the others and the request is sent again there. A down replica gets no requests until a
background probe finds its model ready again. While every replica is down, requests wait for one to come back for
the pool's `RetryPolicy.max_wait`, then fail with the last ServerFailure. A request the server rejected
(RequestRejected) or that failed otherwise is not retried elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from client.api import (
    DEFAULT_MODEL,
    ModelMetadata,
    RetryPolicy,
    RewardClient,
    Score,
    ServerFailure,
    bounded_map,
    retryable,
)

T = TypeVar("T")
REPLICA_RETRY_S = 5.0  # seconds one replica's client retries before the pool sends the request elsewhere
PROBE_INTERVAL_S = 2.0  # seconds between readiness probes of a down replica
KEYS_KEPT = 1 << 16  # affinity keys remembered (least recently used forgotten first)


class Replica(Protocol):
    """What the pool needs of one endpoint (RewardClient, or a fake in tests)."""

    url: str

    async def score(
        self, conversation: Mapping[str, Any] | str | None = None, *, text: str | None = None, truncate: bool = False
    ) -> Score: ...

    async def metadata(self) -> ModelMetadata: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...

    def retry_status(self) -> str | None: ...


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """'a:8001,b:8001' (or a list of such strings) → ['a:8001', 'b:8001']; empty items dropped, order kept."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out = [u.strip() for item in items for u in item.split(",") if u.strip()]
    if not out:
        raise ValueError("no server URL given")
    if len(set(out)) != len(out):
        raise ValueError(f"a server URL is given twice: {','.join(out)}")
    return out


def _leading_turns(conversation: Mapping[str, Any]) -> Any:
    """The part of a conversation before its first assistant turn (OpenAI `messages` or NeMo `conversations`)."""
    messages = conversation.get("messages")
    if isinstance(messages, list):
        head = []
        for m in messages:
            if isinstance(m, Mapping) and m.get("role") == "assistant":
                break
            head.append(m)
        return head
    turns = conversation.get("conversations")
    if isinstance(turns, list):
        mask = conversation.get("mask", "User")
        head = [conversation.get("system")]
        for t in turns:
            if isinstance(t, Mapping) and t.get("from") != mask:
                break
            head.append(t)
        return head
    return conversation


def affinity_key(conversation: Mapping[str, Any] | str | None = None, text: str | None = None) -> str:
    """A request's affinity key: a hash of its conversation up to the first assistant turn (templated text: up to
    the first line naming the assistant)."""
    if text is not None:
        cut = text.lower().find("assistant")
        head: Any = text if cut < 0 else text[:cut]
    else:
        data: Any = conversation
        if isinstance(conversation, str):
            try:
                data = json.loads(conversation)
            except json.JSONDecodeError:
                data = conversation
        head = _leading_turns(data) if isinstance(data, Mapping) else data
    raw = json.dumps(head, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class ReplicaPool:
    """Scores on several replicas (see the module docstring); use as `async with`."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        retry: RetryPolicy | None = None,
        notify: Callable[[str], None] | None = None,
        probe_interval: float = PROBE_INTERVAL_S,
    ) -> None:
        if not replicas:
            raise ValueError("a replica pool needs at least one replica")
        self.replicas = list(replicas)
        self.url = ",".join(r.url for r in self.replicas)
        self.retry = retry or RetryPolicy()
        self.notify = notify
        self.probe_interval = probe_interval
        self.in_flight = [0] * len(self.replicas)
        self.served = [0] * len(self.replicas)  # requests answered with scores (or metadata), per replica
        self.keys_given = [0] * len(self.replicas)
        self.down: set[int] = set()
        self._keys: OrderedDict[str, int] = OrderedDict()
        self._probes: dict[int, asyncio.Task[None]] = {}
        self._up: asyncio.Event | None = None
        self._all_down_since: float | None = None
        self._last_failure: ServerFailure | None = None  # what marked a replica down most recently

    @classmethod
    def from_urls(
        cls,
        urls: str | Sequence[str],
        *,
        model: str = DEFAULT_MODEL,
        concurrency: int = 16,
        timeout: float | None = 120.0,
        retry: RetryPolicy | None = None,
        notify: Callable[[str], None] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
    ) -> ReplicaPool:
        """One RewardClient per URL (`concurrency` requests in flight per replica); each retries an unavailable
        server for at most REPLICA_RETRY_S before the pool moves its requests; `retry` bounds the wait while every
        replica is down."""
        policy = retry or RetryPolicy()
        per_replica = replace(policy, max_wait=min(policy.max_wait, REPLICA_RETRY_S))
        clients = [
            RewardClient(
                url,
                model=model,
                concurrency=concurrency,
                timeout=timeout,
                retry=per_replica,
                notify=notify,
                weights=weights,
            )
            for url in split_urls(urls)
        ]
        return cls(clients, retry=policy, notify=notify)

    async def __aenter__(self) -> ReplicaPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        probes, self._probes = list(self._probes.values()), {}
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self.replicas), return_exceptions=True)

    def retry_status(self) -> str | None:
        """What the progress line shows: replicas down, or a replica's client waiting to retry; else None."""
        if len(self.down) == len(self.replicas):
            since = self._all_down_since or time.monotonic()
            return f"all {len(self.replicas)} servers unavailable, retrying ({time.monotonic() - since:.0f} s)"
        if self.down:
            urls = ", ".join(self.replicas[i].url for i in sorted(self.down))
            return f"{len(self.down)} of {len(self.replicas)} servers unavailable ({urls}), using the others"
        for r in self.replicas:
            status = r.retry_status()
            if status is not None:
                return f"{r.url}: {status}"
        return None

    async def ready(self) -> bool:
        """Whether any replica's model is ready."""
        return any(await asyncio.gather(*(r.ready() for r in self.replicas)))

    async def metadata(self) -> ModelMetadata:
        """The model's metadata from a healthy replica."""
        return await self._run(None, lambda r: r.metadata())

    async def score(
        self,
        conversation: Mapping[str, Any] | str | None = None,
        *,
        text: str | None = None,
        truncate: bool = False,
        affinity: str | None = None,
    ) -> Score:
        """RewardClient.score on the replica of this request's affinity key (see the module docstring)."""
        key = affinity if affinity is not None else affinity_key(conversation, text)
        return await self._run(key, lambda r: r.score(conversation, text=text, truncate=truncate))

    async def score_many(
        self,
        conversations: Iterable[Mapping[str, Any] | str],
        *,
        truncate: bool = False,
        return_exceptions: bool = False,
    ) -> list[Score | Exception]:
        """RewardClient.score_many over the pool: results in input order, at most twice the replicas' summed
        concurrency pending."""
        items = list(conversations)
        limit = 2 * sum(int(getattr(r, "concurrency", 16)) for r in self.replicas)
        out: list[Score | Exception | None] = [None] * len(items)
        async for i, result in bounded_map(lambda c: self.score(c, truncate=truncate), items, limit=limit):
            if isinstance(result, Exception) and not return_exceptions:
                raise result
            out[i] = result
        return out  # type: ignore[return-value]

    def _pick(self, key: str | None) -> int | None:
        """The replica for `key`: its remembered one while healthy, else the least loaded healthy one (None: all
        down). Called and acted on without an await in between, so concurrent picks see each other's loads."""
        if key is not None:
            known = self._keys.get(key)
            if known is not None and known not in self.down:
                self._keys.move_to_end(key)
                return known
        healthy = [i for i in range(len(self.replicas)) if i not in self.down]
        if not healthy:
            return None
        best = min(healthy, key=lambda i: (self.in_flight[i], self.keys_given[i], i))
        if key is not None:
            self._keys[key] = best
            self._keys.move_to_end(key)
            self.keys_given[best] += 1
            while len(self._keys) > KEYS_KEPT:
                self._keys.popitem(last=False)
        return best

    async def _run(self, key: str | None, call: Callable[[Replica], Awaitable[T]]) -> T:
        """`call` on the key's replica; on a retryable ServerFailure, mark that replica down and call again on
        another, waiting for one to come back while all are down (at most retry.max_wait)."""
        deadline: float | None = None
        last: ServerFailure | None = None
        while True:
            i = self._pick(key)
            if i is None:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.retry.max_wait
                if now >= deadline:
                    raise last or self._last_failure or ServerFailure(f"no server of {self.url} is available")
                await self._wait_up(deadline - now)
                continue
            self.in_flight[i] += 1
            try:
                result = await call(self.replicas[i])
            except ServerFailure as e:
                if not retryable(e.status, str(e)):
                    raise
                last = e
                self._mark_down(i, e)
                continue
            finally:
                self.in_flight[i] -= 1
            self.served[i] += 1
            return result

    async def _wait_up(self, timeout: float) -> None:
        if self._up is None:
            self._up = asyncio.Event()
        self._up.clear()
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            pass

    def _mark_down(self, i: int, error: ServerFailure) -> None:
        self._last_failure = error
        if i in self.down:
            return
        self.down.add(i)
        if len(self.down) == len(self.replicas):
            self._all_down_since = time.monotonic()
        if self.notify is not None:
            status = error.status.removeprefix("StatusCode.") or "error"
            self.notify(f"{self.replicas[i].url} is unavailable ({status}); using the other servers")
        self._probes[i] = asyncio.ensure_future(self._probe(i))

    async def _probe(self, i: int) -> None:
        """Bring replica i back once its model answers ready."""
        while True:
            await asyncio.sleep(self.probe_interval)
            if await self.replicas[i].ready():
                break
        self.down.discard(i)
        self._all_down_since = None
        self._probes.pop(i, None)
        if self._up is not None:
            self._up.set()
        if self.notify is not None:
            self.notify(f"{self.replicas[i].url} is back")


def connect(
    urls: str | Sequence[str],
    *,
    model: str = DEFAULT_MODEL,
    concurrency: int = 16,
    timeout: float | None = 120.0,
    retry: RetryPolicy | None = None,
    notify: Callable[[str], None] | None = None,
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> RewardClient | ReplicaPool:
    """A RewardClient for one URL, a ReplicaPool for several ('a:8001,b:8001' or a list)."""
    found = split_urls(urls)
    kwargs: dict[str, Any] = dict(
        model=model, concurrency=concurrency, timeout=timeout, retry=retry, notify=notify, weights=weights
    )
    if len(found) == 1:
        return RewardClient(found[0], **kwargs)
    return ReplicaPool.from_urls(found, **kwargs)
