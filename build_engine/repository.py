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

from reward_triton.metadata import MetadataError, RewardMetadata
from reward_triton.prefix_cache import DEFAULT_BUDGET_BYTES
from reward_triton.preprocess import DEFAULT_MAX_REQUEST_BYTES

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "model_repository"
MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "reward_model")
BACKENDS = ("torch", "tensorrtllm")
CONFIG = "config.pbtxt"
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")


class RepositoryError(ValueError):
    """A template or option problem; the message names the file and the placeholder or option."""


@dataclass(frozen=True)
class RenderOptions:
    backend: str = "torch"
    max_batch_size: int = 64
    max_queue_delay_us: int = 1000
    preprocessing_instances: int = 1
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    reward_model_max_rows: int = 1024  # rows per `reward_model` request (NeMo-Aligner sends a whole rollout batch)
    reward_model_instances: int = 2  # requests fanned out side by side (e.g. several data-parallel trainer ranks)
    # Compute dtype of the PyTorch engine. "auto": the checkpoint's own dtype (config.json `dtype`): a bf16
    # checkpoint computes bf16 GEMMs/attention with fp32 norm statistics and an fp32 head, as TensorRT-LLM does.
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
    - torch_threads None → `reward_triton.bench_engine.measure_threads`: the engine scores a typical served batch
      with 1, 2, 4, ... threads (up to the cores this process may use), best of 3 interleaved runs, and more
      threads are taken only when ≥ 15 % faster. Without weights to time (a metadata-only directory, a device
      other than cpu, or rank files over 4 GiB) it is 1: idle OpenMP threads that spin while other processes
      hold a small machine's cores cost more than they give.
    """
    from reward_triton.engine import checkpoint_dtype

    checkpoint = Path(checkpoint)
    if options.torch_dtype == "auto":
        options = replace(options, torch_dtype=checkpoint_dtype(checkpoint))
    if options.torch_threads is None:
        ranks = sorted(checkpoint.glob("rank*.safetensors"))
        size = sum(r.stat().st_size for r in ranks)
        if options.torch_device != "cpu" or not ranks or size > MEASURE_THREADS_MAX_BYTES:
            threads = 1
        else:
            from reward_triton.bench_engine import measure_threads

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


def variables(meta: RewardMetadata, model_dir: Path, engine_dir: Path, options: RenderOptions) -> dict[str, str]:
    def js(value: object) -> str:
        return pbtxt_string(json.dumps(value))

    return {
        "max_batch_size": str(options.max_batch_size),
        "max_queue_delay_us": str(options.max_queue_delay_us),
        "preprocessing_instances": str(options.preprocessing_instances),
        "max_request_bytes": str(options.max_request_bytes),
        "reward_model_max_rows": str(options.reward_model_max_rows),
        "reward_model_instances": str(options.reward_model_instances),
        "model_dir": pbtxt_string(str(model_dir)),
        "engine_dir": pbtxt_string(str(engine_dir)),
        "torch_dtype": options.torch_dtype,
        "torch_device": options.torch_device,
        "torch_threads": str(1 if options.torch_threads is None else options.torch_threads),
        "torch_batch_invariant": "true" if options.torch_batch_invariant else "false",
        "torch_prefix_cache_bytes": str(options.torch_prefix_cache_bytes),
        "kv_cache_free_gpu_mem_fraction": str(options.kv_cache_free_gpu_mem_fraction),
        "num_attributes": str(meta.num_attributes),
        "attribute_names": js(list(meta.attribute_names)),
        "trained_attributes": js(list(meta.trained_attributes)),
        "scalar_weights": js(list(meta.scalar_weights)),
        "max_input_len": str(meta.max_input_len),
        "model_family": pbtxt_string(meta.model_family),
    }


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
        engine = Path(engine_dir).resolve()
        RewardMetadata.copy(checkpoint, engine)
        model_dir = engine
    else:
        if not (checkpoint / "config.json").is_file():
            raise RepositoryError(f"{checkpoint}: config.json missing (not a converted checkpoint)")
        engine = model_dir = checkpoint
    if options.backend == "torch":
        options = resolve_torch_options(checkpoint, options)
    out = source if output is None else Path(output).resolve()
    if out != source:
        _copy_models(source, out)
    values = variables(meta, model_dir, engine, options)
    rendered: dict[Path, str] = {}
    for model in MODELS:
        tpl = template_file(source / model, options.backend)
        text = render_text(tpl.read_text(), values, str(tpl))
        check_config(text, str(tpl))
        rendered[out / model / CONFIG] = text
    for path, text in rendered.items():  # write only once every config rendered and parsed
        path.write_text(text)
    return out


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
