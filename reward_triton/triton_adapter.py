"""Glue between Triton's python backend (`triton_python_backend_utils`, passed in as `pb`) and `stages`.

Kept apart from the stages so everything but this file is testable without a Triton process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from reward_triton.errors import Failure, guarded, log
from reward_triton.reward_model import ENGINE_MODEL, ENGINE_OUTPUT, RewardModelStage, Rows
from reward_triton.stages import Inputs, Stage


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """`initialize(args)` → the model config's parameters as {key: string_value}."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def require(params: dict[str, str], key: str) -> str:
    value = params.get(key, "")
    if not value or value.startswith("${"):
        raise ValueError(f"model config parameter '{key}' is not set (render the repository with `make engine`)")
    return value


def _inputs(pb: Any, stage: Stage | RewardModelStage, request: Any) -> Inputs:
    inputs = {}
    for name in stage.input_names:
        tensor = pb.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    return inputs


def error_response(pb: Any, failure: Failure) -> Any:
    code = pb.TritonError.INVALID_ARG if failure.invalid_request else pb.TritonError.INTERNAL
    if failure.retryable:
        code = getattr(pb.TritonError, "UNAVAILABLE", code)
    return pb.InferenceResponse(error=pb.TritonError(failure.message, code))


def execute(pb: Any, stage: Stage, requests: Sequence[Any]) -> list[Any]:
    """One response per request, each with its own result or its own error (`reward_triton.errors`)."""
    read = [guarded(lambda r=r: _inputs(pb, stage, r)) for r in requests]
    batch = [inputs for inputs in read if not isinstance(inputs, Failure)]
    try:
        results = iter(stage.run(batch))
    except Exception as e:  # a stage isolates its requests itself; this is a bug in the stage
        log.exception("stage %s failed on a batch of %d", type(stage).__name__, len(batch))
        failure = Failure.of(e)
        results = iter([failure] * len(batch))
    responses = []
    for inputs in read:
        result = inputs if isinstance(inputs, Failure) else next(results)
        if isinstance(result, Failure):
            responses.append(error_response(pb, result))
        else:
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in result.items()]))
    return responses


# ---- fan-out (BLS): one request of B rows → B concurrent engine requests ------------------------------------------
MAX_ROWS_IN_FLIGHT = 256  # per execute(): bounds the engine responses (full-vocab logits) held in shared memory


def _engine_failure(pb: Any, response: Any, row: int) -> Failure | None:
    """The engine's answer for one row as a Failure, None when it succeeded. The engine's INVALID_ARG and
    UNAVAILABLE (e.g. its queue is full) keep their kind; anything else is INTERNAL."""
    if not response.has_error():
        return None
    error = response.error()
    code = error.code() if hasattr(error, "code") else None
    invalid = code is not None and code == pb.TritonError.INVALID_ARG
    unavailable = code is not None and code == getattr(pb.TritonError, "UNAVAILABLE", object())
    return Failure(f"row {row}: {error.message()}", invalid, retryable=unavailable)


async def execute_fanout(pb: Any, stage: RewardModelStage, requests: Sequence[Any]) -> list[Any]:
    """`reward_model`: validate each request's rows (`stage.rows`), send the rows of every request to the engine
    concurrently (`async_exec`, at most MAX_ROWS_IN_FLIGHT at a time), reduce each answer to its scores as it
    arrives, and build each request's outputs (`stage.finish`). A request with a bad row is rejected whole; an engine
    failure fails only the request whose row it was."""
    slots = asyncio.Semaphore(MAX_ROWS_IN_FLIGHT)

    async def score(rows: Rows, i: int) -> Any:
        async with slots:
            tensors = [pb.Tensor(name, array) for name, array in rows.engine_inputs(i).items()]
            request = pb.InferenceRequest(
                model_name=ENGINE_MODEL, inputs=tensors, requested_output_names=[ENGINE_OUTPUT]
            )
            response = await request.async_exec()
            failure = _engine_failure(pb, response, i)
            if failure is not None:
                return failure
            return stage.head.scores_of(pb.get_output_tensor_by_name(response, ENGINE_OUTPUT).as_numpy())

    async def one(rows: Rows | Failure) -> Any:
        if isinstance(rows, Failure):
            return error_response(pb, rows)
        answers = await asyncio.gather(*(score(rows, i) for i in range(len(rows.sequences))), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                return error_response(pb, Failure.of(answer))
            if isinstance(answer, Failure):
                return error_response(pb, answer)
        result = guarded(lambda: stage.finish(rows, answers))
        if isinstance(result, Failure):
            return error_response(pb, result)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in result.items()])

    prepared = [guarded(lambda r=r: stage.rows(_inputs(pb, stage, r))) for r in requests]
    return list(await asyncio.gather(*(one(rows) for rows in prepared)))
