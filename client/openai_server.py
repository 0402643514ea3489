"""`reward-openai`: the OpenAI-compatible reward API of NVIDIA NIM in front of the Triton ensemble (docs/openai.md).

    reward-openai --url TRITON_HOST:8001 [--host 0.0.0.0] [--port 9000] [--served-model-name NAME]

A thin async gateway: FastAPI on uvicorn, one shared `RewardClient` (one `tritonclient.grpc.aio` channel) to the
`ensemble`. `POST /v1/chat/completions` forwards `messages` unchanged as the ensemble's `conversation` input (the
ensemble validates the conversation) and answers the NIM reward shape: `choices[0].message.content` =
`name:value,...` and one `choices[0].logprobs.content` entry per trained attribute (`reward` alone for a
one-output model), `usage.prompt_tokens` = the ensemble's `num_input_tokens`. Also `GET /v1/models`,
`/v1/health/ready` (200 only while the ensemble is ready), `/v1/health/live`, and `/metrics` (Prometheus text).

With `REWARD_API_KEY` set, every `/v1/*` request needs `Authorization: Bearer <key>` (constant-time compare).
Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 bad body / conversation / over-length,
401 bad key, 404 unknown model or path, 413 body over `--max-body-bytes`, 503 while Triton is unreachable or not
ready (a short bounded retry only; the channel is renewed after a failure so the gateway recovers by itself),
500 only for real server faults.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hmac
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client.api import (
    DEFAULT_MODEL,
    ModelMetadata,
    RequestRejected,
    RetryPolicy,
    RewardClient,
    Score,
    ServerFailure,
    retryable,
)
from client.conversations import RecordError, format_value
from client.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelList,
    TokenLogprob,
    Usage,
)

log = logging.getLogger("reward_openai")

API_KEY_ENV = "REWARD_API_KEY"
DEFAULT_SERVED_MODEL = "reward-model"
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_PORT = 9000
HEALTH_TIMEOUT = 5.0  # seconds for one readiness probe of the ensemble
RENEW_INTERVAL = 0.5  # at most one new gRPC channel per this many seconds
# a short, bounded retry: a gateway answers 503 quickly and lets its caller decide (OpenAI SDKs retry 503)
GATEWAY_RETRY = RetryPolicy(max_wait=1.0, base_delay=0.05, max_delay=0.2, attempts=2)


@dataclass(frozen=True)
class GatewayConfig:
    url: str
    served_model_name: str = DEFAULT_SERVED_MODEL
    triton_model: str = DEFAULT_MODEL
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout: float = 60.0  # seconds per ensemble request
    concurrency: int = 64  # ensemble requests in flight
    retry: RetryPolicy = field(default_factory=lambda: GATEWAY_RETRY)


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
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def unavailable(
    message: str = "the reward model is not available (Triton unreachable or not ready); retry later",
) -> ApiError:
    return ApiError(503, message, type="server_error", code="service_unavailable", headers={"Retry-After": "1"})


# ---- the shared Triton channel --------------------------------------------------------------------------------
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

    async def score(self, conversation: dict[str, Any], truncate: bool) -> tuple[Score, ModelMetadata]:
        client = self.current()
        try:
            meta = await client.metadata()
            return await client.score(conversation, truncate=truncate), meta
        except RequestRejected as e:
            message = str(e)
            code = "context_length_exceeded" if "maximum input length" in message else "invalid_conversation"
            raise ApiError(400, message, param="messages", code=code) from None
        except ServerFailure as e:
            # down, restarting (a dead stub the supervisor heals), timed out, or cut off by a channel renewal
            if retryable(e.status, str(e)) or e.status == "StatusCode.CANCELLED":
                log.warning("ensemble unavailable: %s", e)
                if e.status == "StatusCode.UNAVAILABLE":
                    self.renew(client)
                raise unavailable() from None
            if not await self.ready():
                log.warning("ensemble not ready: %s", e)
                raise unavailable() from None
            log.error("ensemble failed on a request: %s", e)
            raise ApiError(
                500, "the reward model failed on this request", type="server_error", code="internal_error"
            ) from None
        except Exception:
            if client is not self._client:  # its channel was renewed (and closed) under this request
                raise unavailable() from None
            raise


# ---- metrics (Prometheus text format) -------------------------------------------------------------------------
class Metrics:
    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency: dict[str, list[float]] = {}  # route -> per-bucket counts (+Inf last), then sum
        self.prompt_tokens = 0
        self.in_flight = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        row = self.latency.setdefault(route, [0.0] * (len(self.BUCKETS) + 2))
        row[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        row[-1] += seconds

    def render(self) -> str:
        out = [
            "# HELP reward_openai_requests_total HTTP requests by route, method and status.",
            "# TYPE reward_openai_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            out.append(f'reward_openai_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}')
        out += [
            "# HELP reward_openai_request_duration_seconds HTTP request latency by route.",
            "# TYPE reward_openai_request_duration_seconds histogram",
        ]
        for route, row in sorted(self.latency.items()):
            cumulative = 0.0
            for bound, n in zip([*map(str, self.BUCKETS), "+Inf"], row[:-1], strict=True):
                cumulative += n
                out.append(
                    f'reward_openai_request_duration_seconds_bucket{{route="{route}",le="{bound}"}} {cumulative:g}'
                )
            out.append(f'reward_openai_request_duration_seconds_sum{{route="{route}"}} {row[-1]:.6f}')
            out.append(f'reward_openai_request_duration_seconds_count{{route="{route}"}} {cumulative:g}')
        out += [
            "# HELP reward_openai_prompt_tokens_total Tokens scored by the ensemble.",
            "# TYPE reward_openai_prompt_tokens_total counter",
            f"reward_openai_prompt_tokens_total {self.prompt_tokens}",
            "# HELP reward_openai_requests_in_flight HTTP requests being served.",
            "# TYPE reward_openai_requests_in_flight gauge",
            f"reward_openai_requests_in_flight {self.in_flight}",
        ]
        return "\n".join(out) + "\n"


# ---- request handling -----------------------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 when Content-Length or the bytes actually streamed exceed `limit`."""
    too_large = ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {length!r}") from None
        if declared > limit:
            raise too_large
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _where(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ContentPart]"):  # union branch names pydantic adds
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def parse_request(body: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(body)
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in errors[:4])
        more = f" (and {len(errors) - 4} more)" if len(errors) > 4 else ""
        param = _where(errors[0]["loc"]).split(".")[0].split("[")[0] if errors else None
        raise ApiError(400, f"invalid request: {problems}{more}", param=param) from None


def reward_entries(score: Score, meta: ModelMetadata) -> list[tuple[str, float]]:
    """(name, value) in head order: the trained attributes, or `reward` alone for a one-output model."""
    if len(meta.attribute_names) == 1:
        return [("reward", score.reward)]
    return list(score.trained.items())


def completion(score: Score, meta: ModelMetadata, model: str) -> ChatCompletion:
    entries = reward_entries(score, meta)
    try:
        content = ",".join(f"{name}:{format_value(value)}" for name, value in entries)
    except RecordError as e:
        raise ApiError(
            500, f"the reward model returned an invalid score: {e}", "server_error", None, "internal_error"
        ) from e
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(content=content),
                logprobs=ChoiceLogprobs(content=[TokenLogprob(token=n, logprob=v) for n, v in entries]),
            )
        ],
        usage=Usage(prompt_tokens=score.num_input_tokens, total_tokens=score.num_input_tokens),
    )


def _authorized(header: str | None, key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class Guard:
    """Pure ASGI middleware: the API key on /v1/*, OpenAI-shaped 500s for unhandled errors, request metrics.

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
            if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")):
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
                error = ApiError(500, "internal server error", type="server_error", code="internal_error")
                await error.response()(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.observe(route, scope.get("method", ""), status or 500, time.perf_counter() - start)


def create_app(config: GatewayConfig) -> FastAPI:
    backend = Backend(config)
    metrics = Metrics()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()

    app = FastAPI(title="reward-openai", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend, app.state.metrics, app.state.config = backend, metrics, config

    app.add_middleware(Guard, api_key=config.api_key, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()

    def check_model(name: str) -> None:
        if name != config.served_model_name:
            raise ApiError(
                404,
                f"the model '{name}' does not exist; this server serves '{config.served_model_name}'",
                param="model",
                code="model_not_found",
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        req = parse_request(await read_body(request, config.max_body_bytes))
        check_model(req.model)
        if req.n is not None and req.n != 1:
            raise ApiError(
                400, f"n must be 1: a reward model gives one score per conversation (got {req.n})", param="n"
            )
        if req.stream:
            raise ApiError(400, "stream is not supported: the reward is a single response", param="stream")
        score, meta = await backend.score(req.conversation(), req.truncate)
        metrics.prompt_tokens += score.num_input_tokens
        return JSONResponse(completion(score, meta, req.model).model_dump())

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(ModelList(data=[ModelCard(id=config.served_model_name, created=started)]).model_dump())

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> JSONResponse:
        check_model(name)
        return JSONResponse(ModelCard(id=name, created=started).model_dump())

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

    return app


# ---- command line ---------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    d = GatewayConfig(url="")
    p = argparse.ArgumentParser(
        prog="reward-openai",
        description="OpenAI-compatible reward API (NIM shape) in front of the Triton reward ensemble. "
        f"Set {API_KEY_ENV} to require 'Authorization: Bearer <key>' on /v1/*.",
    )
    p.add_argument("--url", required=True, help="Triton gRPC endpoint HOST:PORT (e.g. localhost:8001)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--served-model-name", default=d.served_model_name, help="model id clients send (default: %(default)s)"
    )
    p.add_argument("--triton-model", default=d.triton_model, help="Triton model to call (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="413 above this (default: 4 MiB)")
    p.add_argument(
        "--timeout", type=float, default=d.timeout, help="seconds per ensemble request (default: %(default)s)"
    )
    p.add_argument(
        "--concurrency", type=int, default=d.concurrency, help="ensemble requests in flight (default: %(default)s)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def config_from_args(a: argparse.Namespace, environ: dict[str, str] | os._Environ[str] = os.environ) -> GatewayConfig:
    key = environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ValueError(f"{API_KEY_ENV} is set but empty: unset it to serve without a key")
    if a.max_body_bytes < 1 or a.concurrency < 1 or a.timeout <= 0:
        raise ValueError("--max-body-bytes, --concurrency and --timeout must be positive")
    return GatewayConfig(
        url=a.url,
        served_model_name=a.served_model_name,
        triton_model=a.triton_model,
        api_key=key.strip() if key is not None else None,
        max_body_bytes=a.max_body_bytes,
        timeout=a.timeout,
        concurrency=a.concurrency,
    )


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    a = parser().parse_args(argv)
    try:
        config = config_from_args(a)
    except ValueError as e:
        print(f"reward-openai: {e}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info(
        "serving '%s' (Triton model '%s' at %s) on %s:%d; API key %s",
        config.served_model_name,
        config.triton_model,
        config.url,
        a.host,
        a.port,
        "required" if config.api_key else "not required",
    )
    # loop="asyncio": grpc.aio under uvloop measured 1.5x slower here (its poller does not integrate with uvloop)
    uvicorn.run(
        create_app(config), host=a.host, port=a.port, log_level=a.log_level, loop="asyncio", timeout_graceful_shutdown=5
    )


if __name__ == "__main__":
    main()
