"""Async gRPC client for the reward ensemble: one channel, bounded concurrency, retries, typed results.

    async with RewardClient("localhost:8001", concurrency=16) as client:
        meta = await client.metadata()            # attribute names etc. from the server's ensemble config
        s = await client.score({"messages": [...]})   # or client.score(text="<extra_id_0>System...")
        s.scores["helpfulness"], s.reward, s.num_input_tokens, s.truncated

Errors: `RequestRejected` when the server rejects a request (INVALID_ARG: bad conversation, too long, ...; never
retried); `ServerFailure` for anything else. A server that is down or restarting (UNAVAILABLE, DEADLINE_EXCEEDED,
or INTERNAL from a python backend stub that died, which the server's supervisor heals by restarting) is retried
with exponential backoff and jitter for `RetryPolicy.max_wait` seconds before the ServerFailure.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from reward_triton import model_config
from reward_triton.errors import ErrorCode, untag

DEFAULT_URL = "localhost:8001"
DEFAULT_MODEL = "ensemble"
RETRYABLE = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"})
REJECTED = frozenset({"StatusCode.INVALID_ARGUMENT"})
# INTERNAL with this text: a dead python backend stub (reward_triton.ops.supervisor restarts the server)
DEAD_STUB = "is not healthy"
# reconnect to a restarted server within seconds (gRPC's default backoff grows to 120 s)
CHANNEL_ARGS = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 5000)]
# ensemble config parameters (JSON strings) that describe the outputs
PARAM_ATTRIBUTES = "attribute_names"
PARAM_TRAINED = "trained_attributes"
PARAM_WEIGHTS = "scalar_weights"

T = TypeVar("T")
R = TypeVar("R")


class RewardClientError(Exception):
    """Base class of the client's errors."""


class RequestRejected(RewardClientError):
    """The server rejected this request (INVALID_ARG); the message is the server's reason, `code` its
    machine-readable kind (reward_triton.errors.ErrorCode: context_length_exceeded, invalid_json, ...)."""

    def __init__(self, message: str, code: str = ErrorCode.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, server_message: str) -> RequestRejected:
        code, message = untag(server_message)
        return cls(message, code or ErrorCode.INVALID_REQUEST)


class ServerFailure(RewardClientError):
    """The server could not be reached or failed, after retries; `status` is the gRPC status name."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status


def f32(value: Any) -> float:
    """A float32 value as the Python float of its shortest exact decimal (stable text, same float32)."""
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class ModelMetadata:
    """What the served model outputs, read from the ensemble config's parameters."""

    attribute_names: tuple[str, ...]
    trained_attributes: tuple[str, ...]
    scalar_weights: tuple[float, ...]
    model: str = DEFAULT_MODEL

    @classmethod
    def from_config(cls, config: Mapping[str, Any], model: str = DEFAULT_MODEL) -> ModelMetadata:
        """`config` is the model config as JSON (get_model_config(..., as_json=True)["config"])."""
        params = model_config.parameters(config)

        def load(key: str) -> list[Any]:
            raw = params.get(key)
            if not raw:
                raise ServerFailure(
                    f"model '{model}' config has no parameter '{key}' (found: {', '.join(sorted(params)) or 'none'}); "
                    "is the repository rendered (`make engine`)?"
                )
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ServerFailure(f"model '{model}' config parameter '{key}' is not JSON: {raw!r}") from e
            if not isinstance(value, list):
                raise ServerFailure(f"model '{model}' config parameter '{key}' must be a JSON array, got {raw!r}")
            return value

        names = tuple(str(n) for n in load(PARAM_ATTRIBUTES))
        trained = tuple(str(n) for n in load(PARAM_TRAINED)) if params.get(PARAM_TRAINED) else names
        weights = tuple(float(w) for w in load(PARAM_WEIGHTS)) if params.get(PARAM_WEIGHTS) else ()
        unknown = [n for n in trained if n not in names]
        if unknown or (weights and len(weights) != len(names)):
            raise ServerFailure(f"model '{model}' config parameters are inconsistent: {params}")
        return cls(attribute_names=names, trained_attributes=trained, scalar_weights=weights, model=model)


@dataclass(frozen=True)
class Score:
    """One scored conversation. `scores` holds every attribute, in the model's order."""

    scores: dict[str, float]
    reward: float
    num_input_tokens: int
    truncated: bool
    trained_attributes: tuple[str, ...] = field(default=())

    @property
    def trained(self) -> dict[str, float]:
        """Only the trained attributes (the ones worth showing), in the model's order."""
        names = self.trained_attributes or tuple(self.scores)
        return {n: self.scores[n] for n in self.scores if n in names}

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": dict(self.scores),
            "trained_attributes": list(self.trained_attributes),
            "reward": self.reward,
            "num_input_tokens": self.num_input_tokens,
            "truncated": self.truncated,
        }


def _status(error: Exception) -> str:
    status = getattr(error, "status", None)
    return str(status()) if callable(status) else ""


def _message(error: Exception) -> str:
    message = getattr(error, "message", None)
    return str(message()) if callable(message) else str(error)


def retryable(status: str, message: str) -> bool:
    """The server is down, restarting or overloaded: the same request may well succeed later."""
    return status in RETRYABLE or (status == "StatusCode.INTERNAL" and DEAD_STUB in message)


@dataclass(frozen=True)
class RetryPolicy:
    max_wait: float = 60.0  # seconds a request keeps retrying before it fails
    base_delay: float = 0.2  # seconds; doubles each retry
    max_delay: float = 10.0
    attempts: int | None = None  # optional cap on tries per request

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter before try number `attempt + 1` (attempt counts from 1)."""
        return min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 30)) * random.uniform(0.5, 1.0)

    def gives_up(self, attempt: int, waited: float, next_delay: float) -> bool:
        return (self.attempts is not None and attempt >= self.attempts) or waited + next_delay > self.max_wait


class RewardClient:
    """Scores conversations on the reward ensemble over one gRPC channel. Use as `async with`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = DEFAULT_MODEL,
        concurrency: int = 16,
        timeout: float | None = 120.0,
        retry: RetryPolicy | None = None,
        notify: Callable[[str], None] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.url = url
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.weights = weights  # `reward` = these weights over the scores instead of the checkpoint's (client.weights)
        self._resolved_weights: tuple[float, ...] | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._metadata: ModelMetadata | None = None
        self._metadata_lock: asyncio.Lock | None = None
        self._waiting = 0  # calls sleeping before a retry
        self._waiting_since: float | None = None
        # told "waiting for HOST:PORT ..." at the first failure to reach the server, "connected ..." once it answers
        self.notify = notify
        self._announced_wait = False

    def retry_status(self) -> str | None:
        """'server unavailable, retrying (N s)' while calls are waiting to retry, else None (for progress lines)."""
        if not self._waiting or self._waiting_since is None:
            return None
        return f"server unavailable, retrying ({time.monotonic() - self._waiting_since:.0f} s)"

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _grpc(self) -> Any:
        if self._client is None:  # created inside the running loop: grpc.aio channels bind to it
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._client

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC with retries on UNAVAILABLE / DEADLINE_EXCEEDED; map errors to RequestRejected/ServerFailure."""
        from tritonclient.utils import InferenceServerException

        attempt = 0
        first = time.monotonic()
        while True:
            attempt += 1
            try:
                result = await fn()
                if self._announced_wait and self.notify is not None:
                    self._announced_wait = False
                    self.notify(f"connected to {self.url}")
                return result
            except InferenceServerException as e:
                status, message = _status(e), _message(e)
                if status in REJECTED:
                    raise RequestRejected.of(message) from None
                delay = self.retry.delay(attempt)
                waited = time.monotonic() - first
                if not retryable(status, message) or self.retry.gives_up(attempt, waited, delay):
                    tries = f" after {attempt} tries in {waited:.0f} s" if attempt > 1 else ""
                    raise ServerFailure(
                        f"{what} at {self.url} failed{tries}: {status or 'error'}: {message}", status
                    ) from None
                self._announce_wait(status, message)
            await self._backoff(delay)

    def _announce_wait(self, status: str, message: str) -> None:
        if self._announced_wait or self.notify is None:
            return
        self._announced_wait = True
        reason = message.splitlines()[0] if message else status
        limit = f"up to {self.retry.max_wait:.0f} s" if self.retry.attempts is None else f"{self.retry.attempts} tries"
        self.notify(
            f"waiting for {self.url} ({status.removeprefix('StatusCode.') or 'no answer'}: {reason[:120]}); "
            f"retrying for {limit} (Ctrl-C to stop)"
        )

    async def _backoff(self, delay: float) -> None:
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting += 1
        try:
            await asyncio.sleep(delay)
        finally:
            self._waiting -= 1

    async def metadata(self) -> ModelMetadata:
        """Attribute names, trained attributes and scalar weights from the ensemble config (cached)."""
        if self._metadata is not None:
            return self._metadata
        client = self._grpc()
        if self._metadata_lock is None:
            self._metadata_lock = asyncio.Lock()
        async with self._metadata_lock:
            if self._metadata is None:
                response = await self._call(
                    f"get_model_config({self.model})",
                    lambda: client.get_model_config(self.model, as_json=True, client_timeout=self.timeout),
                )
                self._metadata = ModelMetadata.from_config(response.get("config", response), self.model)
        return self._metadata

    async def ready(self) -> bool:
        client = self._grpc()
        try:
            return bool(await client.is_model_ready(self.model, client_timeout=self.timeout))
        except Exception:
            return False

    def _inputs(self, conversation: Mapping[str, Any] | str | None, text: str | None, truncate: bool) -> list[Any]:
        import tritonclient.grpc.aio as grpcclient

        if (conversation is None) == (text is None):
            raise ValueError("pass exactly one of conversation or text")
        if conversation is not None:
            name = "conversation"
            raw = conversation if isinstance(conversation, str) else json.dumps(conversation, ensure_ascii=False)
        else:
            name, raw = "text", text
        assert raw is not None
        data = np.array([[raw.encode("utf-8")]], dtype=np.object_)
        inputs = [grpcclient.InferInput(name, [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(data)
        if truncate:
            flag = grpcclient.InferInput("truncate", [1, 1], "BOOL")
            flag.set_data_from_numpy(np.array([[True]], dtype=np.bool_))
            inputs.append(flag)
        return inputs

    async def score(
        self, conversation: Mapping[str, Any] | str | None = None, *, text: str | None = None, truncate: bool = False
    ) -> Score:
        """Score one conversation (a dict in OpenAI or NeMo form, or its JSON text) or one templated `text`."""
        meta = await self.metadata()
        inputs = self._inputs(conversation, text, truncate)
        client = self._grpc()
        assert self._semaphore is not None
        async with self._semaphore:
            result = await self._call(
                f"infer({self.model})",
                lambda: client.infer(self.model, inputs, client_timeout=self.timeout),
            )
        score = self._decode(result, meta)
        if self.weights is None:
            return score
        from client.weights import resolve, weighted_reward  # client.weights imports this module

        if self._resolved_weights is None:
            self._resolved_weights = resolve(self.weights, meta)
        return replace(score, reward=weighted_reward(score, meta, self._resolved_weights))

    def _decode(self, result: Any, meta: ModelMetadata) -> Score:
        def output(name: str) -> np.ndarray:
            array = result.as_numpy(name)
            if array is None:
                raise ServerFailure(f"model '{self.model}' returned no '{name}' output")
            return np.asarray(array).reshape(-1)

        values = output("scores")
        if values.size != len(meta.attribute_names):
            raise ServerFailure(
                f"model '{self.model}' returned {values.size} scores for {len(meta.attribute_names)} attribute names"
            )
        return Score(
            scores={n: f32(v) for n, v in zip(meta.attribute_names, values, strict=True)},
            reward=f32(output("reward")[0]),
            num_input_tokens=int(output("num_input_tokens")[0]),
            truncated=bool(output("truncated")[0]),
            trained_attributes=meta.trained_attributes,
        )

    async def score_many(
        self,
        conversations: Iterable[Mapping[str, Any] | str],
        *,
        truncate: bool = False,
        return_exceptions: bool = False,
    ) -> list[Score | Exception]:
        """Score many conversations (at most `concurrency` in flight); results in input order.

        With return_exceptions a RequestRejected/ServerFailure takes the failed item's place; otherwise the first
        error is raised.
        """
        items = list(conversations)
        out: list[Score | Exception | None] = [None] * len(items)
        async for i, result in bounded_map(
            lambda c: self.score(c, truncate=truncate), items, limit=self.concurrency * 2
        ):
            if isinstance(result, Exception) and not return_exceptions:
                raise result
            out[i] = result
        return out  # type: ignore[return-value]


async def bounded_map(
    fn: Callable[[T], Awaitable[R]], items: Iterable[T], *, limit: int
) -> AsyncIterator[tuple[int, R | Exception]]:
    """(index, result or RewardClientError) in completion order, with at most `limit` calls pending.

    Items are drawn from `items` lazily, so an iterator of millions of items is fine. Any other exception
    cancels the pending calls and propagates.
    """
    iterator = iter(enumerate(items))
    pending: dict[asyncio.Task[R], int] = {}

    def fill() -> None:
        while len(pending) < limit:
            try:
                i, item = next(iterator)
            except StopIteration:
                return
            pending[asyncio.ensure_future(fn(item))] = i

    try:
        fill()
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = pending.pop(task)
                error = task.exception()
                if error is not None and not isinstance(error, RewardClientError):
                    raise error
                yield i, (error if error is not None else task.result())  # type: ignore[misc]
            fill()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
