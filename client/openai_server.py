"""`reward-openai`: the OpenAI-compatible reward API of NVIDIA NIM in front of the Triton ensemble (docs/openai.md).

    reward-openai --url TRITON_HOST:8001 [--host 0.0.0.0] [--port 9000] [--served-model-name NAME]

A thin async gateway: FastAPI on uvicorn, one shared `RewardClient` (one `tritonclient.grpc.aio` channel) to the
`ensemble`. `POST /v1/chat/completions` forwards `messages` unchanged as the ensemble's `conversation` input (the
ensemble validates the conversation) and answers the NIM reward shape: `choices[0].message.content` =
`name:value,...` and one `choices[0].logprobs.content` entry per trained attribute (`reward` alone for a
one-output model), `usage.prompt_tokens` = the ensemble's `num_input_tokens`. Also `GET /v1/models`,
`/v1/health/ready` (200 only while the ensemble is ready), `/v1/health/live`, and `/metrics` (Prometheus text).
OpenRLHF's remote reward model `POST /get_reward` and vLLM's `POST /pooling` come from `client/gateway/`
(docs/rl.md); a request's `weights` replace the checkpoint's scalar weights on every endpoint that returns a reward.

With `REWARD_API_KEY` set, every `/v1/*`, `/get_reward` and `/pooling` request needs `Authorization: Bearer <key>`
(constant-time compare).
Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 bad body / conversation / over-length,
401 bad key, 404 unknown model or path, 413 body over `--max-body-bytes`, 503 while Triton is unreachable or not
ready (a short bounded retry only; the channel is renewed after a failure so the gateway recovers by itself),
500 only for real server faults.
"""

from __future__ import annotations

import argparse
import bisect
import hmac
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client.api import ModelMetadata, Score
from client.conversations import RecordError, format_value
from client.gateway.backend import HEALTH_TIMEOUT, RENEW_INTERVAL, Backend
from client.gateway.body import parse as parse_body
from client.gateway.body import read_body
from client.gateway.chat_formats import FORMATS
from client.gateway.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SERVED_MODEL,
    GATEWAY_RETRY,
    GatewayConfig,
)
from client.gateway.errors import ApiError, InternalError, InvalidRequest, NotFound, unavailable
from client.gateway.openrlhf.router import router as get_reward_router
from client.gateway.openrlhf.serving import GetRewardServing
from client.gateway.pooling.router import router as pooling_router
from client.gateway.pooling.serving import PoolingServing
from client.gateway.rewards import RewardMix
from client.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ModelCard,
    ModelList,
    TokenLogprob,
    Usage,
)
from client.weights import WeightsError
from client.weights import parse_option as parse_weights

log = logging.getLogger("reward_openai")

API_KEY_ENV = "REWARD_API_KEY"
DEFAULT_PORT = 9000
# routes outside /v1 that need the API key too (when one is set); /metrics stays open
KEYED_ROOT_PATHS = frozenset({"/get_reward", "/pooling"})

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_SERVED_MODEL",
    "GATEWAY_RETRY",
    "HEALTH_TIMEOUT",
    "RENEW_INTERVAL",
    "ApiError",
    "Backend",
    "GatewayConfig",
    "create_app",
    "main",
    "unavailable",
]


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
def parse_request(body: bytes) -> ChatCompletionRequest:
    return parse_body(body, ChatCompletionRequest)


def reward_entries(score: Score, meta: ModelMetadata, mix: RewardMix | None = None) -> list[tuple[str, float]]:
    """(name, value) in head order: the trained attributes, or `reward` alone for a one-output model; with
    request weights (`mix`), a last `reward` entry carries their scalar reward."""
    if len(meta.attribute_names) == 1:
        return [("reward", score.reward if mix is None else mix.reward(score))]
    entries = list(score.trained.items())
    if mix is not None:
        entries.append(("reward", mix.reward(score)))
    return entries


def completion(score: Score, meta: ModelMetadata, model: str, mix: RewardMix | None = None) -> ChatCompletion:
    entries = reward_entries(score, meta, mix)
    try:
        content = ",".join(f"{name}:{format_value(value)}" for name, value in entries)
    except RecordError as e:
        raise InternalError(f"the reward model returned an invalid score: {e}") from e
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
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()

    app = FastAPI(title="reward-openai", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend, app.state.metrics, app.state.config = backend, metrics, config
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

    def check_model(name: str) -> None:
        if name != config.served_model_name:
            raise NotFound(
                f"the model '{name}' does not exist; this server serves '{config.served_model_name}'",
                param="model",
                code="model_not_found",
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        req = parse_request(await read_body(request, config.max_body_bytes))
        check_model(req.model)
        if req.n is not None and req.n != 1:
            raise InvalidRequest(f"n must be 1: a reward model gives one score per conversation (got {req.n})", "n")
        if req.stream:
            raise InvalidRequest("stream is not supported: the reward is a single response", param="stream")
        mix = RewardMix(await backend.metadata(), req.weights) if req.weights is not None else None
        score, meta = await backend.score(req.conversation(), req.truncate)
        metrics.prompt_tokens += score.num_input_tokens
        return JSONResponse(completion(score, meta, req.model, mix).model_dump())

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

    app.include_router(get_reward_router)
    app.include_router(pooling_router)
    return app


# ---- command line ---------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    d = GatewayConfig(url="")
    p = argparse.ArgumentParser(
        prog="reward-openai",
        description="OpenAI-compatible reward API (NIM shape) in front of the Triton reward ensemble. "
        f"Also OpenRLHF's POST /get_reward and vLLM's POST /pooling (docs/rl.md). Set {API_KEY_ENV} to require "
        "'Authorization: Bearer <key>' on /v1/*, /get_reward and /pooling.",
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
    g = p.add_argument_group(
        "/get_reward (OpenRLHF)",
        "--chat-format, --on-error, --invalid-reward, --truncate and --scores-as are defaults a request may "
        "override with the fields chat_format, on_error, invalid_reward, truncate and scores_as (docs/rl.md)",
    )
    g.add_argument(
        "--chat-format",
        default=d.chat_format,
        choices=["auto", *FORMATS],
        help="the policy's chat format of every query; auto detects it per query (default: %(default)s)",
    )
    g.add_argument(
        "--strip-token",
        action="append",
        default=[],
        metavar="TEXT",
        help="a policy BOS/EOS/pad text to skip around turns, beside the known ones (repeatable)",
    )
    g.add_argument(
        "--on-error",
        default=d.on_error,
        choices=["fail", "flag"],
        help="a bad row (unparseable, over-length): fail the request with 400, or flag the row and give it "
        "--invalid-reward (default: %(default)s)",
    )
    g.add_argument("--invalid-reward", type=float, default=d.invalid_reward, help="reward of a flagged row (0.0)")
    g.add_argument("--truncate", action="store_true", help="over-long queries drop their oldest exchanges")
    g.add_argument(
        "--scores-as",
        default=d.scores_as,
        choices=["attributes", "reward"],
        help="what /get_reward's `scores` holds: the attribute vectors, or each row's reward as OpenRLHF's own "
        "serve_rm answers (its newer trainers read `scores` as a per-sample scalar) (default: %(default)s)",
    )
    g.add_argument(
        "--max-rows",
        type=int,
        default=d.max_rows,
        help="queries per /get_reward request, texts per /pooling request (default: %(default)s)",
    )
    p.add_argument(
        "--weights",
        help="default scalar weights of /get_reward and /pooling instead of the checkpoint's: one per trained "
        "attribute ('0.3,0.74,0.46,0.47,-0.33'), one per model output, or 'name=w,...' / JSON",
    )
    return p


def config_from_args(a: argparse.Namespace, environ: dict[str, str] | os._Environ[str] = os.environ) -> GatewayConfig:
    key = environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ValueError(f"{API_KEY_ENV} is set but empty: unset it to serve without a key")
    if a.max_body_bytes < 1 or a.concurrency < 1 or a.timeout <= 0 or a.max_rows < 1:
        raise ValueError("--max-body-bytes, --concurrency, --timeout and --max-rows must be positive")
    try:
        weights = None if a.weights is None else parse_weights(a.weights)
    except WeightsError as e:
        raise ValueError(str(e)) from None
    return GatewayConfig(
        url=a.url,
        served_model_name=a.served_model_name,
        triton_model=a.triton_model,
        api_key=key.strip() if key is not None else None,
        max_body_bytes=a.max_body_bytes,
        timeout=a.timeout,
        concurrency=a.concurrency,
        chat_format=a.chat_format,
        strip_tokens=tuple(a.strip_token),
        on_error=a.on_error,
        invalid_reward=a.invalid_reward,
        truncate=a.truncate,
        max_rows=a.max_rows,
        scores_as=a.scores_as,
        weights=weights,
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
