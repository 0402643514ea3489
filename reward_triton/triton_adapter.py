"""Glue between Triton's python backend (`triton_python_backend_utils`, passed in as `pb`) and `stages`.

Kept apart from the stages so everything but this file is testable without a Triton process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reward_triton.errors import Failure, guarded, log
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


def _inputs(pb: Any, stage: Stage, request: Any) -> Inputs:
    inputs = {}
    for name in stage.input_names:
        tensor = pb.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    return inputs


def error_response(pb: Any, failure: Failure) -> Any:
    code = pb.TritonError.INVALID_ARG if failure.invalid_request else pb.TritonError.INTERNAL
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
