"""`POST /pooling` bodies in the shape of vLLM's pooling runner (vllm/entrypoints/pooling/pooling/protocol.py).

Request: `{"model"?, "messages": [...]}` (one conversation, OpenAI form, rendered with this model's template) or
`{"model"?, "input": str | [str, ...]}` (text already in this model's template, one or several). Not vLLM: the
optional `truncate` (conversations only) and `weights` (the `reward` of each item). vLLM's other request fields
(`encoding_format`, `user`, `priority`, `add_special_tokens`, ...) are accepted and ignored; `encoding_format` other
than "float" and token-id inputs are refused.

Response: `{"id": "pool-…", "object": "list", "created", "model", "data": [{"index", "object": "pooling",
"data": [the trained attribute scores], "reward"}], "usage": {"prompt_tokens", "total_tokens",
"completion_tokens": 0}}`; `reward` (the scalar reward) is this server's addition, beside vLLM's fields.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from gateway.openai.protocol import ChatMessage


class PoolingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    input: Any = None  # a string or a list of strings (checked by the serving, which names token-id input)
    encoding_format: StrictStr | None = None
    truncate: StrictBool = False
    weights: Any = None  # checked against the served model by client.weights.resolve


class PoolingResponseData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float]
    reward: float


class UsageInfo(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class PoolingResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"pool-{uuid.uuid4().hex}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo
