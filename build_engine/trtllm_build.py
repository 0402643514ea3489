"""TensorRT-LLM engine build: `python -m build_engine.trtllm_build --checkpoint C --output E [--print]`.

The `trtllm-build` command line is constructed from `BuildOptions` plus the checkpoint's `config.json` (dtype,
mapping, position limit), so it can be printed and tested where TensorRT-LLM is absent (`--print`). Built on a
GPU machine, the engine goes into a hidden `.E.partial-*` sibling that replaces `E` only when `trtllm-build`
succeeded and wrote `config.json` + one `rank{N}.engine` per rank; `reward_metadata.json` and `tokenizer.model`
are then copied next to the engine (every serving stage reads them from the engine directory).

Flags follow TensorRT-LLM >= 0.13 (`--kv_cache_type`); `extra_args` passes anything version-specific through.
Paged context FMHA is on by default: the served config turns on KV-cache block reuse (shared conversation prefixes
and prompts) and, when max_num_tokens < max_input_len, chunked context, and both need it.
Release differences handled here (docs/production.md):
- 0.13-0.19 `build_model` overwrites the checkpoint's `gpus_per_node` with trtllm-build's own `--gpus_per_node`
  (default 8): the flag is passed whenever this trtllm-build has it (`trtllm-build --help`).
- A PP size that does not divide the layer count is split like `torch.tensor_split` from 0.16 on (as the converter
  splits it) but floor-divided by 0.13-0.15: refused unless the installed TensorRT-LLM is >= 0.16.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from build_engine.atomic import atomic_directory
from reward_triton.engine import dtypes
from reward_triton.engine.mapping import Mapping, MappingError
from reward_triton.metadata import METADATA_FILE, TOKENIZER_FILE, RewardMetadata
from reward_triton.serving.trtllm_contract import ContractViolation, EngineLimits

EXECUTABLE = "trtllm-build"
UNEVEN_PP_SINCE = (0, 16)  # first release whose layer split matches torch.tensor_split
INSTALL_HINT = (
    "TensorRT-LLM is GPU-only (CUDA, Python 3.12 wheels): run this inside the Triton TRT-LLM container "
    "(nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3) or after `pip install tensorrt-llm` on a GPU machine"
)


class BuildError(RuntimeError):
    """Bad options for this checkpoint, trtllm-build missing or failed, or an incomplete engine directory."""


@dataclass(frozen=True)
class BuildOptions:
    max_batch_size: int = 64  # requests the engine schedules at once
    max_input_len: int | None = None  # default: the checkpoint's max_position_embeddings (4096 for both models)
    max_seq_len: int | None = None  # default: max_input_len + 1 (one generated position carries the reward)
    max_num_tokens: int = 16384  # tokens per engine iteration (packed); >= max_input_len without chunked context
    opt_num_tokens: int | None = None
    workers: int = 1  # parallel engine builds (one GPU each); capped by trtllm-build at the visible GPUs
    gpus_per_node: int | None = None  # written into the engine's mapping; default: the checkpoint's, else 8
    context_fmha: bool = True
    paged_context_fmha: bool = True  # KV-cache block reuse and chunked context need it
    multiple_profiles: bool = False
    gather_generation_logits: bool = True  # needed by releases before generation logits became a runtime flag
    allow_uneven_pp: bool = False  # the operator vouches for TensorRT-LLM >= 0.16 where it cannot be detected
    log_level: str = "info"
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_num_tokens", "workers"):
            if getattr(self, name) < 1:
                raise BuildError(f"{name} must be positive, got {getattr(self, name)}")


def read_config(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise BuildError(f"{path}: missing (not a converted TensorRT-LLM checkpoint)")
    return json.loads(path.read_text())


def mapping(config: dict[str, Any]) -> Mapping:
    """The checkpoint config's TP×PP mapping (BuildError when it is not TP × PP)."""
    try:
        return Mapping.of_config(config)
    except MappingError as e:
        raise BuildError(str(e)) from None


def resolved_lengths(config: dict[str, Any], opts: BuildOptions) -> tuple[int, int]:
    max_pos = int(config.get("max_position_embeddings") or 4096)
    max_input = opts.max_input_len or max_pos
    max_seq = opts.max_seq_len or max_input + 1
    if max_input > max_pos:
        raise BuildError(f"max_input_len {max_input} exceeds the model's max_position_embeddings {max_pos}")
    if max_seq <= max_input:
        raise BuildError(f"max_seq_len {max_seq} must exceed max_input_len {max_input} (one output position)")
    if opts.max_num_tokens < max_input and not opts.paged_context_fmha:
        raise BuildError(
            f"max_num_tokens {opts.max_num_tokens} < max_input_len {max_input}: a full-length request would not fit "
            "one iteration (raise max_num_tokens, or keep paged context FMHA on: the rendered config then turns "
            "chunked context on)"
        )
    return max_input, max_seq


def _parse_version(text: str) -> tuple[int, int] | None:
    parts = text.strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def installed_trtllm_version(exe: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of TensorRT-LLM: asked of the interpreter that runs `exe` (trtllm-build is a console script
    whose first line names it; in the container that is the system Python, not this virtualenv), else of this
    interpreter. None when neither has it."""
    probe = "import importlib.metadata as m; print(m.version('tensorrt_llm'))"
    if exe is not None:
        try:
            first = Path(exe).read_text(errors="replace").split("\n", 1)[0]
        except OSError:
            first = ""
        if first.startswith("#!") and "python" in first:
            try:
                result = subprocess.run(
                    [*shlex.split(first[2:].strip()), "-c", probe], capture_output=True, text=True, timeout=120
                )
            except (OSError, subprocess.TimeoutExpired):
                result = None
            if result is not None and result.returncode == 0:
                return _parse_version(result.stdout)
    for name in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return _parse_version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_pipeline_split(config: dict[str, Any], opts: BuildOptions, version: tuple[int, int] | None) -> None:
    """Refuse a PP size that does not divide the layers where TensorRT-LLM would split them differently from the
    converter (releases before 0.16 floor-divide: a silently wrong engine)."""
    pp = mapping(config).pp
    layers = int(config.get("num_hidden_layers") or 0)
    if pp <= 1 or layers % pp == 0 or opts.allow_uneven_pp:
        return
    if version is not None and version >= UNEVEN_PP_SINCE:
        return
    found = "not installed here" if version is None else f"{version[0]}.{version[1]}"
    raise BuildError(
        f"{layers} layers over pp_size {pp} do not divide evenly: TensorRT-LLM before 0.16 splits them differently "
        f"from this checkpoint (floor division, a wrong engine); TensorRT-LLM here: {found}. Use a PP size that "
        "divides the layers, or pass --allow-uneven-pp when building with TensorRT-LLM >= 0.16"
    )


def gpus_per_node_flag(config: dict[str, Any], opts: BuildOptions) -> list[str]:
    """`--gpus_per_node N` (N: the option, else the checkpoint's, else 8), for the releases that take it."""
    return ["--gpus_per_node", str(opts.gpus_per_node or gpus_per_node(config))]


def supports_gpus_per_node(exe: str) -> bool:
    """Whether this trtllm-build takes --gpus_per_node (it then overrides the checkpoint's own value)."""
    try:
        result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--gpus_per_node" in result.stdout + result.stderr


def _flag(on: bool) -> str:
    return "enable" if on else "disable"


def build_argv(checkpoint: Path, output: Path, config: dict[str, Any], opts: BuildOptions) -> list[str]:
    """The exact `trtllm-build` argv for this checkpoint config and options."""
    dtype = str(config.get("dtype") or "bfloat16")
    if dtype not in dtypes.NAMES:
        raise BuildError(f"checkpoint dtype {dtype!r} is not supported for the engine build")
    logits = str(config.get("logits_dtype") or "float32")
    world = mapping(config).world_size
    max_input, max_seq = resolved_lengths(config, opts)
    argv = [
        EXECUTABLE,
        "--checkpoint_dir",
        str(checkpoint),
        "--output_dir",
        str(output),
        "--gemm_plugin",
        dtype,
        "--gpt_attention_plugin",
        dtype,
        "--remove_input_padding",
        "enable",
        "--kv_cache_type",
        "paged",
        "--context_fmha",
        _flag(opts.context_fmha),
        "--use_paged_context_fmha",
        _flag(opts.paged_context_fmha),
        "--multiple_profiles",
        _flag(opts.multiple_profiles),
        "--max_batch_size",
        str(opts.max_batch_size),
        "--max_input_len",
        str(max_input),
        "--max_seq_len",
        str(max_seq),
        "--max_num_tokens",
        str(opts.max_num_tokens),
        "--max_beam_width",
        "1",
        "--logits_dtype",
        logits,
        "--workers",
        str(min(opts.workers, world)),
        "--log_level",
        opts.log_level,
    ]
    if opts.opt_num_tokens is not None:
        argv += ["--opt_num_tokens", str(opts.opt_num_tokens)]
    if opts.gather_generation_logits:
        argv.append("--gather_generation_logits")
    return argv + list(opts.extra_args)


def gpus_per_node(config: dict[str, Any]) -> int:
    return mapping(config).gpus_per_node


@contextmanager
def build_view(checkpoint: Path, config: dict[str, Any], opts: BuildOptions) -> Iterator[Path]:
    """The checkpoint as trtllm-build should see it: itself, or (to set gpus_per_node in the engine's mapping)
    a temporary directory of symlinks to its rank files with an adjusted config.json."""
    want = opts.gpus_per_node
    if want is None or want == gpus_per_node(config):
        yield checkpoint
        return
    world = mapping(config).world_size
    with tempfile.TemporaryDirectory(prefix="trtllm-build-view-") as d:
        view = Path(d)
        for rank in range(world):
            src = checkpoint.resolve() / f"rank{rank}.safetensors"
            if not src.is_file():
                raise BuildError(f"{src}: rank file missing (mapping world_size {world})")
            (view / src.name).symlink_to(src)
        adjusted = {**config, "mapping": {**(config.get("mapping") or {}), "gpus_per_node": want}}
        (view / "config.json").write_text(json.dumps(adjusted, indent=2) + "\n")
        yield view


def build_engine(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    opts: BuildOptions | None = None,
    executable: str | None = None,
) -> Path:
    """Run trtllm-build into `output` atomically and copy the reward metadata and tokenizer next to the engine."""
    opts = opts or BuildOptions()
    checkpoint, output = Path(checkpoint).absolute(), Path(output).absolute()
    config = read_config(checkpoint)
    for name in (METADATA_FILE, TOKENIZER_FILE):
        if not (checkpoint / name).is_file():
            raise BuildError(f"{checkpoint / name}: missing (the converter writes it next to config.json)")
    exe = executable or shutil.which(EXECUTABLE)
    if exe is None:
        cmd = shlex.join(build_argv(checkpoint, output, config, opts) + gpus_per_node_flag(config, opts))
        raise BuildError(f"{EXECUTABLE} is not on PATH. {INSTALL_HINT}. The build command is:\n  {cmd}")
    check_pipeline_split(config, opts, installed_trtllm_version(exe))
    node_flag = gpus_per_node_flag(config, opts) if supports_gpus_per_node(exe) else []
    with atomic_directory(output) as tmp:
        with build_view(checkpoint, config, opts) as view:
            argv = [exe, *build_argv(view, tmp, config, opts)[1:], *node_flag]
            print(shlex.join(argv), flush=True)
            result = subprocess.run(argv, check=False)
        if result.returncode != 0:
            raise BuildError(f"{EXECUTABLE} failed with exit status {result.returncode}")
        try:  # config.json and every rank file written; every stage then enforces the BUILT engine's limit
            built = EngineLimits.of_engine(tmp)
            built.check_files(tmp)
        except ContractViolation as e:
            raise BuildError(f"{EXECUTABLE} output: {e}") from None
        RewardMetadata.copy(checkpoint, tmp, max_input_len=built.max_input_len)
    return output


def options_from_args(a: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        max_batch_size=a.max_batch_size,
        max_input_len=a.max_input_len,
        max_seq_len=a.max_seq_len,
        max_num_tokens=a.max_num_tokens,
        opt_num_tokens=a.opt_num_tokens,
        workers=a.workers,
        gpus_per_node=a.gpus_per_node,
        paged_context_fmha=a.paged_context_fmha == "enable",
        multiple_profiles=a.multiple_profiles,
        allow_uneven_pp=a.allow_uneven_pp,
        extra_args=tuple(shlex.split(a.extra_args)),
    )


def parser() -> argparse.ArgumentParser:
    d = BuildOptions()
    p = argparse.ArgumentParser(
        prog="python -m build_engine.trtllm_build",
        description="trtllm-build a converted reward checkpoint (bf16 plugins, packed input, paged KV, context FMHA).",
    )
    p.add_argument("--checkpoint", required=True, help="converted TensorRT-LLM checkpoint directory")
    p.add_argument("--output", required=True, help="engine directory (replaced atomically when complete)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-input-len", type=int, default=None, help="default: max_position_embeddings")
    p.add_argument("--max-seq-len", type=int, default=None, help="default: max_input_len + 1")
    p.add_argument("--max-num-tokens", type=int, default=d.max_num_tokens)
    p.add_argument("--opt-num-tokens", type=int, default=None)
    p.add_argument("--workers", type=int, default=d.workers, help="parallel builds, one GPU each")
    p.add_argument("--gpus-per-node", type=int, default=None, help="engine mapping's gpus_per_node (default 8)")
    p.add_argument(
        "--paged-context-fmha",
        choices=("enable", "disable"),
        default="enable",
        help="paged context FMHA (default enable: KV-cache block reuse and chunked context need it)",
    )
    p.add_argument(
        "--allow-uneven-pp",
        action="store_true",
        help="build a PP size that does not divide the layers (only correct with TensorRT-LLM >= 0.16)",
    )
    p.add_argument("--multiple-profiles", action="store_true")
    p.add_argument("--extra-args", default="", help="more trtllm-build arguments, one shell-quoted string")
    p.add_argument("--print", action="store_true", help="print the trtllm-build command and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        opts = options_from_args(a)
        if a.print:
            ckpt, out = Path(a.checkpoint).absolute(), Path(a.output).absolute()
            config = read_config(ckpt)
            try:
                check_pipeline_split(config, opts, installed_trtllm_version(shutil.which(EXECUTABLE)))
            except BuildError as e:
                print(f"warning: {e}", file=sys.stderr)
            exe = shutil.which(EXECUTABLE)
            node_flag = gpus_per_node_flag(config, opts) if exe is None or supports_gpus_per_node(exe) else []
            print(shlex.join(build_argv(ckpt, out, config, opts) + node_flag))
            if exe is None:
                print("note: --gpus_per_node is for trtllm-build releases that take it (0.13-0.19)", file=sys.stderr)
            return 0
        out = build_engine(a.checkpoint, a.output, opts)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
