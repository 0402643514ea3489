"""Every process the project starts is stopped when its parent gets SIGINT, SIGTERM or SIGHUP.

Real tritonservers on a rendered fixture repository: `python -m demo.run` while it scores, `python -m
tooling.perf run` while it measures, and `make serve` with the OpenAI gateway beside the server. After each
signal the command must end with one line (no traceback, no "make: *** Error") and no tritonserver serving the
test's repository may be left. perf's measuring binary (perf_analyzer, not installed on CPU machines) is a
script that sleeps: the test is about the tritonserver perf owns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from triton_server import fixture_checkpoint

from build_engine.repository import RenderOptions, render_repository
from reward_triton.ops.server import free_port

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    ckpt = fixture_checkpoint(root, "nemotron")
    return render_repository(ckpt, output=root / "model_repository", options=RenderOptions(torch_threads=1))


def servers_on(repository: Path) -> list[int]:
    """Pids of live tritonserver processes (the binary or its supervisor) serving `repository`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        text = b" ".join(argv).decode(errors="replace")
        if "tritonserver" in text or "reward_triton.ops.server" in text:
            if str(repository) in text:
                found.append(int(entry.name))
    return found


def wait_gone(repository: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := servers_on(repository)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 180.0) -> str:
    """Read proc's stdout until a line holds `needle` (what came before, for the failure message)."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"no line with {needle!r}; output so far:\n{''.join(seen)}")


def _stop(proc: subprocess.Popen[str], sig: int, group: bool) -> tuple[int, str]:
    if group:  # what a terminal does on Ctrl-C / hangup: the whole foreground process group
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, (out or "") + (err or "")


@pytest.fixture
def cleanup(repository: Path) -> Iterator[None]:
    yield
    for pid in servers_on(repository):  # never leave a server behind for the next test, even on failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_demo_stops_its_server_on_signal(repository, tmp_path, sig, cleanup):
    samples = tmp_path / "samples.jsonl"
    sample = {"name": "s", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    samples.write_text((json.dumps(sample) + "\n") * 5000)  # long enough to be scoring when the signal comes
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo.run", "--repository", str(repository), "--samples", str(samples)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for_line(proc, "serving:")
    assert servers_on(repository), "the demo's server should be running"
    code, output = _stop(proc, sig, group=sig != signal.SIGTERM)
    assert code == 128 + sig, output
    assert f"demo: stopped by {sig.name}" in output and "Traceback" not in output, output
    assert wait_gone(repository) == []


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_perf_stops_its_server_on_signal(repository, tmp_path, sig, cleanup):
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\necho measuring\nexec sleep 120\n")
    fake.chmod(0o755)
    cmd = [sys.executable, "-m", "tooling.perf", "run", "--repository", str(repository),
           "--perf-analyzer", str(fake), "--output", str(tmp_path / "perf"), "--requests", "4"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while not any("sleep" in p.read_text() for p in _children_cmdlines(proc.pid)) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert servers_on(repository), "perf's server should be running while it measures"
    code, output = _stop(proc, sig, group=sig != signal.SIGTERM)
    assert code == 128 + sig, output
    assert f"perf: stopped by {sig.name}" in output and "Traceback" not in output, output
    assert wait_gone(repository) == []


def _children_cmdlines(pid: int) -> list[Path]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(entry / "cmdline")
    return out


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_make_serve_with_gateway_stops_both_on_signal(repository, sig, cleanup):
    http, grpc, metrics, gateway = free_port(), free_port(), free_port(), free_port()
    cmd = [
        "make", "--no-print-directory", "serve", f"REPOSITORY={repository}", f"OPENAI_PORT={gateway}",
        "OPENAI_HOST=127.0.0.1", f"OPENAI_TRITON_URL=127.0.0.1:{grpc}",
        f"SERVE_ARGS=--http-port={http} --grpc-port={grpc} --metrics-port={metrics} --http-address=127.0.0.1 "
        "--grpc-address=127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while not (_ready(f"http://127.0.0.1:{http}/v2/health/ready") and _ready(f"http://127.0.0.1:{gateway}/v1/models")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    # SIGTERM as `timeout` or a job scheduler sends it to make alone; Ctrl-C and hangups reach the whole group
    code, output = _stop(proc, sig, group=sig != signal.SIGTERM)
    assert "make: ***" not in output and "Traceback" not in output, output
    assert code in (0, -sig), output
    assert wait_gone(repository) == []
    assert not _ready(f"http://127.0.0.1:{gateway}/v1/models")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_launcher_stops_mpirun_ranks_and_gateway_on_signal(repository, tmp_path, sig, cleanup):
    """The multi-node launcher's --exec path on one CPU rank (real mpirun) with the gateway beside it."""
    from reward_triton.ops import launcher

    venv = Path(sys.executable).parent
    opts = launcher.LaunchOptions(
        tritonserver=str(venv / "tritonserver"),
        mpirun=str(venv / "mpirun"),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        mpirun_args=("--oversubscribe",),
        server_args=("--http-address=127.0.0.1", "--grpc-address=127.0.0.1"),
        openai_port=free_port(),
        openai_host="127.0.0.1",
    )
    cmd = launcher.mpirun_command(1, repository, None, opts)
    gateway = launcher.openai_command(None, opts)
    assert gateway is not None
    code = (
        "import sys; from reward_triton.ops.launcher import run_supervised; from reward_triton.ops.signals import "
        f"run_stoppable; sys.exit(run_stoppable(lambda: run_supervised({cmd!r}, "
        f"'127.0.0.1:{opts.http_port}', {gateway!r}), 'launcher'))"
    )
    log = tmp_path / "launcher.log"  # a file, not a pipe: mpirun blocks on output nobody reads
    with open(log, "wb") as out:
        env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}  # reward-openai, as installed
        job = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (_ready(f"http://127.0.0.1:{opts.http_port}/v2/health/ready")
                   and _ready(f"http://127.0.0.1:{opts.openai_port}/v1/models")):  # fmt: skip
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert servers_on(repository)
        if sig == signal.SIGTERM:
            job.send_signal(sig)
        else:
            os.killpg(job.pid, sig)
        job.wait(90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output[-3000:]
    assert wait_gone(repository) == [], output[-3000:]
    assert not _ready(f"http://127.0.0.1:{opts.openai_port}/v1/models")
