"""`make perf`: perf_analyzer against the `ensemble`, `tensorrt_llm` alone and `reward_model`'s fan-out.

    python -m tooling.perf install              # perf_analyzer into the virtualenv (idempotent)
    python -m tooling.perf run [--repository model_repository] [--concurrency 1,2,4,8,16]

`run` starts a tritonserver on free local ports for the rendered repository (or uses `--url`), writes input data
for both models from the same conversations (the engine gets the token ids the preprocessing stage would make),
runs perf_analyzer over gRPC at each concurrency and prints throughput (inferences/s and tokens/s), p50/p99
latency and the overhead ratio (ensemble latency / engine latency: the cost of preprocessing + postprocessing +
ensemble scheduling). `--baseline build/perf-before/perf.json` adds tokens/s before/after per level.
`reward_model` is measured with `--rows` (64) right-padded token rows per request at `--rm-concurrency` (1,2)
requests in flight, against the ensemble and the engine with rows × concurrency single requests in flight: the
same rows at the same total concurrency, so the ratio is what the BLS fan-out costs.

perf_analyzer comes from the tritonclient 2.41.0 manylinux1 wheel (later PyPI builds need glibc 2.38); it needs
Debian's libb64-0d and libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12, installed into a side directory so the
project keeps its current tritonclient).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reward_triton.errors import RequestError
from reward_triton.serving.preprocess import Preprocessor

PA_WHEEL = "tritonclient==2.41.0"
PA_MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
CUDART = "nvidia-cuda-runtime-cu12"
VENV_BIN = Path(sys.executable).parent
DEFAULT_BINARY = VENV_BIN / "perf_analyzer"
DEFAULT_LIBS = Path(sys.prefix) / "perf-libs"
WORDS = "the model answer is helpful correct and clear because it explains each step of the code simply".split()


# ---- install -------------------------------------------------------------------------------------------------
def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def install(binary: Path = DEFAULT_BINARY, libs: Path = DEFAULT_LIBS) -> Path:
    if binary.is_file() and (libs / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12").is_file():
        return binary
    if subprocess.run(["dpkg", "-s", "libb64-0d"], capture_output=True).returncode != 0:
        print("installing Debian's libb64-0d (perf_analyzer needs it)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        _pip(
            "download", "-q", "--no-deps", "--only-binary=:all:", "--platform", "manylinux1_x86_64", PA_WHEEL, "-d", tmp
        )
        wheel = next(Path(tmp).glob("tritonclient-2.41.0-*.whl"))
        with zipfile.ZipFile(wheel) as z, z.open(PA_MEMBER) as src, open(binary, "wb") as dst:
            shutil.copyfileobj(src, dst)
    binary.chmod(0o755)
    _pip("install", "-q", "--no-deps", "--upgrade", "--target", str(libs), CUDART)
    return binary


def perf_env(libs: Path = DEFAULT_LIBS) -> dict[str, str]:
    env = dict(os.environ)
    cudart = libs / "nvidia" / "cuda_runtime" / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


# ---- input data ----------------------------------------------------------------------------------------------
def conversations(pre: Preprocessor, n: int, seed: int = 0, tokens: int | None = None) -> list[tuple[str, list[int]]]:
    """n (conversation JSON, token ids) pairs whose lengths spread over 30-90 % of the engine's input limit, or,
    with `tokens`, all of about that many tokens (at least that many, a few more at most)."""
    rng = random.Random(seed)
    limit = min(pre.max_input_len, 2048)
    out: list[tuple[str, list[int]]] = []
    while len(out) < n:
        target = min(tokens, pre.max_input_len) if tokens else int(limit * rng.uniform(0.3, 0.9))
        words: list[str] = []
        best: tuple[str, list[int]] | None = None
        step = 1
        while True:
            words.extend(rng.choice(WORDS) for _ in range(step))
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Please explain the code."},
                {"role": "assistant", "content": " ".join(words)},
            ]
            text = json.dumps({"messages": messages})
            try:
                ids = pre.prepare({"conversation": _bytes(text)}).input_ids
            except RequestError:
                break
            best = (text, ids)
            if len(ids) >= target:
                break
            # a word is at least about one token; with `tokens`, creep up so as not to overshoot the target
            step = max(1, (target - len(ids)) // (8 if tokens else 2))
        if best is None:
            raise RequestError(f"the engine's input limit ({pre.max_input_len} tokens) is too small for perf data")
        out.append(best)
    return out


def _bytes(text: str) -> np.ndarray:
    return np.array([[text.encode()]], dtype=object)


def write_inputs(pairs: Sequence[tuple[str, list[int]]], directory: Path) -> tuple[Path, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    ensemble = {"data": [{"conversation": [text]} for text, _ in pairs]}
    # perf_analyzer names no outputs, so Triton asks `tensorrt_llm` for all of them (output_ids and sequence_length
    # included, which the C++ backend requires).
    engine = {
        "data": [
            {
                "input_ids": {"content": ids, "shape": [len(ids)]},
                "input_lengths": [len(ids)],
                "request_output_len": [1],
                "return_generation_logits": [True],
            }
            for _, ids in pairs
        ]
    }
    width = max(len(ids) for _, ids in pairs)  # reward_model rows: right-padded token rows, as NeMo-Aligner sends
    reward_model = {
        "data": [
            {"tokens": {"content": ids + [0] * (width - len(ids)), "shape": [width]}, "sequence_lengths": [len(ids)]}
            for _, ids in pairs
        ]
    }
    paths = directory / "ensemble.json", directory / "tensorrt_llm.json", directory / "reward_model.json"
    for path, data in zip(paths, (ensemble, engine, reward_model), strict=True):
        path.write_text(json.dumps(data))
    return paths


# ---- measuring -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    model: str
    concurrency: int
    throughput: float  # inferences / s = rows / s for batched requests (nan: no stable measurement)
    p50_ms: float
    p99_ms: float
    batch: int = 1  # rows per request


def perf_analyzer_command(
    binary: Path,
    model: str,
    url: str,
    data: Path,
    concurrency: int,
    requests: int,
    stability: int,
    csv_path: Path,
    batch: int = 1,
) -> list[str]:
    """Count windows (each window waits for `requests` responses: no empty windows on a slow, shared machine)."""
    return [
        str(binary),
        *("-m", model, "-u", url, "-i", "grpc", "--input-data", str(data), "-b", str(batch)),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--measurement-mode", "count_windows", "--measurement-request-count", str(requests)),
        *("--stability-percentage", str(stability), "--max-trials", "10"),
        *("-f", str(csv_path)),
    ]


def run_perf_analyzer(
    binary: Path,
    model: str,
    url: str,
    data: Path,
    concurrency: int,
    out: Path,
    env: dict[str, str],
    requests: int = 0,
    stability: int = 50,
    batch: int = 1,
) -> Row:
    """One concurrency level; a level that never stabilises (twice) is reported as nan rather than failing all."""
    csv_path = out / f"{model}-b{batch}-c{concurrency}.csv"
    requests = requests or max(40 if batch == 1 else 8, 8 * concurrency)
    for attempt in range(2):
        cmd = perf_analyzer_command(
            binary, model, url, data, concurrency, requests * (attempt + 1), stability, csv_path, batch
        )
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode == 0:
            with open(csv_path) as f:
                row = next(csv.DictReader(f))
            return Row(
                model=model,
                concurrency=int(row["Concurrency"]),
                throughput=float(row["Inferences/Second"]),
                p50_ms=float(row["p50 latency"]) / 1000.0,
                p99_ms=float(row["p99 latency"]) / 1000.0,
                batch=batch,
            )
        if "stable measurement" not in result.stdout + result.stderr:
            raise RuntimeError(
                f"perf_analyzer failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
            )
    nan = float("nan")
    return Row(model, concurrency, nan, nan, nan, batch)


def fanout_report(rows: Sequence[Row]) -> str:
    """reward_model (B rows per request, c requests) against the ensemble and the engine with B·c requests in
    flight: the same rows, the same total concurrency; the ratio is what the BLS fan-out costs."""
    lines = []
    for rm in (r for r in rows if r.model == "reward_model"):
        total = rm.batch * rm.concurrency
        ens = next((r for r in rows if r.model == "ensemble" and r.batch == 1 and r.concurrency == total), None)
        eng = next((r for r in rows if r.model == "tensorrt_llm" and r.batch == 1 and r.concurrency == total), None)
        if ens is None or eng is None:
            continue
        lines.append(
            f"reward_model B={rm.batch} x c={rm.concurrency}: {rm.throughput:.1f} rows/s (p50 {rm.p50_ms:.0f} ms per "
            f"request) | ensemble c={total}: {ens.throughput:.1f} inf/s | tensorrt_llm c={total}: "
            f"{eng.throughput:.1f} inf/s | reward_model / ensemble = {rm.throughput / ens.throughput:.2f}x"
        )
    return "\n".join(lines)


def report(rows: Sequence[Row], tokens_per_request: float | None = None) -> str:
    rows = [r for r in rows if r.batch == 1 and r.model != "reward_model"]
    by = {(r.model, r.concurrency): r for r in rows}
    levels = sorted({r.concurrency for r in rows})
    tok = tokens_per_request or 0.0
    lines = [
        f"{'concurrency':>11} | {'engine inf/s':>12} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} | "
        f"{'ensemble inf/s':>14} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} | {'overhead p50':>12} {'throughput':>10}"
    ]
    lines.append("-" * len(lines[0]))
    for c in levels:
        e, s = by.get(("tensorrt_llm", c)), by.get(("ensemble", c))
        if e is None or s is None:
            continue
        lines.append(
            f"{c:>11} | {e.throughput:>12.1f} {e.throughput * tok:>8.0f} {e.p50_ms:>8.2f} {e.p99_ms:>8.2f} | "
            f"{s.throughput:>14.1f} {s.throughput * tok:>8.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} | "
            f"{s.p50_ms / e.p50_ms:>11.2f}x {e.throughput / s.throughput:>9.2f}x"
        )
    lines.append(
        "overhead p50 = ensemble p50 / engine p50; throughput = engine inf/s / ensemble inf/s "
        "(pre/postprocessing + ensemble scheduling)"
    )
    if tokens_per_request:
        lines.append(
            f"tok/s = inf/s x {tokens_per_request:.1f} tokens per request (mean of the input data; exact only when "
            "every request has about that many: --request-tokens)"
        )
    return "\n".join(lines)


def compare(rows: Sequence[Row], baseline: Sequence[Row], tokens: float, base_tokens: float) -> str:
    """Tokens/s of this run against a baseline run's perf.json (e.g. before an engine change), per model and level."""
    base = {(r.model, r.concurrency): r for r in baseline}
    lines = [f"{'model':>12} {'concurrency':>11} | {'before tok/s':>12} {'after tok/s':>12} {'after/before':>12}"]
    for r in rows:
        b = base.get((r.model, r.concurrency))
        if b is None:
            continue
        before, after = b.throughput * base_tokens, r.throughput * tokens
        lines.append(f"{r.model:>12} {r.concurrency:>11} | {before:>12.0f} {after:>12.0f} {after / before:>11.2f}x")
    return "\n".join(lines)


def load_rows(path: Path) -> tuple[list[Row], float]:
    """(rows, tokens per request) from a perf.json written by `run`."""
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    tokens = float(data.get("tokens_per_request", 0.0)) if isinstance(data, dict) else 0.0
    return [Row(**r) for r in rows if r.get("batch", 1) == 1], tokens


def _model_dir(repository: Path) -> Path:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repository / "preprocessing" / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the repository is not rendered (run `make engine`)")
    cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return Path(cfg.parameters["model_dir"].string_value)


def run(args: argparse.Namespace) -> int:
    from reward_triton.ops.server import ServerProcess

    repository = Path(args.repository).resolve()
    binary = Path(args.perf_analyzer)
    if not binary.is_file():
        install(binary, Path(args.libs))
    pre = Preprocessor.from_dir(_model_dir(repository))
    out = Path(args.output)
    pairs = conversations(pre, args.requests, tokens=args.request_tokens)
    ensemble_data, engine_data, reward_model_data = write_inputs(pairs, out)
    levels = [int(c) for c in args.concurrency.replace(":", ",").split(",") if c]
    if ":" in args.concurrency:  # start:end → powers of two between
        lo, hi = levels[0], levels[-1]
        levels = sorted({lo, hi, *(2**i for i in range(16) if lo <= 2**i <= hi)})
    env = perf_env(Path(args.libs))

    def measure(url: str) -> list[Row]:
        rows = []
        for model, data in (("tensorrt_llm", engine_data), ("ensemble", ensemble_data)):
            for c in levels:
                row = run_perf_analyzer(binary, model, url, data, c, out, env, args.window_requests, args.stability)
                print(
                    f"{model:>12} c={c:<3} {row.throughput:8.1f} inf/s"
                    f"  p50 {row.p50_ms:8.2f} ms  p99 {row.p99_ms:8.2f} ms",
                    flush=True,
                )
                rows.append(row)
        for rm_c in [int(c) for c in args.rm_concurrency.split(",") if c] if args.rows > 0 else []:
            # reward_model fan-out: B token rows per request vs the same rows as single requests
            total = args.rows * rm_c
            plan = [
                ("reward_model", reward_model_data, rm_c, args.rows),
                ("ensemble", ensemble_data, total, 1),
                ("tensorrt_llm", engine_data, total, 1),
            ]
            for model, data, c, batch in plan:
                if batch == 1 and c in levels:
                    continue  # measured above
                row = run_perf_analyzer(binary, model, url, data, c, out, env, 0, args.stability, batch)
                print(f"{model:>12} b={batch:<3} c={c:<3} {row.throughput:8.1f} rows/s  p50 {row.p50_ms:8.2f} ms")
                rows.append(row)
        return rows

    if args.url:
        rows = measure(args.url)
    else:
        with ServerProcess(repository=repository, log_path=out / "tritonserver.log") as server:
            rows = measure(server.grpc_url)
    tokens = sum(len(ids) for _, ids in pairs) / len(pairs)
    print()
    print(report(rows, tokens))
    if args.rows > 0:
        print(fanout_report(rows))
    if args.baseline:
        base_rows, base_tokens = load_rows(Path(args.baseline))
        print()
        print(f"against {args.baseline}:")
        print(compare(rows, base_rows, tokens, base_tokens or tokens))
    doc = {"tokens_per_request": tokens, "repository": str(repository), "rows": [r.__dict__ for r in rows]}
    (out / "perf.json").write_text(json.dumps(doc, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tooling.perf", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install", help="install perf_analyzer into the virtualenv")
    r = sub.add_parser("run", help="measure ensemble vs tensorrt_llm")
    for q in (i, r):
        q.add_argument("--perf-analyzer", default=str(DEFAULT_BINARY))
        q.add_argument("--libs", default=str(DEFAULT_LIBS), help="where libcudart.so.12 is installed")
    r.add_argument("--repository", default="model_repository")
    r.add_argument("--url", help="gRPC host:port of a running server (default: start one)")
    r.add_argument("--concurrency", default="1:16", help="start:end (powers of two between) or a list 1,2,4")
    r.add_argument("--requests", type=int, default=64, help="distinct conversations in the input data")
    r.add_argument("--window-requests", type=int, default=0, help="responses per window (default max(40, 8c))")
    r.add_argument("--rows", type=int, default=64, help="reward_model: token rows per request (0: skip it)")
    r.add_argument("--rm-concurrency", default="1,2", help="reward_model: requests in flight (a list)")
    r.add_argument("--output", default="build/perf")
    r.add_argument("--baseline", help="perf.json of an earlier run: print tokens/s before/after per level")
    r.add_argument(
        "--request-tokens",
        type=int,
        default=None,
        help="every request about this many tokens (default: spread over 30-90 %% of the input limit). Use it for "
        "tok/s: perf_analyzer's concurrent contexts do not sample mixed-length data evenly (short requests "
        "complete more often), so inf/s x mean length overstates tokens/s with spread lengths",
    )
    r.add_argument(
        "--stability",
        type=int,
        default=50,
        help="perf_analyzer --stability-percentage (shared small machines are noisy)",
    )
    a = p.parse_args(argv)
    if a.command == "install":
        print(install(Path(a.perf_analyzer), Path(a.libs)))
        return 0
    return run(a)


if __name__ == "__main__":
    from reward_triton.ops.signals import run_stoppable

    sys.exit(run_stoppable(main, "perf"))
