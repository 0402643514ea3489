"""`POST /get_reward` bodies, as OpenRLHF's trainer sends them (`--remote_rm_url http://HOST:PORT/get_reward`).

Request: `{"query": [str, ...], "prompts"?: [str, ...], "labels"?: [...]}`; each query is a whole decoded sequence
(prompt + response) in the policy's chat format. `prompts` and `labels` are accepted and not used (the query holds
the whole conversation). Optional fields beyond OpenRLHF's (each defaults to the gateway's start option of the
same name): `chat_format`, `on_error`, `invalid_reward`, `truncate`, `weights`, `scores_as`.

Response, row for row: `rewards` (the scalar reward), `attribute_scores` (the model's trained attribute scores,
names in `attributes`), `scores` (the same vectors; with `scores_as: "reward"` the rewards again, as OpenRLHF's own
serve_rm answers), `valid` and `errors` (rows flagged under `on_error: "flag"`), `extra_logs` (per-row values
OpenRLHF logs: `invalid_query` 1.0 where a row was flagged).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

from reward_triton.errors import ErrorCode

ChatFormatOption = Literal["auto", "chatml", "llama3", "llama2", "gemma", "steerlm"]
OnErrorOption = Literal["fail", "flag"]


class GetRewardRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # other trainer fields are accepted and ignored

    query: list[StrictStr]
    prompts: list[Any] | None = None
    labels: Any = None
    chat_format: ChatFormatOption | None = None
    on_error: OnErrorOption | None = None
    invalid_reward: StrictFloat | StrictInt | None = None
    truncate: StrictBool | None = None
    weights: Any = None  # checked against the served model by client.weights.resolve
    scores_as: Literal["attributes", "reward"] | None = None


class RowError(BaseModel):
    index: int  # the row in `query`
    # unparseable_query (the policy's chat format), or the ensemble's code (reward_triton.errors.ErrorCode)
    code: ErrorCode | Literal["unparseable_query"]
    message: str


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[list[float] | None] | list[float]  # attribute vectors (None for a flagged row), or = rewards
    attribute_scores: list[list[float] | None]
    attributes: list[str]
    valid: list[bool]
    errors: list[RowError]
    extra_logs: dict[str, list[float]]
