"""Leader-mode launcher for multi-GPU / multi-node serving: one `tritonserver` per engine rank under `mpirun` (MPMD).

    python -m reward_triton.ops.launcher --hosts node1:8,node2:8 --model-repository model_repository [--exec]

MPI rank 0 (the leader, on the first host) serves HTTP/gRPC/metrics and runs the whole ensemble; ranks > 0 load
only `tensorrt_llm` (explicit model control) with every endpoint off, and take part in the engine's TP/PP
collectives. Open MPI fills the hosts in order, so ranks 0..g-1 land on the first host, g..2g-1 on the second:
the engine's `gpus_per_node` must equal the slots per host, and its world size the total slot count — both are
checked against the engine's `config.json` before anything starts. The engine and model repository must be on
storage every node sees, at the same path. Without `--exec` the command is printed (shell-quoted).

With `--openai-port P` the launcher also runs the OpenAI-compatible reward API (`reward-openai`, docs/openai.md)
beside mpirun, pointed at the leader's gRPC port; run the launcher on the leader node (the first host) so that the
gateway listens there. Without `--exec` its command is printed as a second line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reward_triton.engine.mapping import Mapping, MappingError
from reward_triton.ops.supervisor import RESTART_ENV

ENGINE_MODEL = "tensorrt_llm"


class LaunchError(ValueError):
    """Hosts, engine and model repository do not fit together; the message says which value disagrees."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int


@dataclass(frozen=True)
class LaunchOptions:
    tritonserver: str = "tritonserver"
    mpirun: str = "mpirun"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_run_as_root: bool = True
    env: tuple[str, ...] = ()  # variable names forwarded to every rank (mpirun -x NAME)
    mpirun_args: tuple[str, ...] = ()
    server_args: tuple[str, ...] = ()  # appended to every tritonserver
    openai_port: int | None = None  # run reward-openai beside mpirun on this port
    openai_host: str = "0.0.0.0"
    openai_args: tuple[str, ...] = ()  # e.g. --served-model-name NAME
    reward_openai: str = "reward-openai"


def parse_hosts(text: str) -> list[Host]:
    """`node1:8,node2:8` → hosts in order (a bare name means 1 slot, as in mpirun --host)."""
    hosts: list[Host] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, slots = item.partition(":")
        try:
            n = int(slots) if slots else 1
        except ValueError as e:
            raise LaunchError(f"--hosts: '{item}' is not NAME:SLOTS") from e
        if not name or n < 1:
            raise LaunchError(f"--hosts: '{item}' needs a host name and a positive slot count")
        hosts.append(Host(name, n))
    if not hosts:
        raise LaunchError("--hosts: no hosts given")
    _check_unique(hosts)
    return hosts


def parse_hostfile(path: str | os.PathLike[str]) -> list[Host]:
    """Open MPI hostfile: `name slots=N` per line (`#` comments; a line without slots= means 1 slot)."""
    hosts: list[Host] = []
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *fields = line.split()
        slots = 1
        for f in fields:
            key, _, value = f.partition("=")
            if key == "slots":
                try:
                    slots = int(value)
                except ValueError as e:
                    raise LaunchError(f"{path}:{lineno}: bad slot count '{value}'") from e
        if slots < 1:
            raise LaunchError(f"{path}:{lineno}: slot count must be positive")
        hosts.append(Host(name, slots))
    if not hosts:
        raise LaunchError(f"{path}: no hosts")
    _check_unique(hosts)
    return hosts


def _check_unique(hosts: list[Host]) -> None:
    names = [h.name for h in hosts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LaunchError(f"hosts listed twice: {', '.join(dup)}")


def engine_mapping(engine_dir: str | os.PathLike[str]) -> Mapping:
    """Mapping of a trtllm-build output (`config.json` {pretrained_config: {mapping}}), or of a checkpoint."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        raise LaunchError(f"{path}: missing (not a TensorRT-LLM engine directory)")
    try:
        return Mapping.of_config(json.loads(path.read_text()), str(path))
    except MappingError as e:
        raise LaunchError(str(e)) from None


def check_hosts(layout: Mapping, hosts: Sequence[Host] | None) -> list[str]:
    """Raise if the hosts cannot run the engine's ranks on the GPUs it was built for; return warnings."""
    g, world = layout.gpus_per_node, layout.world_size
    if hosts is None:  # single node, local launch
        if world > g:
            raise LaunchError(f"engine world size {world} > gpus_per_node {g}: pass --hosts for a multi-node run")
        return []
    total = sum(h.slots for h in hosts)
    if total != world:
        listing = ",".join(f"{h.name}:{h.slots}" for h in hosts)
        raise LaunchError(
            f"hosts {listing} give {total} slots but the engine has world size {world} (TP{layout.tp}xPP{layout.pp})"
        )
    for i, h in enumerate(hosts):
        last = i == len(hosts) - 1
        if h.slots > g or (not last and h.slots != g):
            raise LaunchError(
                f"host {h.name} has {h.slots} slots but the engine was built with gpus_per_node {g}: "
                f"every host but the last must have exactly {g} (rebuild with --gpus-per-node, or fix --hosts)"
            )
    warnings = []
    if len(hosts) > 1 and g % layout.tp:
        warnings.append(
            f"tensor-parallel groups of {layout.tp} straddle nodes of {g} GPUs: all-reduce crosses the network"
        )
    return warnings


def _rendered_engine_dir(repository: Path) -> Path:
    """gpt_model_path of the rendered tensorrt_llm config (and a check that it is the C++ tensorrtllm backend)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repository / ENGINE_MODEL / "config.pbtxt"
    if not path.is_file():
        raise LaunchError(f"{path}: not rendered (run `make engine BACKEND=tensorrtllm` first)")
    try:
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise LaunchError(f"{path}: not a valid Triton model config: {e}") from e
    if cfg.backend != "tensorrtllm":
        raise LaunchError(f"{path}: backend is '{cfg.backend}', leader mode needs the C++ 'tensorrtllm' backend")
    if "gpt_model_path" not in cfg.parameters:
        raise LaunchError(f"{path}: parameter gpt_model_path is missing")
    return Path(cfg.parameters["gpt_model_path"].string_value)


def server_args(rank: int, repository: Path, opts: LaunchOptions) -> list[str]:
    args = [
        opts.tritonserver,
        f"--model-repository={repository}",
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
    ]
    if rank == 0:
        ports = (("http", opts.http_port), ("grpc", opts.grpc_port), ("metrics", opts.metrics_port))
        args += [f"--{kind}-port={port}" for kind, port in ports]
    else:
        args += [
            "--model-control-mode=explicit",
            f"--load-model={ENGINE_MODEL}",
            "--allow-http=false",
            "--allow-grpc=false",
            "--allow-metrics=false",
        ]
    return args + list(opts.server_args)


def mpirun_command(
    world_size: int, repository: Path, hosts: Sequence[Host] | None, opts: LaunchOptions | None = None
) -> list[str]:
    """mpirun [global options] -n 1 <leader> : -n 1 <worker 1> : ... (one app context per engine rank)."""
    opts = opts or LaunchOptions()
    cmd = [opts.mpirun]
    if opts.allow_run_as_root:
        cmd.append("--allow-run-as-root")
    if hosts is not None:
        cmd += ["--host", ",".join(f"{h.name}:{h.slots}" for h in hosts), "--map-by", "slot"]
    cmd += ["-x", f"{RESTART_ENV}=0"]  # a rank does not restart alone: the launcher restarts the whole job
    for name in opts.env:
        cmd += ["-x", name]
    cmd += list(opts.mpirun_args)
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1", *server_args(rank, repository, opts)]
    return cmd


def openai_command(hosts: Sequence[Host] | None, opts: LaunchOptions) -> list[str] | None:
    """`reward-openai` pointed at the leader's (rank 0, first host) gRPC port, or None without --openai-port."""
    if opts.openai_port is None:
        return None
    leader = hosts[0].name if hosts else "127.0.0.1"
    url = f"{leader}:{opts.grpc_port}"
    return [
        opts.reward_openai,
        "--url",
        url,
        "--port",
        str(opts.openai_port),
        "--host",
        opts.openai_host,
        *opts.openai_args,
    ]


def run_supervised(cmd: list[str], leader_http: str, gateway_cmd: list[str] | None = None) -> int:
    """Run mpirun under `reward_triton.ops.supervisor` (restarted whole when it fails after having served, e.g. a rank
    whose stub died), with the gateway beside it when asked; mpirun's status once it is stopped."""
    from reward_triton.ops.signals import die_with_parent
    from reward_triton.ops.supervisor import Supervisor

    job = Supervisor(cmd, dict(os.environ), endpoint=leader_http, watch_stubs=False)
    if gateway_cmd is None:
        return job.run()
    gateway = subprocess.Popen(gateway_cmd, preexec_fn=die_with_parent)
    try:
        return job.run()
    finally:
        gateway.terminate()
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()


def plan(
    repository: str | os.PathLike[str],
    hosts: Sequence[Host] | None,
    engine_dir: str | os.PathLike[str] | None = None,
    opts: LaunchOptions | None = None,
) -> tuple[list[str], list[str]]:
    """Validate everything and return (mpirun argv, warnings)."""
    repo = Path(repository).absolute()
    rendered = _rendered_engine_dir(repo)
    engine = Path(engine_dir).absolute() if engine_dir is not None else rendered
    if engine_dir is not None and engine.resolve() != rendered.resolve():
        raise LaunchError(
            f"--engine-dir {engine} differs from gpt_model_path {rendered} in the rendered {ENGINE_MODEL} config"
        )
    layout = engine_mapping(engine)
    warnings = check_hosts(layout, hosts)
    return mpirun_command(layout.world_size, repo, hosts, opts), warnings


def parser() -> argparse.ArgumentParser:
    d = LaunchOptions()
    p = argparse.ArgumentParser(
        prog="python -m reward_triton.ops.launcher",
        description="Serve a TP×PP TensorRT-LLM engine with one tritonserver per GPU rank (leader mode, mpirun MPMD).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--hosts", help="NAME:SLOTS,... in rank order, e.g. node1:8,node2:8 (default: this node)")
    where.add_argument("--hostfile", help="Open MPI hostfile ('NAME slots=N' per line)")
    p.add_argument("--model-repository", required=True, help="rendered repository (shared storage)")
    p.add_argument("--engine-dir", help="engine directory; must match the rendered gpt_model_path (default: it)")
    p.add_argument("--tritonserver", default=d.tritonserver)
    p.add_argument("--mpirun", default=d.mpirun)
    p.add_argument("--http-port", type=int, default=d.http_port)
    p.add_argument("--grpc-port", type=int, default=d.grpc_port)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port)
    p.add_argument("--no-allow-run-as-root", action="store_true")
    p.add_argument("-x", "--env", action="append", default=[], help="forward this environment variable (repeatable)")
    p.add_argument("--mpirun-args", default="", help="extra mpirun options, one shell-quoted string")
    p.add_argument("--server-args", default="", help="extra tritonserver options for every rank")
    p.add_argument("--openai-port", type=int, help="also run reward-openai (OpenAI-compatible reward API) on this port")
    p.add_argument("--openai-host", default=d.openai_host, help="address reward-openai listens on")
    p.add_argument("--openai-args", default="", help="extra reward-openai options, e.g. '--served-model-name NAME'")
    p.add_argument("--exec", action="store_true", help="run mpirun (restarted after a failure) instead of printing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        hosts = parse_hosts(a.hosts) if a.hosts else parse_hostfile(a.hostfile) if a.hostfile else None
        opts = LaunchOptions(
            tritonserver=a.tritonserver,
            mpirun=a.mpirun,
            http_port=a.http_port,
            grpc_port=a.grpc_port,
            metrics_port=a.metrics_port,
            allow_run_as_root=not a.no_allow_run_as_root,
            env=tuple(a.env),
            mpirun_args=tuple(shlex.split(a.mpirun_args)),
            server_args=tuple(shlex.split(a.server_args)),
            openai_port=a.openai_port,
            openai_host=a.openai_host,
            openai_args=tuple(shlex.split(a.openai_args)),
        )
        cmd, warnings = plan(a.model_repository, hosts, a.engine_dir, opts)
    except (LaunchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    gateway = openai_command(hosts, opts)
    if a.exec:
        sys.stdout.flush()
        leader = hosts[0].name if hosts else "127.0.0.1"
        return run_supervised(cmd, f"{leader}:{opts.http_port}", gateway)
    print(shlex.join(cmd))
    if gateway is not None:
        print(shlex.join(gateway))
    return 0


if __name__ == "__main__":
    from reward_triton.ops.signals import run_stoppable

    sys.exit(run_stoppable(main, "launcher"))
