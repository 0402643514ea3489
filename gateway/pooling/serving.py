"""`/pooling`: one conversation or one or more templated texts → the trained attribute scores of each."""

from __future__ import annotations

import asyncio

from gateway.backend import Backend
from gateway.config import GatewayConfig
from gateway.errors import InvalidRequest, NotFound
from gateway.pooling.protocol import PoolingRequest, PoolingResponse, PoolingResponseData, UsageInfo
from gateway.rewards import RewardMix


class PoolingServing:
    def __init__(self, backend: Backend, config: GatewayConfig) -> None:
        self.backend = backend
        self.config = config

    def _texts(self, req: PoolingRequest) -> list[str]:
        value = req.input
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise InvalidRequest(f"input must be a string or a list of strings, got {type(value).__name__}", "input")
        if not value:
            raise InvalidRequest("input is an empty list: nothing to score", param="input")
        ids = all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(
            isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value
        )
        if ids:
            raise InvalidRequest(
                "token-id input is not supported: send text (a string or a list of strings) already in this "
                "model's template, or 'messages'",
                param="input",
            )
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise InvalidRequest(f"input[{i}] must be a string, got {type(v).__name__}", param="input")
        if len(value) > self.config.max_rows:
            raise InvalidRequest(
                f"input has {len(value)} items, more than this gateway's limit of {self.config.max_rows} (--max-rows)",
                param="input",
                code="too_many_rows",
            )
        return [str(v) for v in value]

    async def __call__(self, req: PoolingRequest) -> PoolingResponse:
        c = self.config
        model = c.served_model_name if req.model is None else req.model
        if model != c.served_model_name:
            raise NotFound(
                f"the model '{model}' does not exist; this server serves '{c.served_model_name}'",
                param="model",
                code="model_not_found",
            )
        if (req.messages is None) == (req.input is None):
            raise InvalidRequest("send exactly one of 'messages' (a conversation) and 'input' (templated text)")
        if req.encoding_format not in (None, "float"):
            raise InvalidRequest(
                f"encoding_format {req.encoding_format!r} is not supported (use 'float')", param="encoding_format"
            )
        if req.input is not None and req.truncate:
            raise InvalidRequest("truncate applies to 'messages' only (templated text has no turns to drop)")
        texts = self._texts(req) if req.input is not None else []
        meta = await self.backend.metadata()
        mix = RewardMix(meta, req.weights if req.weights is not None else c.weights)
        if req.messages is not None:
            conversation = {"messages": [m.for_ensemble() for m in req.messages]}
            scores = [(await self.backend.score(conversation, req.truncate))[0]]
        else:
            results = await asyncio.gather(
                *(
                    self.backend.score(None, False, text=t, param=f"input[{i}]" if len(texts) > 1 else "input")
                    for i, t in enumerate(texts)
                ),
                return_exceptions=True,
            )
            for r in results:  # the first error in input order (vLLM fails the whole request too)
                if isinstance(r, BaseException):
                    raise r
            scores = [s for s, _ in results]  # type: ignore[misc]
        names = meta.trained_attributes
        data = [
            PoolingResponseData(index=i, data=[s.scores[n] for n in names], reward=mix.reward(s))
            for i, s in enumerate(scores)
        ]
        tokens = sum(s.num_input_tokens for s in scores)
        return PoolingResponse(model=model, data=data, usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens))
