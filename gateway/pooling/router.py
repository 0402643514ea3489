"""The `/pooling` route (served at the root, beside `/v1/...`, as vLLM does)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway import body
from gateway.pooling.protocol import PoolingRequest
from gateway.pooling.serving import PoolingServing

router = APIRouter()


@router.post("/pooling")
async def pooling(request: Request) -> JSONResponse:
    state = request.app.state
    serving: PoolingServing = state.pooling
    req = body.parse(await body.read_body(request, state.config.max_body_bytes), PoolingRequest)
    response = await serving(req)
    state.metrics.prompt_tokens += response.usage.prompt_tokens
    return JSONResponse(response.model_dump())
