"""Render the Triton model repository: every `config.pbtxt` from the templates kept beside it.

Templates are `model_repository/<model>/config.pbtxt.in`, or `config.<backend>.pbtxt.in` where the model has one
per engine backend (`tensorrt_llm`: torch | tensorrtllm). Placeholders are `${var}` as upstream's
tensorrtllm_backend templates; values come from the converter's metadata (RewardMetadata, never duplicated here)
and the render options. Every rendered config carries the directory the stages read from (checkpoint or engine
dir) and is checked against Triton's schema (tritonclient's model_config_pb2) before it is written.

CLI: `python -m build_engine render-repository --checkpoint DIR [--backend torch|tensorrtllm] ...`
(also `python -m build_engine.repository ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from reward_triton.engine import dtypes
from reward_triton.engine.prefix_cache import DEFAULT_BUDGET_BYTES
from reward_triton.metadata import MetadataError, RewardMetadata
from reward_triton.serving import trtllm_contract as contract
from reward_triton.serving.preprocess import DEFAULT_MAX_REQUEST_BYTES
from reward_triton.serving.reward_model import DEFAULT_MAX_ROWS
from reward_triton.serving.trtllm_contract import ContractViolation, EngineLimits

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "model_repository"
MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "reward_model")
BACKENDS = ("torch", "tensorrtllm")
CONFIG = "config.pbtxt"
TORCH_DTYPES = ("auto", *dtypes.NAMES)


class RepositoryError(ValueError):
    """A template or option problem; the message names the file and the placeholder or option."""


@dataclass(frozen=True)
class RenderOptions:
    backend: str = "torch"
    max_batch_size: int = 64
    max_queue_delay_us: int = 1000
    preprocessing_instances: int = 1
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    reward_model_max_rows: int = (
        DEFAULT_MAX_ROWS  # rows per `reward_model` request (NeMo-Aligner: a whole rollout batch)
    )
    reward_model_instances: int = 2  # requests fanned out side by side (e.g. several data-parallel trainer ranks)
    # Compute dtype of the PyTorch engine. "auto": the checkpoint's own dtype (config.json `dtype`): a bf16
    # checkpoint computes bf16 GEMMs/attention with fp32 norm statistics and an fp32 head (TensorRT-LLM runs the
    # head in bf16 and casts its logits to fp32, so engine rewards carry bf16 rounding of the head).
    torch_dtype: str = "auto"
    torch_device: str = "cpu"
    # Intra-op threads of the PyTorch engine. None ("auto"): measured at render time on this machine with this
    # checkpoint (`resolve_torch_options`); 0 = torch's default (all cores); N = exactly N.
    torch_threads: int | None = None
    # One forward per sequence: scores independent of batching (bit-reproducible reruns), at a throughput cost.
    torch_batch_invariant: bool = False
    # Bytes of key/value blocks the PyTorch engine keeps for requests sharing a prefix (later turns of a
    # conversation, candidates of one prompt); 0 turns the prefix cache off.
    torch_prefix_cache_bytes: int = DEFAULT_BUDGET_BYTES
    kv_cache_free_gpu_mem_fraction: float = 0.9
    # TensorRT-LLM block reuse across requests (turn prefixes, a prompt's candidates); needs an engine built with
    # paged context FMHA (build_engine.trtllm_build's default).
    kv_cache_reuse: bool = True
    # Chunked context: None = on exactly when the engine's max_num_tokens < max_input_len (a long prompt then
    # spans several iterations), which also needs paged context FMHA.
    chunked_context: bool | None = None
    # The engine directory as the serving container sees it (written into every config); default: its path here.
    engine_dir_in_container: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RepositoryError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_batch_size < 1:
            raise RepositoryError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.reward_model_max_rows < 1 or self.reward_model_instances < 1:
            raise RepositoryError(
                "reward_model_max_rows and reward_model_instances must be positive, got "
                f"{self.reward_model_max_rows} and {self.reward_model_instances}"
            )
        if self.torch_prefix_cache_bytes < 0:
            raise RepositoryError(f"torch_prefix_cache_bytes must be >= 0, got {self.torch_prefix_cache_bytes}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise RepositoryError(f"torch_dtype must be one of {', '.join(TORCH_DTYPES)}, got {self.torch_dtype!r}")


# Larger checkpoints are not loaded just to time threads (the CPU engine serves small models; see resolve_*).
MEASURE_THREADS_MAX_BYTES = 4 << 30


def resolve_torch_options(
    checkpoint: str | os.PathLike[str], options: RenderOptions, log: Callable[[str], None] | None = None
) -> RenderOptions:
    """Fill the automatic PyTorch-engine choices for this checkpoint on this machine.

    - torch_dtype "auto" → the checkpoint's dtype (config.json `dtype`; float32 when absent).
    - torch_threads None → `tooling.bench_engine.measure_threads`: the engine scores a typical served batch
      with 1, 2, 4, ... threads (up to the cores this process may use), best of 3 interleaved runs, and more
      threads are taken only when ≥ 15 % faster. Without weights to time (a metadata-only directory, a device
      other than cpu, or rank files over 4 GiB) it is 1: idle OpenMP threads that spin while other processes
      hold a small machine's cores cost more than they give.
    """
    from reward_triton.engine.model import checkpoint_dtype

    checkpoint = Path(checkpoint)
    if options.torch_dtype == "auto":
        options = replace(options, torch_dtype=checkpoint_dtype(checkpoint))
    if options.torch_threads is None:
        ranks = sorted(checkpoint.glob("rank*.safetensors"))
        size = sum(r.stat().st_size for r in ranks)
        if options.torch_device != "cpu" or not ranks or size > MEASURE_THREADS_MAX_BYTES:
            threads = 1
        else:
            from tooling.bench_engine import measure_threads

            threads, _ = measure_threads(checkpoint, options.torch_dtype, log=log)
        options = replace(options, torch_threads=threads)
    return options


def pbtxt_string(value: str) -> str:
    """Escape text for the inside of a double-quoted protobuf text-format string."""
    out = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def template_file(model_dir: Path, backend: str) -> Path:
    specific = model_dir / f"config.{backend}.pbtxt.in"
    generic = model_dir / "config.pbtxt.in"
    if specific.is_file():
        return specific
    if generic.is_file():
        return generic
    raise RepositoryError(f"{model_dir}: no config template (config.pbtxt.in or config.{backend}.pbtxt.in)")


@dataclass(frozen=True)
class Served:
    """What the stages are told about the engine: where they read it (as the server sees the path) and the limits
    every stage enforces (the BUILT engine's, for backend tensorrtllm)."""

    directory: str  # the engine (or checkpoint) directory as the server sees it: gpt_model_path and every model_dir
    max_input_len: int
    logits_type: str
    kv_cache_reuse: bool = False
    chunked_context: bool = False


def variables(meta: RewardMetadata, served: Served, options: RenderOptions) -> dict[str, str]:
    def js(value: object) -> str:
        return pbtxt_string(json.dumps(value))

    return {
        "max_batch_size": str(options.max_batch_size),
        "max_queue_delay_us": str(options.max_queue_delay_us),
        "preprocessing_instances": str(options.preprocessing_instances),
        "max_request_bytes": str(options.max_request_bytes),
        "reward_model_max_rows": str(options.reward_model_max_rows),
        "reward_model_instances": str(options.reward_model_instances),
        "model_dir": pbtxt_string(served.directory),
        "engine_dir": pbtxt_string(served.directory),
        "torch_dtype": options.torch_dtype,
        "torch_device": options.torch_device,
        "torch_threads": str(1 if options.torch_threads is None else options.torch_threads),
        "torch_batch_invariant": "true" if options.torch_batch_invariant else "false",
        "torch_prefix_cache_bytes": str(options.torch_prefix_cache_bytes),
        "kv_cache_free_gpu_mem_fraction": str(options.kv_cache_free_gpu_mem_fraction),
        "enable_kv_cache_reuse": "true" if served.kv_cache_reuse else "false",
        "enable_chunked_context": "true" if served.chunked_context else "false",
        "logits_datatype": served.logits_type,
        "num_attributes": str(meta.num_attributes),
        "attribute_names": js(list(meta.attribute_names)),
        "trained_attributes": js(list(meta.trained_attributes)),
        "scalar_weights": js(list(meta.scalar_weights)),
        "max_input_len": str(served.max_input_len),
        "model_family": pbtxt_string(meta.model_family),
    }


def serve_engine(engine: Path, options: RenderOptions) -> Served:
    """Backend tensorrtllm: check the built engine (config.json, one rank file per rank, what the backend needs of
    it) and decide KV reuse and chunked context from how it was built. Every problem is a RepositoryError now, on
    this machine, not a load failure in the container. (The metadata and tokenizer go next to the engine, with the
    engine's max_input_len, once every config has been checked.)"""
    try:
        limits = EngineLimits.of_engine(engine)
        limits.check_files(engine)
        logits_type = limits.logits_type
    except ContractViolation as e:
        raise RepositoryError(f"{e} (build it first: python -m build_engine.trtllm_build)") from None
    fits = limits.max_num_tokens is None or limits.max_num_tokens >= limits.max_input_len
    chunked = (not fits) if options.chunked_context is None else options.chunked_context
    if not fits and not chunked:
        raise RepositoryError(
            f"{engine}: max_num_tokens {limits.max_num_tokens} < max_input_len {limits.max_input_len} with chunked "
            "context off: a long prompt could never be scheduled (leave chunked context on, or rebuild with "
            "--max-num-tokens >= max_input_len)"
        )
    if (chunked or options.kv_cache_reuse) and not limits.paged_context_fmha:
        wanted = "KV cache reuse" if options.kv_cache_reuse else "chunked context"
        raise RepositoryError(
            f"{engine}: {wanted} needs an engine built with --use_paged_context_fmha enable (rebuild with "
            "python -m build_engine.trtllm_build, whose default enables it"
            + (", or render with KV cache reuse off: --no-kv-cache-reuse)" if options.kv_cache_reuse else ")")
        )
    where = options.engine_dir_in_container or str(engine)
    return Served(where, limits.max_input_len, logits_type, options.kv_cache_reuse, chunked)


def render_text(template: str, values: dict[str, str], source: str = "template") -> str:
    try:
        return string.Template(template).substitute(values)
    except KeyError as e:
        raise RepositoryError(f"{source}: unknown placeholder ${{{e.args[0]}}}") from e
    except ValueError as e:
        raise RepositoryError(f"{source}: {e}") from e


def check_config(text: str, source: str = CONFIG) -> None:
    """Parse with Triton's schema (tritonclient's model_config_pb2); raises RepositoryError on any problem."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise RepositoryError(f"{source}: does not parse as a Triton model config: {e}") from e


def _copy_models(source: Path, output: Path) -> None:
    ignore = shutil.ignore_patterns(CONFIG, "__pycache__", "*.pyc")
    output.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        target = output / model
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source / model, target, ignore=ignore)


def render_repository(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] = DEFAULT_SOURCE,
    engine_dir: str | os.PathLike[str] | None = None,
    options: RenderOptions | None = None,
) -> Path:
    """Write every model's config.pbtxt into `output` (default: the source repository itself, in place).

    backend torch: the engine is the converted checkpoint itself. backend tensorrtllm: `engine_dir` holds the
    trtllm-build output; metadata and tokenizer are copied there and every stage reads from it.
    """
    options = options or RenderOptions()
    checkpoint = Path(checkpoint).resolve()
    source = Path(source).resolve()
    meta = RewardMetadata.load(checkpoint)
    if not meta.tokenizer_path(checkpoint).is_file():
        raise RepositoryError(f"{meta.tokenizer_path(checkpoint)}: tokenizer missing from the checkpoint")
    if options.backend == "tensorrtllm":
        if engine_dir is None:
            raise RepositoryError("backend tensorrtllm needs engine_dir (the trtllm-build output directory)")
        served = serve_engine(Path(engine_dir).resolve(), options)
    else:
        if not (checkpoint / "config.json").is_file():
            raise RepositoryError(f"{checkpoint}: config.json missing (not a converted checkpoint)")
        where = options.engine_dir_in_container or str(checkpoint)
        served = Served(where, meta.max_input_len, contract.LOGITS_TYPES["float32"])
        options = resolve_torch_options(checkpoint, options)
    out = source if output is None else Path(output).resolve()
    if out != source:
        _copy_models(source, out)
    values = variables(meta, served, options)
    rendered: dict[Path, str] = {}
    for model in MODELS:
        tpl = template_file(source / model, options.backend)
        text = render_text(tpl.read_text(), values, str(tpl))
        check_config(text, str(tpl))
        rendered[out / model / CONFIG] = text
    check_contract(rendered[out / "tensorrt_llm" / CONFIG], rendered[out / "ensemble" / CONFIG], served.logits_type)
    if engine_dir is not None and options.backend == "tensorrtllm":  # metadata and tokenizer next to the engine
        RewardMetadata.copy(checkpoint, Path(engine_dir).resolve(), max_input_len=served.max_input_len)
    for path, text in rendered.items():  # write only once every config rendered, parsed and checked
        path.write_text(text)
    return out


def config_dict(text: str) -> dict:
    """A config.pbtxt as a dict (protobuf field names, enum names), the form the contract checks read."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def check_contract(engine_config: str, ensemble_config: str, logits_type: str) -> None:
    """The rendered `tensorrt_llm` config against the written contract, and the ensemble's engine step asking for
    every output the backend needs (reward_triton/serving/trtllm_contract.py)."""
    problems = [f"tensorrt_llm: {p}" for p in contract.check_model_config(config_dict(engine_config), logits_type)]
    steps = config_dict(ensemble_config).get("ensemble_scheduling", {}).get("step", [])
    for step in steps:
        if step.get("model_name") == "tensorrt_llm":
            problems += contract.check_caller_outputs("ensemble step tensorrt_llm", step.get("output_map", {}))
    if problems:
        raise RepositoryError("the rendered repository breaks the tensorrt_llm contract: " + "; ".join(problems))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m build_engine render-repository",
        description="Render model_repository/*/config.pbtxt for a converted checkpoint (and engine).",
    )
    p.add_argument("--checkpoint", required=True, help="converted TensorRT-LLM checkpoint (with reward metadata)")
    p.add_argument("--backend", default="torch", choices=BACKENDS, help="engine behind the tensorrt_llm model")
    p.add_argument(
        "--engine-dir", help="TensorRT-LLM engine (python -m build_engine.trtllm_build), backend tensorrtllm"
    )
    p.add_argument("--repository", default=str(DEFAULT_SOURCE), help="repository holding the templates")
    p.add_argument("--output", help="render into this directory instead of in place (models are copied)")
    p.add_argument("--max-batch-size", type=int, default=RenderOptions.max_batch_size)
    p.add_argument("--max-queue-delay-us", type=int, default=RenderOptions.max_queue_delay_us)
    p.add_argument("--preprocessing-instances", type=int, default=RenderOptions.preprocessing_instances)
    p.add_argument("--max-request-bytes", type=int, default=RenderOptions.max_request_bytes)
    p.add_argument(
        "--reward-model-max-rows",
        type=int,
        default=RenderOptions.reward_model_max_rows,
        help="rows per reward_model request (NeMo-Aligner sends a whole rollout batch in one)",
    )
    p.add_argument(
        "--reward-model-instances",
        type=int,
        default=RenderOptions.reward_model_instances,
        help="reward_model instances: concurrent requests fanned out side by side",
    )
    p.add_argument(
        "--torch-dtype",
        default="auto",
        choices=TORCH_DTYPES,
        help="PyTorch engine compute dtype (auto: the checkpoint's, e.g. bfloat16; float32 on request)",
    )
    p.add_argument(
        "--torch-threads",
        default="auto",
        help="PyTorch engine threads: auto (measured now, on this machine), 0 (all cores) or N",
    )
    p.add_argument(
        "--no-kv-cache-reuse",
        action="store_true",
        help="tensorrtllm: render enable_kv_cache_reuse false (default true; the engine needs paged context FMHA)",
    )
    p.add_argument(
        "--chunked-context",
        choices=("auto", "on", "off"),
        default="auto",
        help="tensorrtllm: enable_chunked_context (auto: on exactly when the engine's max_num_tokens < max_input_len)",
    )
    p.add_argument(
        "--engine-dir-in-container",
        help="the engine (or checkpoint) directory as the serving container sees it, written into every config",
    )
    p.add_argument(
        "--batch-invariant",
        action="store_true",
        help="PyTorch engine: one forward per sequence, so scores never depend on batching (slower)",
    )
    p.add_argument(
        "--prefix-cache-bytes",
        type=int,
        default=RenderOptions.torch_prefix_cache_bytes,
        help="PyTorch engine: bytes of key/value blocks kept for requests sharing a prefix (0: off)",
    )
    a = p.parse_args(argv)
    try:
        options = RenderOptions(
            backend=a.backend,
            max_batch_size=a.max_batch_size,
            max_queue_delay_us=a.max_queue_delay_us,
            preprocessing_instances=a.preprocessing_instances,
            max_request_bytes=a.max_request_bytes,
            reward_model_max_rows=a.reward_model_max_rows,
            reward_model_instances=a.reward_model_instances,
            torch_dtype=a.torch_dtype,
            torch_threads=None if a.torch_threads == "auto" else int(a.torch_threads),
            torch_batch_invariant=a.batch_invariant,
            torch_prefix_cache_bytes=a.prefix_cache_bytes,
            kv_cache_reuse=not a.no_kv_cache_reuse,
            chunked_context={"auto": None, "on": True, "off": False}[a.chunked_context],
            engine_dir_in_container=a.engine_dir_in_container,
        )
        if options.backend == "torch":
            options = resolve_torch_options(a.checkpoint, options, log=print)
            print(f"PyTorch engine: dtype {options.torch_dtype}, {options.torch_threads} thread(s)")
        out = render_repository(a.checkpoint, a.output, a.repository, a.engine_dir, options)
    except (RepositoryError, MetadataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"rendered {out} (backend {a.backend}): {', '.join(MODELS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
