"""The NIM routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{name}`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.body import read_body
from gateway.errors import InvalidRequest, NotFound
from gateway.openai.protocol import ModelCard, ModelList
from gateway.openai.serving import completion, parse_request
from gateway.rewards import RewardMix

router = APIRouter()


def check_model(request: Request, name: str) -> None:
    served = request.app.state.config.served_model_name
    if name != served:
        raise NotFound(
            f"the model '{name}' does not exist; this server serves '{served}'", param="model", code="model_not_found"
        )


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> JSONResponse:
    state = request.app.state
    req = parse_request(await read_body(request, state.config.max_body_bytes))
    check_model(request, req.model)
    if req.n is not None and req.n != 1:
        raise InvalidRequest(f"n must be 1: a reward model gives one score per conversation (got {req.n})", "n")
    if req.stream:
        raise InvalidRequest("stream is not supported: the reward is a single response", param="stream")
    mix = RewardMix(await state.backend.metadata(), req.weights) if req.weights is not None else None
    score, meta = await state.backend.score(req.conversation(), req.truncate)
    state.metrics.prompt_tokens += score.num_input_tokens
    return JSONResponse(completion(score, meta, req.model, mix).model_dump())


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    state = request.app.state
    card = ModelCard(id=state.config.served_model_name, created=state.started)
    return JSONResponse(ModelList(data=[card]).model_dump())


@router.get("/v1/models/{name:path}")
async def model(request: Request, name: str) -> JSONResponse:
    check_model(request, name)
    return JSONResponse(ModelCard(id=name, created=request.app.state.started).model_dump())
