"""`reward-client annotate --url A,B` against two real tritonservers, one SIGKILLed mid-job: the output equals a
one-server run's line for line (nothing lost, nothing duplicated) and both servers answered requests before the
kill. The servers run the PyTorch engine batch-invariant, so scores do not depend on what they were batched with
or which server computed them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from client_fakes import nemo_record
from triton_server import RunningServer, fixture_checkpoint, make_client, serve

from build_engine.repository import RenderOptions, render_repository

pytestmark = pytest.mark.server

REWARD_CLIENT = Path(sys.executable).with_name("reward-client")
CONVERSATIONS = 40
TURNS = 4
KILL_AFTER = 12  # requests server B has answered when it is killed


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer]]:
    root = tmp_path_factory.mktemp("replicas")
    ckpt = fixture_checkpoint(root, "nemotron")
    options = RenderOptions(torch_threads=1, torch_batch_invariant=True)
    with ExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            repo = render_repository(ckpt, output=root / f"repository-{name}", options=options)
            servers.append(stack.enter_context(serve(repo, root / f"tritonserver-{name}.log", ckpt)))
        yield servers[0], servers[1]


def answered(server: RunningServer) -> int:
    """Successful ensemble requests, from the server's own statistics."""
    client = make_client(server, "http")
    try:
        stats: Any = client.get_inference_statistics("ensemble")
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def write_input(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, CONVERSATIONS + 1):
            record = nemo_record(i, turns=TURNS)
            for turn in record["conversations"][1::2]:
                turn["label"] = ""  # every assistant turn scored: TURNS requests per conversation
            f.write(json.dumps(record) + "\n")


def annotate(urls: str, src: Path, out: Path, concurrency: int) -> list[str]:
    return [str(REWARD_CLIENT), "--url", urls, "--concurrency", str(concurrency), "annotate", str(src), str(out),
            "--no-progress"]  # fmt: skip


def test_annotate_over_two_servers_survives_one_killed(two_servers, tmp_path):
    a, b = two_servers
    src = tmp_path / "in.jsonl"
    write_input(src)
    reference = tmp_path / "one-server.jsonl"
    one = subprocess.run(annotate(a.grpc_url, src, reference, 4), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr

    a_before, b_before = answered(a), answered(b)
    out = tmp_path / "two-servers.jsonl"
    job = subprocess.Popen(
        annotate(f"{a.grpc_url},{b.grpc_url}", src, out, 1), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while answered(b) - b_before < KILL_AFTER:
            assert job.poll() is None, f"the job ended before server B answered {KILL_AFTER} requests: {job.stderr}"
            assert time.monotonic() < deadline, "server B never got its share of the requests"
            time.sleep(0.05)
        assert b.process.proc is not None
        b.process.proc.send_signal(signal.SIGKILL)
        b.process.proc.wait(30)
        a_at_kill = answered(a) - a_before
        assert job.poll() is None, "the job ended before the kill"
        _, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr
    assert a_at_kill > 0  # both servers answered before the kill
    assert f"{b.grpc_url} is unavailable" in stderr
    want = reference.read_text().splitlines()
    got = out.read_text().splitlines()
    assert len(got) == len(want) == CONVERSATIONS
    for n, (line, ref) in enumerate(zip(got, want, strict=True), start=1):
        assert line == ref, f"line {n} differs from the one-server run"
    assert answered(a) - a_before > a_at_kill  # A took over the rest of the job
