"""Reliability against a real tritonserver: poison requests in a batch, dead stubs healed, bounded memory, a soak,
and the annotate job riding out a server restart.

The server runs the PyTorch engine batch-invariant (one forward per sequence), so a good request's scores do not
depend on the requests it was batched with, and the annotate output can be compared byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_fakes import write_conversations
from triton_server import RUNNING, RunningServer, serve_fixture

from build_engine.repository import RenderOptions
from client.api import retryable
from client.conversations import openai_prompt_and_response
from client.safe_paths import part_path
from reward_triton.ops import supervisor
from reward_triton.ops.server import ServerProcess

pytestmark = pytest.mark.server

MiB = 1 << 20
REWARD_CLIENT = Path(sys.executable).with_name("reward-client")
SOAK_S = float(os.environ.get("REWARD_SOAK_S", "90"))
GOOD = [openai_prompt_and_response(f"What is {a} + {b}?", f"{a + b}", None) for a in range(4) for b in range(4)]
POISONS: list[tuple[str, bytes, str]] = [  # (input name, raw bytes, what the INVALID_ARG message says)
    ("conversation", b"[" * 5000, "nested too deeply"),
    ("conversation", b'{"messages": [], "n": ' + b"9" * 5000 + b"}", "4300 digits"),
    (
        "conversation",
        b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}',
        "U+D800",
    ),
    ("conversation", b'{"messages": [{"role": "user", "content": "\xff"}]}', "not valid UTF-8"),
    ("text", b"\xed\xa0\x80 encoded surrogate", "not valid UTF-8"),
    ("conversation", b'{"messages": "no"}', "messages must be an array"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    options = RenderOptions(torch_threads=1, torch_batch_invariant=True)
    with serve_fixture(tmp_path_factory.mktemp("reliability"), arch="nemotron", options=options) as running:
        yield running


@pytest.fixture(scope="module")
def references(server: RunningServer) -> list[np.ndarray]:
    """Each good conversation's scores, scored alone."""
    return [infer(server, "conversation", json.dumps(c).encode())["scores"] for c in GOOD]


# ---- requests ------------------------------------------------------------------------------------------------------
def _input(name: str, raw: bytes) -> Any:
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput(name, [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[raw]], dtype=object))
    return t


def infer(server: RunningServer, name: str, raw: bytes) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("ensemble", [_input(name, raw)])
        return {n: result.as_numpy(n) for n in ("scores", "reward")}


async def infer_async(client: Any, name: str, raw: bytes) -> tuple[str, Any]:
    """("OK", scores) or (gRPC status name, message)."""
    from tritonclient.utils import InferenceServerException

    try:
        result = await client.infer("ensemble", [_input(name, raw)])
        return "OK", result.as_numpy("scores")
    except InferenceServerException as e:
        return str(e.status()), str(e.message())


def is_ready(server: RunningServer) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# ---- the server's processes --------------------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    return [pid, *(p for child in supervisor.children(pid) for p in tree(child))]


def stubs(server: RunningServer) -> list[supervisor.Stub]:
    assert server.process.proc is not None
    found = [supervisor.Stub.of(p) for p in tree(server.process.proc.pid)]
    return [s for s in found if s is not None and supervisor.alive(s.pid)]


def stub_of(server: RunningServer, model: str) -> supervisor.Stub:
    (stub,) = [s for s in stubs(server) if s.model == model]
    return stub


def footprint(server: RunningServer) -> int:
    """RSS of the supervisor, tritonserver and every stub, plus the stubs' shared-memory regions in /dev/shm."""
    assert server.process.proc is not None
    rss = 0
    for pid in tree(server.process.proc.pid):
        status = supervisor._read(f"/proc/{pid}/status") or ""
        rss += sum(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    shm = 0
    for stub in stubs(server):
        region = Path("/dev/shm") / supervisor.argv_of(stub.pid)[2]
        if region.exists():
            shm += region.stat().st_blocks * 512
    return rss + shm


# ---- 1. per-request isolation ------------------------------------------------------------------------------------
def test_poison_requests_fail_alone(server: RunningServer, references: list[np.ndarray]) -> None:
    """20 rounds of 15 good requests + 1 poison sent at once: every good one exact, every poison INVALID_ARG."""
    import tritonclient.grpc.aio as grpcclient

    async def run() -> list[list[tuple[str, Any]]]:
        async with grpcclient.InferenceServerClient(server.grpc_url) as client:
            rounds = []
            for r in range(20):
                name, raw, _ = POISONS[r % len(POISONS)]
                calls = [infer_async(client, "conversation", json.dumps(GOOD[i]).encode()) for i in range(15)]
                calls.insert(r % 16, infer_async(client, name, raw))
                rounds.append(await asyncio.gather(*calls))
            return rounds

    for r, results in enumerate(asyncio.run(run())):
        poison = results.pop(r % 16)
        _, _, needle = POISONS[r % len(POISONS)]
        assert poison[0] == "StatusCode.INVALID_ARGUMENT" and needle in poison[1], poison
        for i, (status, value) in enumerate(results):
            assert status == "OK", (r, i, value)
            np.testing.assert_array_equal(value, references[i])


# ---- 3. bounded memory -------------------------------------------------------------------------------------------
def test_rejected_large_requests_do_not_grow_memory(server: RunningServer) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    big = b"x" * (20 * MiB)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:

        def reject(n: int) -> None:
            for _ in range(n):
                with pytest.raises(InferenceServerException) as e:
                    client.infer("ensemble", [_input("text", big)])
                assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "request limit" in str(e.value.message())

        reject(1)  # first use of the large-message paths
        time.sleep(1)
        start = footprint(server)
        reject(20)
        time.sleep(1)
        after_20 = footprint(server)
        reject(100)
        time.sleep(1)
        after_120 = footprint(server)
    print(f"footprint: start {start / MiB:.0f} MiB, +20: {after_20 / MiB:.0f} MiB, +120: {after_120 / MiB:.0f} MiB")
    assert after_20 - start <= 256 * MiB, (start / MiB, after_20 / MiB)
    assert after_120 - after_20 <= 64 * MiB, (after_20 / MiB, after_120 / MiB)


# ---- 5. soak --------------------------------------------------------------------------------------------------------
def test_soak_mixed_traffic(server: RunningServer, references: list[np.ndarray]) -> None:
    """SOAK_S seconds at concurrency 16, 10 % malformed: no INTERNAL, every answer right, memory flat."""
    import tritonclient.grpc.aio as grpcclient

    counts: dict[str, int] = {}
    wrong: list[Any] = []
    samples: list[float] = []

    async def worker(client: Any, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            if rng.random() < 0.1:
                name, raw, needle = rng.choice(POISONS)
                status, value = await infer_async(client, name, raw)
                ok = status == "StatusCode.INVALID_ARGUMENT" and needle in value
            else:
                i = rng.randrange(len(GOOD))
                status, value = await infer_async(client, "conversation", json.dumps(GOOD[i]).encode())
                ok = status == "OK" and np.array_equal(value, references[i])
            counts[status] = counts.get(status, 0) + 1
            if not ok:
                wrong.append((status, value))

    async def sampler(deadline: float) -> None:
        while time.monotonic() < deadline:
            samples.append(footprint(server) / MiB)
            await asyncio.sleep(2)

    async def run() -> None:
        deadline = time.monotonic() + SOAK_S
        async with grpcclient.InferenceServerClient(server.grpc_url) as client:
            await asyncio.gather(sampler(deadline), *(worker(client, s, deadline) for s in range(16)))

    asyncio.run(run())
    print(f"soak {SOAK_S:.0f} s: {counts}; footprint MiB {samples[0]:.0f} .. {max(samples):.0f} .. {samples[-1]:.0f}")
    assert counts.get("OK", 0) > 100 and counts.get("StatusCode.INVALID_ARGUMENT", 0) > 5
    assert "StatusCode.INTERNAL" not in counts and not wrong[:5], (counts, wrong[:5])
    third = max(1, len(samples) // 3)
    early, late = statistics.median(samples[:third]), max(samples[-third:])
    assert late - early <= 64, samples


# ---- 4. the annotate job across a server restart ---------------------------------------------------------------
def test_annotate_rides_out_a_server_kill(server: RunningServer, tmp_path: Path) -> None:
    """kill -9 of tritonserver mid-job: the supervisor restarts it, the job waits, retries and finishes with the
    same bytes as an uninterrupted run (batch-invariant server, so concurrency 4 is comparable byte for byte)."""
    src = tmp_path / "in.jsonl"
    write_conversations(src, 600, {})
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    cmd = [str(REWARD_CLIENT), "--url", server.grpc_url, "--concurrency", "4", "annotate", str(src)]
    first = subprocess.run([*cmd, str(whole), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr

    job = subprocess.Popen([*cmd, str(out), "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    partial = part_path(out)  # OUT is written as OUT.part until the job completes
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before the server could be killed"
    assert server.process.proc is not None
    (triton,) = supervisor.children(server.process.proc.pid)
    os.kill(triton, signal.SIGKILL)
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr
    assert "server unavailable, retrying" in stderr and "server back" in stderr, stderr
    assert "waiting for" in stderr and "connected to" in stderr, stderr
    assert out.read_bytes() == whole.read_bytes()


# ---- 2. self-healing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["preprocessing", "tensorrt_llm", "postprocessing"])
def test_dead_stub_heals_within_30s_and_is_not_ready_meanwhile(
    server: RunningServer, references: list[np.ndarray], model: str
) -> None:
    good = json.dumps(GOOD[5]).encode()
    victim = stub_of(server, model)
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    not_ready = False
    errors: list[tuple[str, str]] = []

    async def probe() -> float | None:
        import tritonclient.grpc.aio as grpcclient

        async with grpcclient.InferenceServerClient(server.grpc_url) as client:
            while time.monotonic() - killed < 30:
                nonlocal not_ready
                ready = is_ready(server)
                not_ready |= not ready
                status, value = await infer_async(client, "conversation", good)
                if status == "OK":
                    np.testing.assert_array_equal(value, references[5])
                    if not_ready:
                        return time.monotonic() - killed
                else:
                    errors.append((status, value))
                await asyncio.sleep(0.1)
        return None

    healed = asyncio.run(probe())
    print(f"{model}: serving again {healed} s after SIGKILL; errors meanwhile: {sorted({e[0] for e in errors})}")
    assert not_ready, "/v2/health/ready never said not ready"
    assert healed is not None and healed <= 30
    assert all(retryable(status, message) for status, message in errors), errors
    assert stub_of(server, model).pid != victim.pid


def test_a_killed_server_leaves_nothing_behind(server: RunningServer, tmp_path: Path) -> None:
    """SIGKILL of the supervisor: its server dies with it; the stubs it orphans (one ignores SIGTERM here) and
    their shared-memory regions are cleaned up when the next server starts."""
    repo = server.repository
    with ServerProcess(repository=repo, log_path=tmp_path / "first.log").start(180) as first:
        _kill_supervisor_and_restart(first, repo, tmp_path)


def _kill_supervisor_and_restart(first: ServerProcess, repo: Path, tmp_path: Path) -> None:
    RUNNING.append(first)
    assert first.proc is not None
    (triton,) = supervisor.children(first.proc.pid)
    old = [s for s in (supervisor.Stub.of(p) for p in tree(triton)) if s is not None]
    regions = [Path("/dev/shm") / supervisor.argv_of(s.pid)[2] for s in old]
    try:
        assert {s.model for s in old} == {"preprocessing", "tensorrt_llm", "postprocessing", "reward_model"}
        assert all(r.exists() for r in regions)
    except AssertionError:
        RUNNING.remove(first)
        raise
    # a stub that ignores SIGTERM, orphaned: parent pid argument of a process that is gone
    stubborn = tmp_path / supervisor.STUB
    stubborn.symlink_to(sys.executable)
    script = tmp_path / "model.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n")
    region = f"rt1_{uuid.uuid4()}"  # a region name of this project's servers (others' stubs are left alone)
    orphan = subprocess.Popen([str(stubborn), str(script), region, "1", "1", "999999999"], executable=str(stubborn))
    try:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        deadline = time.monotonic() + 10
        while supervisor.alive(triton) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not supervisor.alive(triton), "tritonserver outlived its supervisor"
        RUNNING.remove(first)
        with ServerProcess(repository=repo, log_path=tmp_path / "second.log").start(180) as second:
            assert orphan.wait(10) == -signal.SIGKILL
            assert not any(supervisor.alive(s.pid) for s in old)
            assert not any(r.exists() for r in regions), regions
            assert second.is_ready()
    finally:
        orphan.kill()


def test_clean_up_keeps_regions_in_use(tmp_path: Path) -> None:
    import mmap

    used = tmp_path / f"prefix7_{'0' * 8}-0000-4000-8000-{'0' * 12}"
    stale = tmp_path / f"rt1_{'1' * 8}-1111-4111-8111-{'1' * 12}"
    foreign = tmp_path / "someone-elses-region"
    for p in (used, stale, foreign):
        p.write_bytes(b"\0" * 4096)
    with open(used, "r+b") as f, mmap.mmap(f.fileno(), 4096):
        removed = supervisor.remove_stale_regions(shm_dir=tmp_path)
    assert removed == [stale.name] and used.exists() and foreign.exists()


def test_launcher_restarts_the_mpi_job_when_a_rank_fails(server: RunningServer, tmp_path: Path) -> None:
    """The multi-node launcher's path, on one CPU rank: real mpirun, the rank's tritonserver supervised with
    REWARD_TRITON_RESTART=0. A dead stub ends the rank, mpirun ends, the launcher starts the job again."""
    from reward_triton.ops import launcher
    from reward_triton.ops.server import free_port

    venv = Path(sys.executable).parent
    opts = launcher.LaunchOptions(
        tritonserver=str(venv / "tritonserver"),
        mpirun=str(venv / "mpirun"),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        mpirun_args=("--oversubscribe",),
        server_args=("--http-address=127.0.0.1", "--grpc-address=127.0.0.1"),
    )
    cmd = launcher.mpirun_command(1, server.repository, None, opts)
    leader = f"127.0.0.1:{opts.http_port}"
    code = (
        "import sys; from reward_triton.ops.launcher import run_supervised; "
        f"sys.exit(run_supervised({cmd!r}, {leader!r}))"
    )
    log = tmp_path / "launcher.log"  # a file, not a pipe: mpirun blocks on output nobody reads
    job = subprocess.Popen([sys.executable, "-c", code], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    probe = RunningServer(ServerProcess(repository=server.repository, log_path=tmp_path / "unused",
                                        http_port=opts.http_port, grpc_port=opts.grpc_port), server.checkpoint,
                          server.repository)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not is_ready(probe) and time.monotonic() < deadline:
            assert job.poll() is None, log.read_text()
            time.sleep(0.5)
        assert is_ready(probe)
        ranks = supervisor.children(job.pid)
        (victim,) = [s for p in ranks for s in map(supervisor.Stub.of, tree(p)) if s and s.model == "preprocessing"]
        os.kill(victim.pid, signal.SIGKILL)
        killed, not_ready = time.monotonic(), False
        while time.monotonic() - killed < 60:
            ready = is_ready(probe)
            not_ready |= not ready
            if ready and not_ready:
                break
            time.sleep(0.1)
        healed = time.monotonic() - killed
        print(f"mpirun job serving again {healed:.1f} s after a rank's stub was killed")
        served = not_ready and is_ready(probe) and healed <= 30
        if served:
            infer(probe, "conversation", json.dumps(GOOD[0]).encode())
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=90)
    stderr = log.read_text(errors="replace")
    assert served, stderr[-3000:]
    assert "restarting mpirun" in stderr, stderr
