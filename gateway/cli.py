"""`reward-openai`: the command line of the HTTP gateway (`gateway.app`).

reward-openai --url TRITON_HOST:8001 [--host 0.0.0.0] [--port 9000] [--served-model-name NAME]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from client.weights import WeightsError
from client.weights import parse_option as parse_weights
from gateway.app import API_KEY_ENV, create_app, log
from gateway.chat_formats import FORMATS
from gateway.config import GatewayConfig

DEFAULT_PORT = 9000


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
