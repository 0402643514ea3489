"""`python -m build_engine <command>`: convert a NeMo reward checkpoint, render the Triton repository, build."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from build_engine.convert import ConversionError, convert
from build_engine.nemo.errors import CheckpointError
from build_engine.spec import SpecError
from reward_triton.metadata import MetadataError

EXPECTED_ERRORS = (CheckpointError, SpecError, ConversionError, MetadataError, FileNotFoundError)


def _convert(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m build_engine convert",
        description="NeMo reward checkpoint (.nemo or directory) → TensorRT-LLM checkpoint for TP×PP.",
    )
    p.add_argument("--nemo", required=True, help=".nemo file or extracted checkpoint directory")
    p.add_argument("--output", required=True, help="output directory (replaced atomically when complete)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument(
        "--lm-head",
        default="padded",
        choices=["padded", "compact"],
        help="padded: vocab-sized lm_head with reward rows 0..K-1 (TensorRT-LLM); compact: [K, H] (PyTorch engine)",
    )
    p.add_argument(
        "--parallel-embedding",
        action="store_true",
        help="shard the embedding table over TP ranks (TensorRT-LLM use_parallel_embedding, dim 0)",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    out = convert(
        a.nemo,
        a.output,
        a.tp,
        a.pp,
        a.dtype,
        a.lm_head,
        progress=not a.no_progress,
        parallel_embedding=a.parallel_embedding,
    )
    print(f"wrote {out}")
    return 0


def _lazy(module: str) -> Callable[[Sequence[str]], int]:
    """Subcommands living in their own modules, imported only when used (mpi4py, protobuf, ...)."""

    def run(argv: Sequence[str]) -> int:
        return int(importlib.import_module(f"build_engine.{module}").main(list(argv)) or 0)

    return run


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "convert": _convert,
    "mpi-convert": _lazy("mpi_convert"),
    "render-repository": _lazy("repository"),
    "build-engine": _lazy("trtllm_build"),
    "capacity": _lazy("capacity"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m build_engine {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
