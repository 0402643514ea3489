"""Trace one request through each serving path, in process, and print the project files it enters.

    .venv/bin/python scripts/trace_request.py [--checkpoint DIR] [--json]

Paths, each run through the real `model.py` adapters of a rendered repository (their `triton_python_backend_utils`
is a small stand-in here that hands tensors over as Triton does; the engine is the PyTorch stand-in):
- `ensemble`: preprocessing → tensorrt_llm → postprocessing for one conversation;
- `reward_model`: one request of 2 token rows through the BLS fan-out (each row a `tensorrt_llm` request).
`--prefix-cache-bytes 0` traces the engine without its prefix cache (reward_triton/engine/prefix_cache.py).
Only `execute()` is traced (loading is not part of a request). A "file change" is a call into a project file other
than the one the previous call landed in (returns are not counted); the files are listed in the order first entered.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- a stand-in for triton_python_backend_utils: tensors in, tensors out ---------------------------------------
class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    INVALID_ARG, INTERNAL, UNAVAILABLE = "INVALID_ARG", "INTERNAL", "UNAVAILABLE"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: _Error | None = None) -> None:
        self.output_tensors, self._error = output_tensors or [], error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> _Error | None:
        return self._error


class _Request:
    def __init__(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> None:
        self.inputs, self.outputs = inputs, outputs or []

    def requested_output_names(self) -> list[str]:
        return self.outputs


def _pb(models: dict[str, Any]) -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.TritonError = _Error
    pb.InferenceResponse = _Response

    def get_input_tensor_by_name(request: _Request, name: str) -> _Tensor | None:
        return _Tensor(name, request.inputs[name]) if name in request.inputs else None

    def get_output_tensor_by_name(response: _Response, name: str) -> _Tensor | None:
        return next((t for t in response.output_tensors if t.name() == name), None)

    class InferenceRequest:  # BLS: a request to another model of the repository
        def __init__(self, model_name: str, inputs: list[_Tensor], requested_output_names: list[str]) -> None:
            self.model, self.request = (
                model_name,
                _Request({t.name(): t.as_numpy() for t in inputs}, list(requested_output_names)),
            )

        async def async_exec(self) -> _Response:
            return models[self.model].execute([self.request])[0]

    pb.get_input_tensor_by_name = get_input_tensor_by_name
    pb.get_output_tensor_by_name = get_output_tensor_by_name
    pb.InferenceRequest = InferenceRequest
    return pb


def _load(repo: Path, name: str, pb: types.ModuleType) -> Any:
    sys.modules["triton_python_backend_utils"] = pb
    spec = importlib.util.spec_from_file_location(f"trace_{name}", repo / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = _config_json(repo / name / "config.pbtxt")
    model.initialize({"model_config": json.dumps(config), "model_name": name, "model_version": "1"})
    return model


def _config_json(path: Path) -> dict[str, Any]:
    from build_engine.repository import config_dict

    config = config_dict(path.read_text())
    for tensors in (config.get("input", []), config.get("output", [])):
        for t in tensors:
            t["dims"] = [int(d) for d in t.get("dims", [])]
    return config


# ---- the tracer ---------------------------------------------------------------------------------------------------
class Trace:
    """File changes among the project's files; the rendered repository's model.py files count as
    model_repository/<model>/1/model.py."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.files: list[str] = []
        self.changes = 0
        self._last: str | None = None

    def _project_file(self, path: Path) -> str | None:
        if not path.is_absolute() or path.name == Path(__file__).name:
            return None
        if self.repo in path.parents:
            return str(Path("model_repository") / path.relative_to(self.repo))
        if ROOT in path.parents and ".venv" not in path.parts:
            return str(path.relative_to(ROOT))
        return None

    def event(self, frame: types.FrameType, event: str, _: Any) -> None:
        if event != "call":
            return
        rel = self._project_file(Path(frame.f_code.co_filename))
        if rel is None:
            return
        if rel != self._last:
            self.changes += 1
            self._last = rel
        if rel not in self.files:
            self.files.append(rel)


@contextmanager
def traced(repo: Path) -> Iterator[Trace]:
    trace = Trace(repo)
    sys.setprofile(trace.event)
    try:
        yield trace
    finally:
        sys.setprofile(None)


def _run(repo: Path, fn: Callable[[], Any]) -> Trace:
    with traced(repo) as trace:
        fn()
    return trace


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a converted checkpoint (default: the demo model, converted now)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--prefix-cache-bytes", type=int, default=None, help="the engine's prefix cache (default: the render default)"
    )
    a = p.parse_args()

    from build_engine.convert import convert
    from build_engine.repository import RenderOptions, render_repository
    from reward_triton.serving.trtllm_contract import CALLER_OUTPUTS

    tmp = Path(tempfile.mkdtemp(prefix="trace-"))
    ckpt = Path(a.checkpoint) if a.checkpoint else convert(ROOT / "demo" / "checkpoint", tmp / "ckpt", progress=False)
    options = RenderOptions(torch_threads=1, torch_dtype="float32")
    if a.prefix_cache_bytes is not None:
        options = dataclasses.replace(options, torch_prefix_cache_bytes=a.prefix_cache_bytes)
    repo = render_repository(ckpt, tmp / "repo", options=options)
    models: dict[str, Any] = {}
    pb = _pb(models)
    for name in ("preprocessing", "tensorrt_llm", "postprocessing", "reward_model"):
        models[name] = _load(repo, name, pb)

    conversation = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}

    def ensemble() -> None:
        pre = models["preprocessing"].execute(
            [_Request({"conversation": np.array([[json.dumps(conversation)]], object)})]
        )
        tokens = {t.name(): t.as_numpy() for t in pre[0].output_tensors}
        engine_in = {
            k: tokens[k] for k in ("input_ids", "input_lengths", "request_output_len", "return_generation_logits")
        }
        wanted = list(CALLER_OUTPUTS)
        eng = models["tensorrt_llm"].execute([_Request(engine_in, wanted)])
        out = {t.name(): t.as_numpy() for t in eng[0].output_tensors}
        post = models["postprocessing"].execute([_Request(out, ["scores", "reward"])])
        assert not post[0].has_error(), post[0].error().message()

    rows = np.array([[5, 6, 7, 8], [5, 6, 9, 0]], dtype=np.int64)

    def reward_model() -> None:
        request = _Request({"tokens": rows, "sequence_lengths": np.array([[4], [3]], dtype=np.int64)})
        result = asyncio.run(models["reward_model"].execute([request]))
        assert not result[0].has_error(), result[0].error().message()

    ensemble()  # warm: lazy imports and first-call paths are not what a request crosses
    reward_model()
    report = {name: _run(repo, fn) for name, fn in (("ensemble", ensemble), ("reward_model (2 rows)", reward_model))}
    if a.json:
        print(json.dumps({k: {"file_changes": t.changes, "files": t.files} for k, t in report.items()}, indent=2))
    else:
        for name, t in report.items():
            print(f"{name}: {t.changes} file changes across {len(t.files)} files")
            for f in t.files:
                print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
