"""Helpers for tests that run a real tritonserver: fixture checkpoints, rendered repositories, the server.

Reusable from any test module (client, demo, server tests):

    from triton_server import serve_fixture

    @pytest.fixture(scope="module")
    def triton(tmp_path_factory):
        with serve_fixture(tmp_path_factory.mktemp("triton"), arch="nemotron") as server:
            yield server          # server.grpc_url, server.http_url, server.checkpoint, server.repository

Each server runs on free local ports with its own log; `conftest.py` attaches the log tail of every running server
to a failing test's report. Startup waits up to STARTUP_TIMEOUT seconds (loaded 2-core machines).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from build_engine.convert import convert
from build_engine.repository import RenderOptions, render_repository
from reward_triton.ops.server import ServerProcess
from tooling import fixtures

STARTUP_TIMEOUT = 180.0
RUNNING: list[ServerProcess] = []  # read by conftest.py for failure reports


def fixture_checkpoint(root: Path, arch: str = "nemotron", lm_head: str = "padded", tp: int = 1, pp: int = 1) -> Path:
    """A tiny NeMo fixture converted to a float32 TensorRT-LLM checkpoint (with metadata and tokenizer)."""
    root.mkdir(parents=True, exist_ok=True)
    nemo = fixtures.write_fixture(root / f"nemo-{arch}", arch=arch, fmt="zarr")
    return convert(nemo, root / f"ckpt-{arch}-{lm_head}-tp{tp}pp{pp}", tp=tp, pp=pp, dtype="float32", lm_head=lm_head)


@dataclass
class RunningServer:
    process: ServerProcess
    checkpoint: Path
    repository: Path

    @property
    def grpc_url(self) -> str:
        return self.process.grpc_url

    @property
    def http_url(self) -> str:
        return self.process.http_url

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)


@contextmanager
def serve(
    repository: Path, log_path: Path, checkpoint: Path, timeout: float = STARTUP_TIMEOUT
) -> Iterator[RunningServer]:
    process = ServerProcess(repository=repository, log_path=log_path)
    process.start(timeout)
    RUNNING.append(process)
    try:
        yield RunningServer(process, checkpoint, repository)
    finally:
        RUNNING.remove(process)
        process.stop()


@contextmanager
def serve_fixture(
    root: Path,
    arch: str = "nemotron",
    checkpoint: Path | None = None,
    options: RenderOptions | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Iterator[RunningServer]:
    """Convert a fixture (unless `checkpoint` is given), render a repository under `root`, serve it."""
    ckpt = checkpoint or fixture_checkpoint(root, arch)
    repo = render_repository(ckpt, output=root / "model_repository", options=options)
    with serve(repo, root / "tritonserver.log", ckpt, timeout) as server:
        yield server


# ---- request helpers (gRPC or HTTP, same code) ----------------------------------------------------------------
def _datatype(array: np.ndarray) -> str:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return "BYTES"
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def client_module(protocol: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        import tritonclient.http as mod
    return mod


def make_client(server: RunningServer, protocol: str = "grpc", **kwargs: Any) -> Any:
    mod = client_module(protocol)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return mod.InferenceServerClient(url, **kwargs)


def infer(
    client: Any, model: str, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    mod = client_module("grpc" if "grpc" in type(client).__module__ else "http")
    tensors = []
    for name, array in inputs.items():
        t = mod.InferInput(name, list(array.shape), _datatype(array))
        t.set_data_from_numpy(array)
        tensors.append(t)
    requested = [mod.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client.infer(model, tensors, outputs=requested)
    names = outputs or [o["name"] if isinstance(o, dict) else o.name for o in _outputs(result)]
    return {n: result.as_numpy(n) for n in names}


def _outputs(result: Any) -> list[Any]:
    response = result.get_response()
    return response["outputs"] if isinstance(response, dict) else list(response.outputs)


def bytes_input(value: str | bytes) -> np.ndarray:
    """One BYTES element per request: shape [1, 1] (batch of one)."""
    return np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=object)


def conversation_input(messages: list[dict[str, Any]] | dict[str, Any]) -> np.ndarray:
    payload = {"messages": messages} if isinstance(messages, list) else messages
    return bytes_input(json.dumps(payload))
