"""The `/get_reward` route (served at the root, as OpenRLHF's reference server does)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway import body
from gateway.openrlhf.protocol import GetRewardRequest
from gateway.openrlhf.serving import GetRewardServing

router = APIRouter()


@router.post("/get_reward")
async def get_reward(request: Request) -> JSONResponse:
    state = request.app.state
    serving: GetRewardServing = state.get_reward
    req = body.parse(await body.read_body(request, state.config.max_body_bytes), GetRewardRequest)
    response, tokens = await serving(req)
    state.metrics.prompt_tokens += tokens
    return JSONResponse(response.model_dump())
