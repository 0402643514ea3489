"""`tritonserver` console entry point, and a managed server process for tests and benchmarks.

Without a Triton install, this runs the real tritonserver 2.51 binary bundled in the `nvidia-pytriton` wheel,
with what that binary needs that a plain `tritonserver` call would not give it:
- a backend directory `<dir>/python/` holding the bundled libtriton_python.so, triton_python_backend_utils.py
  and the python backend stub for this interpreter's version (built once, symlinks);
- LD_LIBRARY_PATH with `site-packages/nvidia_pytriton.libs` (the stub needs its bundled cudart);
- PYTHONPATH with the project root and this virtualenv's site-packages (the stub embeds the system's libpython,
  and editable-install .pth files are not processed for PYTHONPATH entries).
Where a real Triton install exists (/opt/tritonserver/bin/tritonserver), it is used instead; the environment
variable REWARD_TRITON_SERVER overrides the choice: "bundled", or the path of a tritonserver binary.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reward_triton.ops.signals import die_with_parent
from reward_triton.ops.supervisor import default_shm_prefix, shm_prefix, supervise

REAL_TRITON = Path("/opt/tritonserver/bin/tritonserver")
OVERRIDE_ENV = "REWARD_TRITON_SERVER"
MMAP_THRESHOLD = 1 << 20
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ServerStartError(RuntimeError):
    pass


# ---- locating the bundled server -------------------------------------------------------------------------
def pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("nvidia-pytriton is not installed: it provides the bundled tritonserver (make install)")
    return Path(list(spec.submodule_search_locations)[0])


def bundled_binary() -> Path:
    return pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def bundled_libs() -> Path:
    return pytriton_dir().parent / "nvidia_pytriton.libs"


def backend_dir(cache: Path | None = None) -> Path:
    """A backend directory whose `python/` holds the python backend and this interpreter's stub."""
    root = pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for src in sources.values():
        if not src.is_file():
            raise ServerStartError(f"{src}: missing from the nvidia-pytriton install (python {version})")
    base = cache or Path(sys.prefix) / "share" / "reward-triton"
    target = base / f"backends-py{version}"
    if all(_links_to(target / "python" / name, src) for name, src in sources.items()):
        return target
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=base))
    except PermissionError:
        if cache is not None:
            raise
        return backend_dir(Path.home() / ".cache" / "reward-triton")
    (tmp / "python").mkdir()
    for name, src in sources.items():
        (tmp / "python" / name).symlink_to(src.resolve())
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process built it at the same moment
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _links_to(link: Path, src: Path) -> bool:
    return link.is_symlink() and link.resolve() == src.resolve()


def _prepend(env: dict[str, str], key: str, paths: Sequence[str | Path]) -> None:
    parts = [str(p) for p in paths] + [p for p in env.get(key, "").split(os.pathsep) if p]
    env[key] = os.pathsep.join(dict.fromkeys(parts))


def server_command(args: Sequence[str], env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run tritonserver with `args`."""
    env = dict(os.environ if env is None else env)
    choice = env.get(OVERRIDE_ENV, "")
    args = list(args)
    if choice != "bundled" and (choice or REAL_TRITON.is_file()):
        binary = Path(choice or REAL_TRITON)
        if not binary.is_file():
            raise ServerStartError(f"{OVERRIDE_ENV}={choice}: no such tritonserver binary")
        _prepend(env, "PYTHONPATH", [PROJECT_ROOT])
        return [str(binary), *args], env
    binary = bundled_binary()
    if not any(a == "--backend-directory" or a.startswith("--backend-directory=") for a in args):
        args.append(f"--backend-directory={backend_dir()}")
    _prepend(env, "LD_LIBRARY_PATH", [bundled_libs()])
    _prepend(env, "PYTHONPATH", [PROJECT_ROOT, *site.getsitepackages()])
    # The stub embeds an isolated interpreter (PYTHONPATH ignored) that finds its prefix from `python3` on PATH.
    _prepend(env, "PATH", [Path(sys.executable).parent])
    return [str(binary), *args], env


def bounded_memory(args: list[str], env: dict[str, str]) -> None:
    """Defaults that keep large (even rejected) requests from growing the server for good (docs/serving.md, Memory):
    - a fixed glibc mmap threshold for the server and its stubs, so buffers of 1 MiB and more are mapped and
      unmapped rather than kept in the heap (glibc's default threshold adapts upward to the largest buffer freed,
      up to 32 MiB, after which large requests leave their bytes in heaps that are never returned);
    - no pool of reusable gRPC request/response objects: a pooled protobuf keeps the capacity of the largest
      request it ever held (8 pooled objects × a 20 MB request = 160 MB kept)."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}"]))
    if not any(a.startswith("--grpc-infer-allocation-pool-size") for a in args):
        args.append("--grpc-infer-allocation-pool-size=0")
    if shm_prefix(args) is None:  # a prefix of ours, so that a later start can clean up after this one
        args.append(f"--backend-config=python,shm-region-prefix-name={default_shm_prefix()}")


def main(argv: Sequence[str] | None = None) -> None:
    """`tritonserver ARGS`: the server under `reward_triton.ops.supervisor` (restarts it when it or a stub dies)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd, env = server_command(args)
    except ServerStartError as e:
        print(f"tritonserver: {e}", file=sys.stderr)
        sys.exit(1)
    if any(a in ("--help", "-h", "--version") for a in args):
        os.execve(cmd[0], cmd, env)
    bounded_memory(cmd, env)
    sys.exit(supervise(cmd, env))


# ---- a managed server process -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A tritonserver on free local ports; `start()` returns once every model is ready."""

    repository: Path
    log_path: Path
    extra_args: Sequence[str] = ()
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def args(self) -> list[str]:
        prefix = f"rt{os.getpid()}_{uuid.uuid4().hex[:8]}_"  # several servers on one machine must not share shm
        return [
            f"--model-repository={Path(self.repository).resolve()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--backend-config=python,shm-region-prefix-name={prefix}",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]

    def start(self, timeout: float = 120.0, attempts: int = 3) -> ServerProcess:
        """Start and wait until every model is ready; on a port taken meanwhile, retry on fresh ports."""
        for attempt in range(attempts):
            # Through the entry point itself: proc is the supervisor, the server runs as its child.
            cmd = [sys.executable, "-m", "reward_triton.ops.server", *self.args()]
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                # a session of its own (a terminal's Ctrl-C reaches the owner, which stops it), and SIGTERM when the
                # owner dies without stopping it (even by SIGKILL): the supervisor then stops tritonserver
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
                )
            try:
                self.wait_ready(timeout)
                return self
            except ServerStartError:
                self.stop()
                if attempt + 1 < attempts and "already in use" in self.log_tail(200).lower():
                    self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
                    continue
                raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerStartError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise ServerStartError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # the stubs die with their parent (they watch it)
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
