"""The gateway's start options (`reward-openai --help`), shared by every protocol it serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from client.api import DEFAULT_MODEL, RetryPolicy
from client.weights import Weights

DEFAULT_SERVED_MODEL = "reward-model"
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_MAX_ROWS = 4096  # /get_reward queries per request
# a short, bounded retry: a gateway answers 503 quickly and lets its caller decide (OpenAI SDKs retry 503)
GATEWAY_RETRY = RetryPolicy(max_wait=1.0, base_delay=0.05, max_delay=0.2, attempts=2)

OnError = Literal["fail", "flag"]
ScoresAs = Literal["attributes", "reward"]


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
    # /get_reward (OpenRLHF); each also a per-request field of the same name
    chat_format: str = "auto"  # auto | chatml | llama3 | llama2 | gemma | steerlm
    strip_tokens: tuple[str, ...] = ()  # policy BOS/EOS/pad texts tolerated around turns, beside the known ones
    on_error: OnError = "fail"  # a bad row fails the request (400), or is flagged and given `invalid_reward`
    invalid_reward: float = 0.0
    truncate: bool = False  # over-long queries drop their oldest exchanges instead of failing
    max_rows: int = DEFAULT_MAX_ROWS
    # /get_reward `scores`: the attribute vectors (this gateway's contract), or each row's scalar reward as
    # OpenRLHF's own serve_rm answers (its newer trainers read `scores` as a per-sample scalar)
    scores_as: ScoresAs = "attributes"
    # default scalar weights of every endpoint that returns a reward (None: the checkpoint's)
    weights: Weights | None = None
