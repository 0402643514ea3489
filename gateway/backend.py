"""The one shared `RewardClient` (one gRPC channel to the ensemble) and the mapping of its errors to HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from client.api import ModelMetadata, RequestRejected, RewardClient, Score, ServerFailure, retryable
from gateway.config import GatewayConfig
from gateway.errors import InternalError, InvalidRequest, Unavailable

log = logging.getLogger("reward_openai")

HEALTH_TIMEOUT = 5.0  # seconds for one readiness probe of the ensemble
RENEW_INTERVAL = 0.5  # at most one new gRPC channel per this many seconds


class Backend:
    """The one shared `RewardClient` (one gRPC channel), renewed after the channel failed.

    gRPC backs reconnection off for up to minutes once a server went away; a fresh channel connects at once, so
    after UNAVAILABLE (or a failed readiness probe) the next request gets a new channel (at most one per
    RENEW_INTERVAL). The old one is closed once requests still on it have had their timeout.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._client: RewardClient | None = None
        self._since = 0.0
        self._retired: dict[asyncio.Task[None], RewardClient] = {}  # old channels, closed after a grace period

    def current(self) -> RewardClient:
        if self._client is None:
            c = self.config
            self._client = RewardClient(
                c.url, model=c.triton_model, concurrency=c.concurrency, timeout=c.timeout, retry=c.retry
            )
            self._since = time.monotonic()
        return self._client

    def renew(self, failed: RewardClient) -> None:
        if failed is not self._client or time.monotonic() - self._since < RENEW_INTERVAL:
            return
        self._client = None
        task = asyncio.ensure_future(self._close_later(failed, self.config.timeout + 1.0))
        self._retired[task] = failed
        task.add_done_callback(lambda t: self._retired.pop(t, None))

    @staticmethod
    async def _close_later(client: RewardClient, delay: float) -> None:
        await asyncio.sleep(delay)
        await client.close()

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        clients = [*self._retired.values(), *([self._client] if self._client is not None else [])]
        self._retired.clear()
        self._client = None
        for client in clients:
            await client.close()

    async def ready(self) -> bool:
        client = self.current()
        try:
            ok = await asyncio.wait_for(client.ready(), HEALTH_TIMEOUT)
        except TimeoutError:
            ok = False
        if not ok:
            self.renew(client)
        return ok

    async def metadata(self) -> ModelMetadata:
        client = self.current()
        try:
            return await client.metadata()
        except ServerFailure as e:
            raise await self._failure(client, e) from None

    async def score(
        self,
        conversation: dict[str, Any] | None,
        truncate: bool,
        *,
        text: str | None = None,
        param: str = "messages",
    ) -> tuple[Score, ModelMetadata]:
        """One conversation (or templated `text`) scored; a rejection is a 400 whose `param` is `param`."""
        client = self.current()
        try:
            meta = await client.metadata()
            return await client.score(conversation, text=text, truncate=truncate), meta
        except RequestRejected as e:
            message = str(e)
            code = "context_length_exceeded" if "maximum input length" in message else "invalid_conversation"
            raise InvalidRequest(message, param=param, code=code) from None
        except ServerFailure as e:
            raise await self._failure(client, e) from None
        except Exception:
            if client is not self._client:  # its channel was renewed (and closed) under this request
                raise Unavailable() from None
            raise

    async def _failure(self, client: RewardClient, e: ServerFailure) -> Unavailable | InternalError:
        # down, restarting (a dead stub the supervisor heals), timed out, or cut off by a channel renewal
        if retryable(e.status, str(e)) or e.status == "StatusCode.CANCELLED":
            log.warning("ensemble unavailable: %s", e)
            if e.status == "StatusCode.UNAVAILABLE":
                self.renew(client)
            return Unavailable()
        if not await self.ready():
            log.warning("ensemble not ready: %s", e)
            return Unavailable()
        log.error("ensemble failed on a request: %s", e)
        return InternalError("the reward model failed on this request")
