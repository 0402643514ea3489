"""`reward-openai`'s application: the routes of every protocol, the API key, OpenAI-shaped errors, metrics.

A thin async gateway: FastAPI on uvicorn, one shared `RewardClient` (one `tritonclient.grpc.aio` channel) to the
`ensemble` (`gateway.backend`). Protocols, one package each (`protocol` schemas, `serving`, `router`):
`gateway.openai` (NVIDIA NIM's reward API, docs/openai.md), `gateway.openrlhf` (`POST /get_reward`) and
`gateway.pooling` (vLLM's `POST /pooling`), docs/rl.md. Also `/v1/health/ready` (200 only while the ensemble is
ready), `/v1/health/live` and `/metrics` (Prometheus text).

With `REWARD_API_KEY` set, every `/v1/*`, `/get_reward` and `/pooling` request needs `Authorization: Bearer <key>`
(constant-time compare). Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` (`gateway.errors`):
400 bad body / conversation / over-length, 401 bad key, 404 unknown model or path, 413 body over `--max-body-bytes`,
503 while Triton is unreachable or not ready (a short bounded retry only; the channel is renewed after a failure so
the gateway recovers by itself), 500 only for real server faults.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.backend import Backend
from gateway.config import GatewayConfig
from gateway.errors import ApiError, InternalError, unavailable
from gateway.metrics import Metrics
from gateway.openai.router import router as openai_router
from gateway.openrlhf.router import router as get_reward_router
from gateway.openrlhf.serving import GetRewardServing
from gateway.pooling.router import router as pooling_router
from gateway.pooling.serving import PoolingServing

log = logging.getLogger("reward_openai")

API_KEY_ENV = "REWARD_API_KEY"
# routes outside /v1 that need the API key too (when one is set); /metrics stays open
KEYED_ROOT_PATHS = frozenset({"/get_reward", "/pooling"})


def _authorized(header: str | None, key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class Guard:
    """Pure ASGI middleware: the API key (on /v1/*, /get_reward and /pooling), OpenAI-shaped 500s for unhandled
    errors, request metrics.

    (Starlette's BaseHTTPMiddleware would add a task group and a body relay per request.)
    """

    def __init__(self, app: ASGIApp, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight += 1
        try:
            path: str = scope["path"]
            keyed = path == "/v1" or path.startswith("/v1/") or path in KEYED_ROOT_PATHS
            if self.api_key is not None and keyed:
                header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                if not _authorized(header, self.api_key):
                    message = "invalid or missing API key (Authorization: Bearer <key>)"
                    await ApiError(401, message, code="invalid_api_key").response()(scope, receive, send_status)
                    return
            try:
                await self.app(scope, receive, send_status)
            except Exception:
                log.exception("unhandled error on %s %s", scope.get("method"), path)
                if status:  # the response had started: nothing more can be sent
                    raise
                await InternalError().response()(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.observe(route, scope.get("method", ""), status or 500, time.perf_counter() - start)


def create_app(config: GatewayConfig) -> FastAPI:
    backend = Backend(config)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()

    app = FastAPI(title="reward-openai", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend, app.state.metrics, app.state.config = backend, metrics, config
    app.state.started = int(time.time())
    app.state.get_reward = GetRewardServing(backend, config)
    app.state.pooling = PoolingServing(backend, config)

    app.add_middleware(Guard, api_key=config.api_key, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()

    @app.get("/v1/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"object": "health.response", "message": "live"})

    @app.get("/v1/health/ready")
    async def ready() -> JSONResponse:
        if not await backend.ready():
            raise unavailable(f"the Triton model '{config.triton_model}' at {config.url} is not ready")
        return JSONResponse({"object": "health.response", "message": "ready"})

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(openai_router)
    app.include_router(get_reward_router)
    app.include_router(pooling_router)
    return app
