"""The `tritonserver` entry point: bundled binary + backend dir + environment, or a real Triton install."""

from __future__ import annotations

import os
import site
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from reward_triton.ops import server


def test_bundled_command_sets_up_backend_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "REAL_TRITON", tmp_path / "absent")
    cmd, env = server.server_command(["--model-repository=model_repository"], env={"PATH": "/usr/bin"})
    assert cmd[0] == str(server.bundled_binary()) and Path(cmd[0]).is_file()
    assert cmd[1] == "--model-repository=model_repository"
    backend = Path(cmd[2].removeprefix("--backend-directory="))
    names = {p.name for p in (backend / "python").iterdir()}
    assert {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"} <= names
    stub = (backend / "python" / "triton_python_backend_stub").resolve()
    assert stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0].endswith("nvidia_pytriton.libs")
    pythonpath = env["PYTHONPATH"].split(os.pathsep)
    assert pythonpath[0] == str(server.PROJECT_ROOT) and site.getsitepackages()[0] in pythonpath
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_user_backend_directory_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "REAL_TRITON", tmp_path / "absent")
    cmd, _ = server.server_command(["--backend-directory=/x"], env={})
    assert [a for a in cmd if a.startswith("--backend-directory")] == ["--backend-directory=/x"]


def test_real_triton_install_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "tritonserver"
    real.write_text("#!/bin/sh\n")
    monkeypatch.setattr(server, "REAL_TRITON", real)
    cmd, env = server.server_command(["--model-repository=r"], env={})
    assert cmd == [str(real), "--model-repository=r"] and "LD_LIBRARY_PATH" not in env
    assert env["PYTHONPATH"] == str(server.PROJECT_ROOT)
    cmd, _ = server.server_command([], env={server.OVERRIDE_ENV: "bundled"})
    assert cmd[0] == str(server.bundled_binary())
    with pytest.raises(server.ServerStartError, match="no such tritonserver"):
        server.server_command([], env={server.OVERRIDE_ENV: str(tmp_path / "nope")})


def test_backend_dir_is_built_once(tmp_path: Path) -> None:
    first = server.backend_dir(tmp_path)
    link = first / "python" / "libtriton_python.so"
    before = link.lstat().st_mtime_ns
    assert server.backend_dir(tmp_path) == first and link.lstat().st_mtime_ns == before
    link.unlink()
    assert (server.backend_dir(tmp_path) / "python" / "libtriton_python.so").is_symlink()


def test_console_script_is_declared() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "tritonserver"]
    assert ep.value == "reward_triton.ops.server:main"


@pytest.mark.server
def test_server_process_retries_on_a_taken_port(tmp_path: Path) -> None:
    """A real (empty-repository) server: a port taken between choosing and binding is retried on fresh ports."""
    import socket
    import urllib.request

    repo = tmp_path / "repo"
    repo.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = server.ServerProcess(repository=repo, log_path=tmp_path / "log", http_port=port)
        with proc:
            assert proc.http_port != port and proc.is_ready()
            with urllib.request.urlopen(f"http://{proc.http_url}/v2/health/live", timeout=5) as r:
                assert r.status == 200
        assert proc.proc is not None and proc.proc.poll() is not None  # stopped on exit
    assert proc.http_port != port
