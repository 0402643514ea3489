"""Keep one tritonserver serving: restart it when it or one of its python backend stubs dies.

Triton 2.51 does not recover from a dead python backend stub (SIGKILL, OOM kill): every later request of that model
fails with INTERNAL "Stub process ... is not healthy" while `/v2/health/ready` stays 200. The `tritonserver` entry
point therefore runs the server as a child in its own process group and watches it:

- a stub that disappears or turns zombie while Triton still lists its model as loaded, or the server process
  exiting, is a fault: the whole process group is killed (stubs ignore SIGTERM once their parent is gone), the dead
  server's shared-memory regions are removed, and the server is started again after a backoff (0.5 s doubling
  to 30 s, reset after 30 s of health). While it restarts its endpoints are closed, so readiness probes fail;
  in-flight requests fail with UNAVAILABLE or INTERNAL "... not healthy", which clients retry.
- a server that exits before it was ever ready (a bad repository, a port in use) is not restarted: its exit status
  is returned, as a plain tritonserver would. Once it has served, every later failure is restarted (backoff).
- with `restart=False` (set by the multi-node launcher through REWARD_TRITON_RESTART=0: an MPI rank cannot rejoin
  its job alone), a fault ends this process with a non-zero status instead, so that mpirun stops the whole job;
  the launcher runs mpirun under the same supervisor (`watch_stubs=False`) and restarts the whole job.
- at start, stubs orphaned by an earlier server that died (their parent pid gone) are killed, and python-backend
  shared-memory regions that no process maps any more are removed.
SIGTERM/SIGINT/SIGHUP are passed to the server; a server that has not exited `--exit-timeout-secs` + 15 s later is
killed with its group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STUB = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")
# The python-backend region prefixes this project gives its servers (the entry point's `rtsvUID_`, the launcher's
# `prefixN_`, the test harness's `rtPID_HEX_`), each followed by a uuid4 in a region's name. Only these are cleaned
# up: Triton's default prefix may belong to a server in another container sharing /dev/shm (docker --ipc=host),
# whose processes this one cannot see.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_KNOWN_PREFIXES = (r"rtsv\d+_", r"prefix\d+_", r"rt\d+_(?:[0-9a-f]{8}_)?")


def default_shm_prefix() -> str:
    return f"rtsv{os.getuid()}_"


def _ours(region: str, prefixes: Sequence[str] = ()) -> bool:
    pattern = "(?:" + "|".join([*_KNOWN_PREFIXES, *map(re.escape, prefixes)]) + f"){_UUID}"
    return re.fullmatch(pattern, region) is not None


POLL_S = 0.2
BACKOFF_S = (0.5, 30.0)
HEALTHY_RESET_S = 30.0
RESTART_ENV = "REWARD_TRITON_RESTART"


def log(message: str) -> None:
    print(f"[reward-triton supervisor] {message}", file=sys.stderr, flush=True)


# ---- /proc helpers ------------------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def argv_of(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline")
    return raw.split("\0")[:-1] if raw else []


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent to reap it)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return False
    state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        out += [int(c) for c in (_read(f"/proc/{pid}/task/{tid}/children") or "").split()]
    return out


def _own_pids() -> Iterable[int]:
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    yield int(entry)
            except OSError:
                continue


@dataclass(frozen=True)
class Stub:
    """A python backend stub: argv = stub, model.py, shm region, default size, growth size, parent pid, ..."""

    pid: int
    model: str  # the model's directory name (<repository>/<model>/<version>/model.py)
    parent: int
    region: str  # its shared-memory region's name

    @classmethod
    def of(cls, pid: int) -> Stub | None:
        argv = argv_of(pid)
        if len(argv) < 6 or not argv[0].endswith(STUB):
            return None
        try:
            parent = int(argv[5])
        except ValueError:
            return None
        parts = Path(argv[1]).parts
        return cls(pid, parts[-3] if len(parts) >= 3 else argv[1], parent, argv[2])


# ---- clean-up of what a dead server left behind ------------------------------------------------------------------
def kill_orphaned_stubs(prefixes: Sequence[str] = ()) -> list[int]:
    """SIGKILL this user's stubs of this project's servers (by region prefix) whose tritonserver is gone (they
    outlive it and ignore SIGTERM)."""
    killed = []
    for pid in _own_pids():
        stub = Stub.of(pid)
        if stub is None or not alive(pid) or not _ours(stub.region, prefixes):
            continue
        parent_argv = argv_of(stub.parent)
        if alive(stub.parent) and parent_argv and "tritonserver" in Path(parent_argv[0]).name:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    return killed


def _in_use(directory: Path) -> set[str]:
    """Names of the files in `directory` that some process of this user maps or holds open."""
    root = str(directory).rstrip("/") + "/"
    used: set[str] = set()
    for pid in _own_pids():
        for line in (_read(f"/proc/{pid}/maps") or "").splitlines():
            i = line.find(root)
            if i >= 0:
                used.add(line[i + len(root) :].removesuffix(" (deleted)"))
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(root):
                    used.add(target[len(root) :])
        except OSError:
            continue
    return used


def remove_stale_regions(prefixes: Sequence[str] = (), shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove python-backend regions (known prefixes + uuid) of this user that no process maps or holds open."""
    try:
        names = [p.name for p in shm_dir.iterdir() if _ours(p.name, prefixes) and p.stat().st_uid == os.getuid()]
    except OSError:
        return []
    if not names:
        return []
    used = _in_use(shm_dir)
    removed = []
    for name in names:
        if name not in used:
            try:
                (shm_dir / name).unlink()
                removed.append(name)
            except OSError:
                pass
    return removed


def clean_up(prefixes: Sequence[str] = ()) -> None:
    killed = kill_orphaned_stubs(prefixes)
    if killed:
        log(f"killed {len(killed)} python backend stub(s) left by a dead server: {killed}")
        time.sleep(0.2)  # let the kernel drop their mappings
    removed = remove_stale_regions(prefixes)
    if removed:
        log(f"removed {len(removed)} stale shared-memory region(s) of a dead server from {SHM_DIR}")


# ---- the server's own view --------------------------------------------------------------------------------------
def _option(args: Sequence[str], name: str) -> str | None:
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def http_endpoint(args: Sequence[str]) -> str | None:
    """host:port of the server's HTTP endpoint (for readiness and the model index), None when HTTP is off."""
    if (_option(args, "--allow-http") or "true").lower() in ("false", "0", "no", "off"):
        return None
    host = _option(args, "--http-address") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    return f"{host}:{_option(args, '--http-port') or 8000}"


def shm_prefix(args: Sequence[str]) -> str | None:
    for a in args:
        m = re.search(r"(?:^|=)python,shm-region-prefix-name=(.+)$", a)
        if m:
            return m.group(1)
    return None


def _http(endpoint: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{endpoint}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def loaded_models(endpoint: str | None) -> set[str] | None:
    """Names Triton lists as READY, or None when it cannot be asked."""
    if endpoint is None:
        return None
    status, body = _http(endpoint, "/v2/repository/index", "POST")
    if status != 200:
        return None
    try:
        return {m["name"] for m in json.loads(body) if m.get("state") == "READY"}
    except (ValueError, TypeError, KeyError):
        return None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the supervisor dies (no server left running without a watcher)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


# ---- the supervisor -----------------------------------------------------------------------------------------------
@dataclass
class Supervisor:
    """Runs `cmd` (tritonserver, or mpirun for the multi-node launcher) and restarts it on a fault.

    `endpoint`: the HTTP host:port whose /v2/health/ready tells when it serves (None: it has no HTTP endpoint);
    `watch_stubs`: also treat a dead python backend stub among its children as a fault (the server itself)."""

    cmd: list[str]
    env: dict[str, str]
    endpoint: str | None
    restart: bool = True
    watch_stubs: bool = True
    ready_timeout_s: float = 600.0  # a server with HTTP off counts as started after this long without a fault
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _stopping: int = 0  # the signal we were asked to stop with
    _ready_at: float | None = None  # when the current server became ready
    _stubs: dict[int, Stub] = field(default_factory=dict)

    @property
    def args(self) -> list[str]:
        return self.cmd[1:]

    def _clean_up(self) -> None:
        prefix = shm_prefix(self.args)
        clean_up([prefix] if prefix else [])

    def _start(self) -> None:
        self._clean_up()
        self._stubs = {}
        self._ready_at = None
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True, preexec_fn=_die_with_parent)
        if self._stopping:  # asked to stop while starting: pass it on
            self._on_signal(self._stopping, None)

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = signum
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except OSError:
                pass

    def _scan(self) -> list[Stub]:
        """Track the server's current stubs; return the tracked ones that are gone since the last scan."""
        assert self.proc is not None
        for pid in children(self.proc.pid):
            if pid not in self._stubs:
                stub = Stub.of(pid)
                if stub is not None:
                    self._stubs[pid] = stub
        gone = [s for s in self._stubs.values() if not alive(s.pid)]
        for stub in gone:
            del self._stubs[stub.pid]
        return gone

    def _dead_stub(self, ready_once: bool) -> Stub | None:
        """A stub of this server that died while Triton lists its model as loaded (a fault), or None.

        Stubs come and go while models load (config auto-complete runs one), before the endpoint answers; once it
        does, the model index tells a dead instance from one unloaded on purpose (model control)."""
        gone = self._scan()
        if not gone:
            return None
        loaded = loaded_models(self.endpoint)
        for stub in gone:
            if (loaded is None and ready_once) or (loaded is not None and stub.model in loaded):
                return stub
        return None

    def _is_ready(self, started: float) -> bool:
        if self.endpoint is None:
            return time.monotonic() - started > self.ready_timeout_s
        return _http(self.endpoint, "/v2/health/ready")[0] == 200

    def _watch(self) -> str | None:
        """Run until the server stops (None: on request, or a first start that exited before ever being ready) or a
        fault (its description). Once it has served, a restart that fails before readiness is a fault too."""
        assert self.proc is not None
        started = time.monotonic()
        ready_once = False
        while True:
            code = self.proc.poll()
            if code is not None:
                if self._stopping or not (ready_once or self.restarts):
                    return None
                return f"{Path(self.cmd[0]).name} exited with status {code}"
            if self._stopping:  # `run` waits for the exit, up to the stop timeout
                return None
            if self.watch_stubs:  # tracked from the start, so one that dies as readiness comes is seen too
                stub = self._dead_stub(ready_once)
                if stub is not None:
                    return f"the python backend stub of model '{stub.model}' (pid {stub.pid}) died"
            if not ready_once and self._is_ready(started):
                ready_once = True
                self._ready_at = time.monotonic()
                if self.restarts:
                    log(f"serving again (restart {self.restarts})")
            time.sleep(POLL_S)

    def _stop_timeout(self) -> float:
        return float(_option(self.args, "--exit-timeout-secs") or 30) + 15

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        delay = BACKOFF_S[0]
        while True:
            self._start()
            fault = self._watch()
            assert self.proc is not None
            if fault is None:  # stopped on request, or never came up
                try:
                    self.proc.wait(self._stop_timeout())
                except subprocess.TimeoutExpired:
                    log(f"{Path(self.cmd[0]).name} did not exit in time: killing it")
                self._kill_group()
                self._clean_up()
                return 128 + self._stopping if self._stopping and self.proc.returncode < 0 else self.proc.returncode
            self._kill_group()
            if not self.restart:
                log(f"{fault}: stopping ({RESTART_ENV}=0)")
                self._clean_up()
                return 1
            if self._ready_at is not None and time.monotonic() - self._ready_at > HEALTHY_RESET_S:
                delay = BACKOFF_S[0]
            self.restarts += 1
            log(f"{fault}: restarting {Path(self.cmd[0]).name} in {delay:.1f} s (restart {self.restarts})")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self._stopping:
                time.sleep(POLL_S)
            if self._stopping:
                return 128 + self._stopping
            delay = min(delay * 2, BACKOFF_S[1])


def supervise(cmd: list[str], env: dict[str, str]) -> int:
    """Run one tritonserver command line under supervision; its exit status."""
    restart = env.get(RESTART_ENV, "1").lower() not in ("0", "false", "no", "off")
    return Supervisor(cmd, env, endpoint=http_endpoint(cmd[1:]), restart=restart).run()
