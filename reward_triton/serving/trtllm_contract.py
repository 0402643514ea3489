"""The `tensorrt_llm` model contract: what NVIDIA's C++ `tensorrtllm` backend accepts, written down once.

Both renderings of the `tensorrt_llm` model follow it: `config.tensorrtllm.pbtxt.in` (the C++ backend, GPU) and
`config.torch.pbtxt.in` (the PyTorch stand-in, `reward_triton.engine.stand_in.EngineStage`). The stand-in refuses
what the C++ backend refuses, with the backend's own messages and status, so that what passes on CPU passes in the
container. Every caller of `tensorrt_llm` (the ensemble's step, `reward_model`'s BLS requests, perf data) asks for
`CALLER_OUTPUTS`; `build_engine.repository` checks each rendered config against `check_model_config` before it
writes anything, and the conformance tests check both renderings with it.

`RULES` below lists each rule with the backend source it comes from (tensorrtllm_backend
`inflight_batcher_llm/src/` up to v0.19, NVIDIA/TensorRT-LLM `triton_backend/inflight_batcher_llm/src/` from v0.20);
docs/production.md gives, for each, the line of our config or code that satisfies it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward_triton import model_config
from reward_triton.engine import dtypes
from reward_triton.engine import mapping as parallel
from reward_triton.errors import ServerFault

# ---- the backend's messages (verbatim) ------------------------------------------------------------------------
MISSING_OUTPUT = "{name} tensor must be present in list of output tensors"  # model_instance_state.cc
POPULATING_RESPONSE = "Error encountered while populating response: {detail}"  # model_instance_state.cc
NO_INPUT_IDS = "input_ids or encoder_input_features is not present in the request."  # utils.cc
NO_OUTPUT_LEN = "request_output_len is not present in the request"  # utils.cc
BATCH_NOT_DECOUPLED = (  # utils.cc createRequestsFromInputTensors
    "Batch size > 1 requires the tensorrt_llm backend to be using decoupled transaction policy"
)
MISSING_PARAMETER = "Cannot find parameter with name: {name}"  # model_state.cc GetParameter
BAD_BOOLEAN = "Cannot convert {value} to a boolean."  # model_state.cc GetParameter<bool>
MODEL_PATH_MISSING = "Decoder (GPT) model path at {path} does not exist."  # model_instance_state.cc
EXECUTOR_FAILED = "Executor failed process requestId {request_id} due to the following error: {detail}"


@dataclass(frozen=True)
class Rule:
    key: str
    rule: str
    source: str


RULES: tuple[Rule, ...] = (
    Rule(
        "required_outputs",
        "every response fills output_ids and sequence_length; a request that did not ask for both fails (INTERNAL, "
        "'Error encountered while populating response: output_ids tensor must be present in list of output "
        "tensors'); a request that names no outputs gets all",
        "model_instance_state.cc fillTritonResponse",
    ),
    Rule(
        "request_output_len",
        "request_output_len is required ('request_output_len is not present in the request') and must be >= 1 "
        "(executor Request validation)",
        "utils.cc createRequestsFromInputTensors; executor request.cpp",
    ),
    Rule(
        "batch_one",
        "a request whose batch dimension is > 1 is refused unless the model is decoupled",
        "utils.cc createRequestsFromInputTensors",
    ),
    Rule(
        "parameters",
        "gpt_model_type always, and from v0.19 tokenizer_dir, xgrammar_tokenizer_info_path and "
        "guided_decoding_backend, are read without a default ('Cannot find parameter with name: ...' fails the "
        "load; empty values leave guided decoding off); gpt_model_path must exist; boolean parameters are "
        "true/True/TRUE/1 or false/False/FALSE/0",
        "model_state.cc GetParameter; model_instance_state.cc getGuidedDecodingConfigFromParams, constructor",
    ),
    Rule(
        "exclude_input_in_output",
        "the model parameter exclude_input_in_output (default false) decides whether output_ids carries the "
        "prompt; a request's own exclude_input_in_output input overrides it",
        "model_instance_state.cc constructor; utils.cc createRequestsFromInputTensors",
    ),
    Rule(
        "logits_dtype",
        "the data type declared for the first of generation_logits / context_logits in config.pbtxt must equal "
        "the engine's logits dtype (FP32 or FP16), checked on every response",
        "model_state.cc LoadParameters; model_instance_state.cc fillTritonResponse",
    ),
    Rule(
        "max_input_len",
        "a prompt longer than the engine's build_config.max_input_len fails in the executor (INTERNAL, 'Executor "
        "failed process requestId ...')",
        "executor request validation; model_instance_state.cc (error response)",
    ),
    Rule(
        "logits_requested",
        "generation logits come back only when the request sets return_generation_logits (and asks for the "
        "output); context logits need an engine built with --gather_context_logits",
        "utils.cc getOutputConfigFromTensors; model_instance_state.cc fillTritonResponse",
    ),
    Rule(
        "kv_cache_reuse",
        "enable_kv_cache_reuse needs an engine built with --use_paged_context_fmha enable; enable_chunked_context "
        "off with max_num_tokens < max_input_len leaves long requests unschedulable",
        "model_instance_state.cc getKvCacheConfigFromParams / getExecutorConfigFromParams",
    ),
)

# ---- tensors -------------------------------------------------------------------------------------------------
# The only logits dtypes the backend serves (it checks the declared type against the engine's on every response).
LOGITS_TYPES = {name: dtypes.BY_NAME[name].triton for name in ("float32", "float16")}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False
    scalar: bool = False  # dims [1] reshaped to [] (the backend reads one value per request)


# The inputs our callers send (the C++ backend declares more, all optional; both configs declare these).
INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("input_ids", "TYPE_INT32", (-1,)),
    TensorSpec("input_lengths", "TYPE_INT32", (1,), scalar=True),
    TensorSpec("request_output_len", "TYPE_INT32", (1,), scalar=True),
    TensorSpec("end_id", "TYPE_INT32", (1,), optional=True, scalar=True),
    TensorSpec("pad_id", "TYPE_INT32", (1,), optional=True, scalar=True),
    TensorSpec("return_context_logits", "TYPE_BOOL", (1,), optional=True, scalar=True),
    TensorSpec("return_generation_logits", "TYPE_BOOL", (1,), optional=True, scalar=True),
    TensorSpec("exclude_input_in_output", "TYPE_BOOL", (1,), optional=True, scalar=True),
)
# Outputs every rendering declares; the logits dtype is the engine's (`logits_type`).
OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_ids", "TYPE_INT32", (-1, -1)),
    TensorSpec("sequence_length", "TYPE_INT32", (-1,)),
    TensorSpec("generation_logits", "LOGITS", (-1, -1, -1)),
)
REQUIRED_OUTPUTS = ("output_ids", "sequence_length")
LOGITS_OUTPUTS = ("generation_logits", "context_logits")
# What every caller of `tensorrt_llm` asks for: the two the backend always fills, and the reward position's logits.
CALLER_OUTPUTS = (*REQUIRED_OUTPUTS, "generation_logits")


@dataclass(frozen=True)
class Parameter:
    name: str
    since: str  # the first backend release that reads it without a default
    note: str


REQUIRED_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("gpt_model_type", "0.9", "inflight_fused_batching | inflight_batching | v1"),
    Parameter("gpt_model_path", "0.9", "the engine directory as the server sees it; must exist"),
    Parameter("tokenizer_dir", "0.19", "read for guided decoding; empty leaves it off"),
    Parameter("xgrammar_tokenizer_info_path", "0.19", "empty leaves guided decoding off"),
    Parameter("guided_decoding_backend", "0.19", "empty leaves guided decoding off"),
)
GPT_MODEL_TYPES = ("v1", "inflight_batching", "inflight_fused_batching")
BOOLEAN_PARAMETERS = ("exclude_input_in_output", "enable_kv_cache_reuse", "enable_chunked_context")


class ContractViolation(ServerFault):
    """A request or a config the C++ backend refuses. Like the backend, the server answers INTERNAL."""


def populating_response(detail: str) -> ContractViolation:
    return ContractViolation(POPULATING_RESPONSE.format(detail=detail))


def executor_failed(request_id: int, detail: str) -> ContractViolation:
    return ContractViolation(EXECUTOR_FAILED.format(request_id=request_id, detail=detail))


def parse_bool(value: str) -> bool:
    if value in ("True", "true", "TRUE", "1"):
        return True
    if value in ("False", "false", "FALSE", "0"):
        return False
    raise ContractViolation(BAD_BOOLEAN.format(value=value))


def check_parameters(params: Mapping[str, str], path_exists: bool = True) -> None:
    """Load time: every parameter the backend reads without a default is there, with a value it accepts."""
    for p in REQUIRED_PARAMETERS:
        if p.name not in params:
            raise ContractViolation(MISSING_PARAMETER.format(name=p.name))
    if params["gpt_model_type"] not in GPT_MODEL_TYPES:
        raise ContractViolation(
            f"gpt_model_type must be one of {', '.join(GPT_MODEL_TYPES)}, got {params['gpt_model_type']!r}"
        )
    if path_exists and not Path(params["gpt_model_path"]).exists():
        raise ContractViolation(MODEL_PATH_MISSING.format(path=params["gpt_model_path"]))
    for name in BOOLEAN_PARAMETERS:
        if name in params:
            parse_bool(params[name])


def exclude_input_default(params: Mapping[str, str]) -> bool:
    return parse_bool(params["exclude_input_in_output"]) if "exclude_input_in_output" in params else False


def check_requested_outputs(requested: Collection[str]) -> None:
    """Response time: the outputs the backend fills unconditionally were asked for."""
    for name in REQUIRED_OUTPUTS:
        if name not in requested:
            raise populating_response(MISSING_OUTPUT.format(name=name))


def declared_logits_type(config: Mapping[str, Any]) -> str | None:
    """The data type the backend takes as the logits dtype: the first generation_logits/context_logits output."""
    for output in config.get("output", []):
        if output.get("name") in LOGITS_OUTPUTS:
            return str(output.get("data_type"))
    return None


# ---- the engine as built -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineLimits:
    """What the built engine enforces, from its config.json ({version, pretrained_config, build_config});
    `max_input_len` is the longest prompt that still leaves room for the generated position (max_seq_len - 1)."""

    max_input_len: int
    max_num_tokens: int | None
    logits_dtype: str
    paged_context_fmha: bool
    world_size: int

    @property
    def logits_type(self) -> str:
        try:
            return LOGITS_TYPES[self.logits_dtype]
        except KeyError:
            raise ContractViolation(
                f"engine logits dtype {self.logits_dtype!r}: the backend serves logits only as "
                f"{' or '.join(LOGITS_TYPES)}"
            ) from None

    @classmethod
    def of_engine(cls, engine_dir: str | Path) -> EngineLimits:
        path = Path(engine_dir) / "config.json"
        if not path.is_file():
            raise ContractViolation(f"{path}: missing (not a trtllm-build output directory)")
        config = json.loads(path.read_text())
        build, pretrained = config.get("build_config"), config.get("pretrained_config")
        if not isinstance(build, dict) or not isinstance(pretrained, dict):
            raise ContractViolation(f"{path}: no build_config / pretrained_config (not a trtllm-build engine config)")
        if "max_input_len" not in build:
            raise ContractViolation(f"{path}: build_config has no max_input_len")
        plugins = build.get("plugin_config") or {}
        # The backend never turns generation logits on itself: without them every reward request fails.
        if not build.get("gather_generation_logits", False):
            raise ContractViolation(
                f"{path}: the engine was built without --gather_generation_logits: it returns no generation logits, "
                "which carry the reward (rebuild with python -m build_engine.trtllm_build)"
            )
        for flag in ("paged_kv_cache", "remove_input_padding"):  # what inflight_fused_batching runs on
            if plugins.get(flag) is False:
                raise ContractViolation(f"{path}: the engine was built with {flag} off; in-flight batching needs it")
        max_input = int(build["max_input_len"])
        if build.get("max_seq_len") is not None:  # the prompt and the one generated (reward) position must fit
            max_input = min(max_input, int(build["max_seq_len"]) - 1)
            if max_input < 1:
                raise ContractViolation(f"{path}: build_config max_seq_len {build['max_seq_len']} leaves no prompt")
        try:
            world = parallel.Mapping.of_config(config, str(path)).world_size
        except parallel.MappingError as e:
            raise ContractViolation(str(e)) from None
        return cls(
            max_input_len=max_input,
            max_num_tokens=int(build["max_num_tokens"]) if build.get("max_num_tokens") else None,
            logits_dtype=str(pretrained.get("logits_dtype") or "float32"),
            paged_context_fmha=bool(plugins.get("use_paged_context_fmha", False)),
            world_size=world,
        )

    def check_files(self, engine_dir: str | Path) -> None:
        missing = [r for r in range(self.world_size) if not (Path(engine_dir) / f"rank{r}.engine").is_file()]
        if missing:
            raise ContractViolation(f"{engine_dir}: engine files missing for ranks {missing}")


# ---- a rendered config against the contract ------------------------------------------------------------------
def check_model_config(config: Mapping[str, Any], logits_type: str) -> list[str]:
    """Problems of a rendered `tensorrt_llm` config (as a dict: protobuf's MessageToDict with field names kept)
    against the contract; empty when it conforms."""
    problems: list[str] = []
    declared_in = {t.get("name"): t for t in config.get("input", [])}
    declared_out = {t.get("name"): t for t in config.get("output", [])}
    for spec in INPUTS:
        got = declared_in.get(spec.name)
        if got is None:
            problems.append(f"input {spec.name} is not declared")
            continue
        if got.get("data_type") != spec.data_type or tuple(int(d) for d in got.get("dims", ())) != spec.dims:
            problems.append(
                f"input {spec.name}: {got.get('data_type')} {got.get('dims')}, want {spec.data_type} {list(spec.dims)}"
            )
        if bool(got.get("optional", False)) != spec.optional:
            problems.append(f"input {spec.name}: optional is {bool(got.get('optional', False))}, want {spec.optional}")
        if spec.scalar and ("reshape" not in got or list((got.get("reshape") or {}).get("shape", []))):
            problems.append(f"input {spec.name}: needs reshape {{ shape: [ ] }} (one value per request)")
    if not declared_in.get("input_ids", {}).get("allow_ragged_batch", False):
        problems.append("input input_ids: needs allow_ragged_batch (requests of different lengths share a batch)")
    for spec in OUTPUTS:
        got = declared_out.get(spec.name)
        want_type = logits_type if spec.data_type == "LOGITS" else spec.data_type
        if got is None:
            problems.append(f"output {spec.name} is not declared")
        elif got.get("data_type") != want_type or tuple(int(d) for d in got.get("dims", ())) != spec.dims:
            problems.append(
                f"output {spec.name}: {got.get('data_type')} {got.get('dims')}, want {want_type} {list(spec.dims)}"
            )
    declared_logits = declared_logits_type(config)
    if declared_logits != logits_type:
        problems.append(f"logits declared as {declared_logits}, the engine's logits are {logits_type}")
    for output in config.get("output", []):
        if output.get("name") in LOGITS_OUTPUTS and output.get("data_type") != logits_type:
            problems.append(f"output {output.get('name')} is {output.get('data_type')}, engine logits {logits_type}")
    params = model_config.parameters(config)
    try:
        check_parameters(params, path_exists=False)
    except ContractViolation as e:
        problems.append(str(e))
    if (config.get("model_transaction_policy") or {}).get("decoupled", False):
        problems.append("decoupled: the ensemble and reward_model expect one response per request")
    return problems


def check_caller_outputs(caller: str, requested: Collection[str]) -> list[str]:
    """Problems of a caller (an ensemble step's output_map keys, a BLS request's requested outputs)."""
    return [f"{caller} does not ask for {name}" for name in CALLER_OUTPUTS if name not in requested]
