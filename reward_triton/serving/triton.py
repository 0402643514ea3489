"""The Triton side of every python stage: pb_utils requests → numpy inputs → the stage's `run` → responses.

`execute(pb, stage, requests)` is what every model.py calls (`pb` is `triton_python_backend_utils`, passed in, so
everything here is testable without a Triton process): one response per request, each with its own result or its
own error (`reward_triton.errors`), INVALID_ARG for the client's mistakes, INTERNAL for ours, UNAVAILABLE when the
same request may succeed later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from reward_triton import model_config
from reward_triton.serving.results import Failure, Inputs, Stage

log = logging.getLogger("reward_triton")
# The key under which `read_inputs` passes the names of the outputs a request asked for, to a stage that sets
# `reads_requested_outputs` (Triton fills in every output when a request names none).
REQUESTED_OUTPUTS = "requested_output_names"


def parameters(args: dict[str, Any]) -> dict[str, str]:
    """`initialize(args)` → the model config's parameters as {key: string_value}."""
    return model_config.parameters(json.loads(args["model_config"]))


def require(params: dict[str, str], key: str) -> str:
    value = params.get(key, "")
    if not value or value.startswith("${"):
        raise ValueError(f"model config parameter '{key}' is not set (render the repository with `make engine`)")
    return value


def read_inputs(pb: Any, stage: Any, request: Any) -> Inputs:
    """The request's tensors named in `stage.input_names` (None for an absent optional input)."""
    inputs = {}
    for name in stage.input_names:
        tensor = pb.get_input_tensor_by_name(request, name)
        inputs[name] = None if tensor is None else tensor.as_numpy()
    if getattr(stage, "reads_requested_outputs", False):
        inputs[REQUESTED_OUTPUTS] = np.asarray(list(request.requested_output_names()), dtype=object)
    return inputs


def error_response(pb: Any, failure: Failure) -> Any:
    code = pb.TritonError.INVALID_ARG if failure.invalid_request else pb.TritonError.INTERNAL
    if failure.retryable:
        code = getattr(pb.TritonError, "UNAVAILABLE", code)
    return pb.InferenceResponse(error=pb.TritonError(failure.message, code))


def execute(pb: Any, stage: Stage, requests: Sequence[Any]) -> list[Any]:
    """One response per request, each with its own result or its own error (`reward_triton.errors`). Plain loops:
    a request that succeeds goes adapter → stage → adapter without detours."""
    read: list[Inputs | Failure] = []
    batch: list[Inputs] = []
    for request in requests:
        try:
            inputs: Inputs | Failure = read_inputs(pb, stage, request)
            batch.append(inputs)
        except Exception as e:
            inputs = Failure.caught(e)
        read.append(inputs)
    try:
        results = iter(stage.run(batch))
    except Exception as e:  # a stage isolates its requests itself; this is a bug in the stage
        log.exception("stage %s failed on a batch of %d", type(stage).__name__, len(batch))
        results = iter([Failure.of(e)] * len(batch))
    responses = []
    for inputs in read:
        result = inputs if isinstance(inputs, Failure) else next(results)
        if isinstance(result, Failure):
            responses.append(error_response(pb, result))
            continue
        tensors = []
        for name, array in result.items():
            tensors.append(pb.Tensor(name, array))
        responses.append(pb.InferenceResponse(output_tensors=tensors))
    return responses
