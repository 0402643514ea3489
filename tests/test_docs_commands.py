"""The commands in README.md, docs/ and demo/README.md run as written.

Every command of every fenced shell block (```bash / sh / shell) is either run here — against a real tritonserver
on a fixture model and a real `reward-openai`, with only the placeholders filled (server addresses, the
example file names, `/path/to/model.nemo`, `[optional]` brackets) — or listed in NOT_RUN with the reason (a GPU,
several nodes, tens of minutes, or another test that runs it). A new command in the docs fails
`test_every_documented_command_is_run_or_excused` until it is given a runner or a reason. The README's pytriton
snippet (a python block) runs too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from client_fakes import write_conversations
from triton_server import RunningServer, serve_fixture

from build_engine.repository import RenderOptions
from reward_triton.ops.server import free_port
from tooling import fixtures

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "demo" / "README.md"]
BIN = Path(sys.executable).parent
SERVED_NAME = "nvidia/nemotron-4-340b-reward"
OPTIONAL = re.compile(r" \[(?:--|[A-Z_]+=)[^\]]*\]")  # `[--flag value]`, `[NAME=value]`: left out

# command prefix → why this test does not run it
NOT_RUN: dict[str, str] = {
    "make demo": "tests/test_demo_model.py serves the demo model; the table it prints is quoted in README.md",
    "make test": "the test suite itself",
    "make engine": "renders model_repository/ in the checkout; test_make_engine_batch_invariant runs it elsewhere",
    ". .venv/bin/activate && tritonserver": "serves until stopped; tests/test_signals.py runs `make serve`",
    "make serve": "fixed ports 8000-8002 and 9000; tests/test_signals.py runs it on free ports",
    "make bench-engine": "a benchmark of tens of minutes (docs/engine.md)",
    "make build/fixture-large-nemotron": "the large benchmark fixture (minutes); docs/engine.md's benchmark",
    "make perf": "needs perf_analyzer (installed from the network) and minutes",
    "python -m build_engine convert --nemo build/fixture-large": "part of the docs/engine.md benchmark",
    "python -m build_engine.repository --checkpoint build/perf-large": "part of the docs/engine.md benchmark",
    "python -m tooling.perf run": "part of the docs/engine.md benchmark (perf_analyzer)",
    "python -m tooling.bench_engine --device cuda": "needs a GPU",
    "python -m tooling.bench_prefix": "a ~10-minute benchmark; tests/test_prefix_cache.py runs its code small",
    "python -m reward_triton.ops.launcher --hosts node1:8,node2:8": "two 8-GPU nodes",
    "python3 -m verl.trainer.main_ppo": "veRL (not installed) training on GPUs; its reward function is run here",
    "reward-openai --url localhost:8001 [--host": "a usage synopsis; the README's full command is run",
    "NEMO=/shared": "docs/production.md: the 340B / 13B models on H100s",
    "CKPT=/shared": "docs/production.md",
    "ENGINE=/shared": "docs/production.md",
    "mpirun -n 16": "docs/production.md: 16 MPI ranks over the 340B checkpoint",
    "python -m build_engine.trtllm_build": "needs TensorRT-LLM and a GPU",
    "python -m build_engine.repository --checkpoint $CKPT": "docs/production.md (TensorRT-LLM engine)",
    "sbatch scripts/slurm_2x8.sbatch": "Slurm, two 8-GPU nodes",
    "make engine NEMO=$NEMO": "docs/production.md",
    "python -m build_engine convert --nemo $NEMO": "docs/production.md",
    "tritonserver --model-repository=model_repository": "docs/production.md: one H100",
    ".venv/bin/python -m demo.train": "retrains the demo model: 43 minutes",
    "reward-client --url a:8001,b:8001": "two servers; tests/test_replicas_served.py runs annotate over two",
}


def shell_commands(path: Path) -> list[str]:
    """The commands of a file's fenced shell blocks: continuation lines joined, comments and blanks dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        pending = ""
        for line in joined.splitlines():
            pending = f"{pending}\n{line}" if pending else line.strip()
            if not pending or pending.startswith("#"):
                pending = ""
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quoted string goes on over the next line
                continue
            out.append(pending)
            pending = ""
    return out


def all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in DOCS for c in shell_commands(p)]


def excused(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def runnable() -> list[tuple[str, str]]:
    return [(where, c) for where, c in all_commands() if excused(c) is None]


def test_every_documented_command_is_run_or_excused():
    commands = all_commands()
    assert len(commands) > 20
    unknown = [(w, c) for w, c in runnable() if _runner(c) is None]
    assert unknown == [], f"documented commands with no runner and no reason in NOT_RUN: {unknown}"
    stale = [p for p in NOT_RUN if not any(c.startswith(p) for _, c in commands)]
    assert stale == [], f"NOT_RUN entries that match no documented command: {stale}"


# ---- running them --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    options = RenderOptions(torch_threads=1)
    with serve_fixture(tmp_path_factory.mktemp("docs-triton"), arch="nemotron", options=options) as server:
        yield server


def _fill(command: str, server: RunningServer, gateway_port: int | None) -> str:
    """The placeholders a reader fills: addresses, `[optional]` parts, the model path."""
    command = re.sub(OPTIONAL, "", command)  # optional arguments in brackets
    command = command.replace("localhost:8001", server.grpc_url).replace("localhost:8000", server.http_url)
    if gateway_port is not None:
        command = command.replace("localhost:9000", f"127.0.0.1:{gateway_port}")
    if command.startswith("reward-client ") and "--url" not in command:
        command = command.replace("reward-client ", f"reward-client --url {server.grpc_url} ", 1)
    return command


def _example_files(cwd: Path) -> None:
    write_conversations(cwd / "in.jsonl", 5)
    pair = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
    (cwd / "pairs.jsonl").write_text(json.dumps(pair) + "\n" + json.dumps({**pair, "chosen": "four"}) + "\n")
    row = {"id": 1, "prompt": "What is 2+2?", "chosen": ["4"], "rejected": ["5", "6", "7"], "subset": "Math"}
    (cwd / "rb2.jsonl").write_text(json.dumps(row) + "\n")


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("REWARD_API_KEY", None)
    env.update(extra or {})
    return env


def _runner(command: str) -> str | None:
    for prefix in RUNNERS:
        if command.startswith(prefix) or re.match(rf"^(\w+=\S+ )*{re.escape(prefix)}", command):
            return prefix
    return None


RUNNERS = ("reward-client", "reward-openai", "curl", ".venv/bin/python -m build_engine convert", "REWARD_GATEWAY_URL=",
           ".venv/bin/python scripts/")  # fmt: skip


@contextmanager
def _gateway(argv: list[str], env: dict[str, str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/health/live", proc)
        yield
    finally:
        proc.terminate()
        proc.wait(15)


def test_reward_client_and_gateway_commands_run_as_written(served, tmp_path):
    """README's gateway command (API key "secret", port 9000 in the docs) serves the curl requests to :9000;
    docs/rl.md's requests to 127.0.0.1:19000 go to a gateway started as its `make serve` line starts one (no key)."""
    _example_files(tmp_path)
    commands = [c for _, c in runnable()]
    client = [c for c in commands if _runner(c) == "reward-client"]
    gateways = [c for c in commands if _runner(c) == "reward-openai"]
    curls = [c for c in commands if _runner(c) == "curl"]
    rl = [c for c in commands if _runner(c) in ("REWARD_GATEWAY_URL=", ".venv/bin/python scripts/")]
    assert client and gateways and curls and rl
    for command in client:
        run = _run(_fill(command, served, None), tmp_path, _env())
        assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
    (command,) = gateways
    port, rl_port = free_port(), free_port()
    filled = _fill(command, served, port).replace("--port 9000", f"--port {port} --host 127.0.0.1")
    words = shlex.split(filled)
    assignments = dict(w.split("=", 1) for w in words if re.match(r"^\w+=", w))
    argv = [w for w in words if not re.match(r"^\w+=", w)]
    rl_argv = [str(BIN / "reward-openai"), "--url", served.grpc_url, "--host", "127.0.0.1", "--port", str(rl_port),
               "--served-model-name", SERVED_NAME]  # fmt: skip
    with _gateway(argv, _env(assignments), port), _gateway(rl_argv, _env(), rl_port):
        for curl in curls:  # the documented requests against the documented gateways
            filled = _fill(curl, served, port).replace("127.0.0.1:19000", f"127.0.0.1:{rl_port}")
            run = _run(filled, tmp_path, _env(assignments))
            assert run.returncode == 0, f"{curl}\n{run.stderr}"
            body = json.loads(run.stdout)
            if "/v1/chat/completions" in curl:
                content = body["choices"][0]["message"]["content"]
                assert content.startswith("helpfulness:") and body["model"] == SERVED_NAME, body
        for command in rl:
            filled = command.replace("http://127.0.0.1:19000", f"http://127.0.0.1:{rl_port}")
            filled = filled.replace("localhost:18001", served.grpc_url).replace(".venv/bin/python", sys.executable)
            run = _run(filled, ROOT, _env())
            assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
            assert run.stdout.strip(), command


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # answering (401 with a key)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s")


def test_convert_command_runs_as_written(tmp_path):
    (command,) = [c for _, c in runnable() if _runner(c) == ".venv/bin/python -m build_engine convert"]
    nemo = fixtures.write_fixture(tmp_path / "model", arch="nemotron", fmt="zarr")
    filled = re.sub(OPTIONAL, "", command).replace("/path/to/model.nemo", str(nemo))
    filled = filled.replace(".venv/bin/python", sys.executable)
    run = _run(filled, tmp_path, _env())
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "build" / "ckpt" / "config.json").read_text())
    assert config["mapping"]["tp_size"] == 8 and config["mapping"]["pp_size"] == 2


def test_readme_pytriton_snippet_runs_as_written(served):
    text = (ROOT / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "FuturesModelClient" in b]
    code = snippet.replace("http://localhost:8000", f"http://{served.http_url}")
    code += '\nprint("shape", tuple(out["rewards"].shape), out["rewards"].dtype)\n'  # the test's check, after it
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "shape (2, 9) float32", run.stdout  # [B, 9] for a 9-output model


def test_make_engine_batch_invariant(tmp_path):
    """`make engine BATCH_INVARIANT=1` renders a batch-invariant PyTorch engine (outside the checkout)."""
    ckpt_root = tmp_path / "fixture"
    nemo = fixtures.write_fixture(ckpt_root / "nemo", arch="nemotron", fmt="zarr")
    repo = tmp_path / "repo"  # a copy of the templates, so that the checkout's model_repository/ is left alone
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("config.pbtxt", "__pycache__"))
    run = subprocess.run(
        ["make", "--no-print-directory", "engine", f"NEMO={nemo}", f"ENGINE_DIR={tmp_path / 'engine'}",
         f"REPOSITORY={repo}", "BATCH_INVARIANT=1", "DTYPE=float32"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    config = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    assert re.search(r'key: "batch_invariant"\s*value: \{\s*string_value: "true"', config), config
