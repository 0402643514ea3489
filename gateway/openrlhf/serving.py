"""`/get_reward`: parse every query from the policy's chat format, score the rows concurrently, answer row for row.

A row that cannot be parsed, is over-length, or is not a conversation the model scores is a row error:
- `on_error: "fail"` (default): the request gets 400 naming the first bad row in `message` and `param`
  (`query[i]`), every bad row in `error.rows` (`index`, `code`, `message`); nothing is scored in vain.
- `on_error: "flag"`: 200; a bad row gets `invalid_reward` as its reward, `null` attribute scores,
  `valid[i] = false`, its error in `errors`, and `extra_logs.invalid_query[i] = 1.0`.
Failures of the server (503 unavailable, 500 fault) are never a row's: they fail the request in both modes.
"""

from __future__ import annotations

import asyncio

from client.api import Score
from gateway import chat_formats
from gateway.backend import Backend
from gateway.config import GatewayConfig
from gateway.errors import ApiError, InvalidRequest
from gateway.openrlhf.protocol import GetRewardRequest, GetRewardResponse, RowError
from gateway.rewards import RewardMix


class GetRewardServing:
    def __init__(self, backend: Backend, config: GatewayConfig) -> None:
        self.backend = backend
        self.config = config

    async def __call__(self, req: GetRewardRequest) -> tuple[GetRewardResponse, int]:
        """The response and the number of tokens scored."""
        c = self.config
        rows = len(req.query)
        if rows > c.max_rows:
            raise InvalidRequest(
                f"query has {rows} rows, more than this gateway's limit of {c.max_rows} (--max-rows): split the "
                "batch or raise the limit",
                param="query",
                code="too_many_rows",
            )
        fmt = req.chat_format or c.chat_format
        on_error = req.on_error or c.on_error
        truncate = c.truncate if req.truncate is None else req.truncate
        invalid = c.invalid_reward if req.invalid_reward is None else float(req.invalid_reward)
        meta = await self.backend.metadata()
        mix = RewardMix(meta, req.weights if req.weights is not None else c.weights)

        results = await asyncio.gather(
            *(self._row(i, q, fmt, truncate) for i, q in enumerate(req.query)), return_exceptions=True
        )
        for r in results:  # a server failure fails the request whatever on_error says
            if isinstance(r, BaseException):
                raise r
        errors = [r for r in results if isinstance(r, RowError)]
        if errors and on_error == "fail":
            first = errors[0]
            raise InvalidRequest(
                f"{len(errors)} of {rows} queries cannot be scored; query[{first.index}]: {first.message} "
                '(send "on_error": "flag", or start the gateway with --on-error flag, to get per-row flags instead)',
                param=f"query[{first.index}]",
                code=first.code,
                extra={"rows": [e.model_dump() for e in errors]},
            )
        attributes = list(meta.trained_attributes)
        rewards: list[float] = []
        vectors: list[list[float] | None] = []
        valid: list[bool] = []
        tokens = 0
        for r in results:
            if isinstance(r, Score):
                rewards.append(mix.reward(r))
                vectors.append([r.scores[n] for n in attributes])
                valid.append(True)
                tokens += r.num_input_tokens
            else:
                rewards.append(invalid)
                vectors.append(None)
                valid.append(False)
        scores_as = req.scores_as or c.scores_as
        out = GetRewardResponse(
            rewards=rewards,
            scores=list(rewards) if scores_as == "reward" else vectors,
            attribute_scores=vectors,
            attributes=attributes,
            valid=valid,
            errors=errors,
            extra_logs={"invalid_query": [0.0 if v else 1.0 for v in valid]},
        )
        return out, tokens

    async def _row(self, index: int, query: str, fmt: str, truncate: bool) -> Score | RowError:
        """The row's Score, or its own problem as a RowError; server failures are raised."""
        try:
            parsed = chat_formats.parse(query, fmt, self.config.strip_tokens)  # type: ignore[arg-type]
        except chat_formats.ChatFormatError as e:
            return RowError(index=index, code="unparseable_query", message=str(e))
        try:
            score, _ = await self.backend.score(parsed.conversation(), truncate, param=f"query[{index}]")
        except ApiError as e:
            if e.status == 400:  # the ensemble refused this row (its code says why: reward_triton.errors)
                return RowError(index=index, code=e.code, message=e.message)
            raise
        return score
