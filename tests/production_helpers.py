"""Shared by the production-path tests (test_mpi_convert, test_trtllm_build, test_launcher, test_capacity)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_engine import capacity, convert

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
MPIRUN_FLAGS = ["--allow-run-as-root", "--oversubscribe"]
TP, PP = 4, 2  # 8 output ranks: 4 MPI processes write 2 each; GQA 2 groups replicated over TP 4


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def config_340b(tp: int = 8, pp: int = 2) -> dict[str, Any]:
    spec = capacity.published_spec("Nemotron-4-340B-Reward")
    return convert.trtllm_config(spec, convert.Layout(tp, pp), "bfloat16", "padded")


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
