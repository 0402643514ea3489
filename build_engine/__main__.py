"""`python -m build_engine <command>`: convert a NeMo reward checkpoint, render the Triton repository, build."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from build_engine import convert as conv
from build_engine.convert import ConversionError
from build_engine.nemo.errors import CheckpointError
from build_engine.spec import SpecError
from reward_triton.metadata import MetadataError

EXPECTED_ERRORS = (CheckpointError, SpecError, ConversionError, MetadataError, FileNotFoundError)


def _convert(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m build_engine convert",
        description="NeMo reward checkpoint (.nemo or directory) → TensorRT-LLM checkpoint for TP×PP.",
    )
    conv.add_arguments(p)
    out = conv.convert(**conv.arguments(p.parse_args(argv)))
    print(f"wrote {out}")
    return 0


def _lazy(module: str) -> Callable[[Sequence[str]], int]:
    """Subcommands living in their own modules, imported only when used (mpi4py, protobuf, ...)."""

    def run(argv: Sequence[str]) -> int:
        name = module if "." in module else f"build_engine.{module}"
        return int(importlib.import_module(name).main(list(argv)) or 0)

    return run


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "convert": _convert,
    "mpi-convert": _lazy("mpi_convert"),
    "render-repository": _lazy("repository"),
    "build-engine": _lazy("trtllm_build"),
    "capacity": _lazy("capacity"),
    "launch": _lazy("reward_triton.ops.launcher"),  # = python -m reward_triton.ops.launcher
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
