"""Multi-node serving: the tensorrtllm-backend repository config and the leader-mode mpirun launcher
(`reward_triton/ops/launcher.py`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from production_helpers import ROOT, built_engine, config_340b, parse
from tritonclient.grpc import model_config_pb2

from build_engine import repository
from reward_triton.engine.mapping import Mapping
from reward_triton.metadata import METADATA_FILE, TOKENIZER_FILE
from reward_triton.ops import launcher


# ---------------------------------------------------------------------------------------------- repository
@pytest.fixture(scope="module")
def served(single: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(rendered repository, engine dir) for backend tensorrtllm with a 2×8-node engine config."""
    root = tmp_path_factory.mktemp("served")
    pretrained = {**config_340b(), "mapping": {"world_size": 16, "tp_size": 8, "pp_size": 2, "gpus_per_node": 8}}
    engine = built_engine(root / "engine", pretrained)
    options = repository.RenderOptions(backend="tensorrtllm", max_batch_size=32, kv_cache_free_gpu_mem_fraction=0.85)
    repo = repository.render_repository(single, root / "repo", engine_dir=engine, options=options)
    return repo, engine


def test_tensorrtllm_backend_config_has_every_knob(served: tuple[Path, Path]) -> None:
    repo, engine = served
    for model in repository.MODELS:
        parse(repo / model / "config.pbtxt")  # every rendered config parses with Triton's schema
    cfg = parse(repo / "tensorrt_llm" / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert cfg.backend == "tensorrtllm" and cfg.max_batch_size == 32
    assert cfg.dynamic_batching.max_queue_delay_microseconds >= 0 and cfg.HasField("dynamic_batching")
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert Path(params["gpt_model_path"]) == engine.resolve()
    assert params["enable_kv_cache_reuse"] == "true"  # engine built with paged context FMHA
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.85"
    assert params["batch_scheduler_policy"] in ("guaranteed_no_evict", "max_utilization")
    outputs = {o.name: o for o in cfg.output}
    assert outputs["generation_logits"].data_type == model_config_pb2.TYPE_FP32
    assert list(outputs["generation_logits"].dims) == [-1, -1, -1]
    assert not any("${" in v for v in params.values())
    for name in (METADATA_FILE, TOKENIZER_FILE):  # the stages read these from the engine dir
        assert (engine / name).is_file()


# ---------------------------------------------------------------------------------------------- launcher
def _contexts(cmd: list[str]) -> tuple[list[str], list[list[str]]]:
    """(global mpirun options, one argv per app context)."""
    first = cmd.index("-n")
    contexts, cur = [], []
    for tok in cmd[first:]:
        if tok == ":":
            contexts.append(cur)
            cur = []
        else:
            cur.append(tok)
    return cmd[:first], [*contexts, cur]


def test_launcher_2x8_command_line(served: tuple[Path, Path], capsys) -> None:
    repo, engine = served
    rc = launcher.main(["--hosts", "node1:8,node2:8", "--model-repository", str(repo), "--engine-dir", str(engine)])
    assert rc == 0
    cmd = capsys.readouterr().out.split()
    head, ctx = _contexts(cmd)
    assert head == [
        *("mpirun", "--allow-run-as-root", "--host", "node1:8,node2:8", "--map-by", "slot"),
        *("-x", "REWARD_TRITON_RESTART=0"),  # a rank that fails exits; the launcher restarts the whole job
    ]
    assert len(ctx) == 16
    common = ["-n", "1", "tritonserver", f"--model-repository={repo}", "--disable-auto-complete-config"]
    assert ctx[0] == [
        *common,
        "--backend-config=python,shm-region-prefix-name=prefix0_",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
    ]
    for rank in range(1, 16):
        assert ctx[rank] == [
            *common,
            f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
            "--model-control-mode=explicit",
            "--load-model=tensorrt_llm",
            "--allow-http=false",
            "--allow-grpc=false",
            "--allow-metrics=false",
        ]


def test_launcher_hostfile_env_and_mismatches(served: tuple[Path, Path], tmp_path: Path) -> None:
    repo, engine = served
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two DGX H100\nnode1 slots=8\nnode2 slots=8 max_slots=8\n")
    hosts = launcher.parse_hostfile(hostfile)
    assert hosts == launcher.parse_hosts("node1:8,node2:8")
    cmd, warnings = launcher.plan(repo, hosts, None, launcher.LaunchOptions(env=("NCCL_IB_HCA",)))
    assert ["-x", "NCCL_IB_HCA"] in [cmd[i : i + 2] for i in range(len(cmd))] and warnings == []

    def fails(hosts: str | None, match: str, engine_dir: Path | None = None) -> None:
        parsed = launcher.parse_hosts(hosts) if hosts else None
        with pytest.raises(launcher.LaunchError, match=match):
            launcher.plan(repo, parsed, engine_dir)

    fails("node1:8,node2:4", "give 12 slots but the engine has world size 16")
    fails("a:4,b:4,c:4,d:4", "host a has 4 slots but the engine was built with gpus_per_node 8")
    fails("a:6,b:10", "host a has 6 slots")
    fails(None, "world size 16 > gpus_per_node 8: pass --hosts")
    fails("node1:8,node2:8", "differs from gpt_model_path", engine_dir=tmp_path)
    with pytest.raises(launcher.LaunchError, match="listed twice"):
        launcher.parse_hosts("n1:8,n1:8")
    with pytest.raises(launcher.LaunchError, match="not NAME:SLOTS"):
        launcher.parse_hosts("n1:eight")


def test_launcher_needs_rendered_tensorrtllm_repository(tmp_path: Path) -> None:
    with pytest.raises(launcher.LaunchError, match="not rendered"):
        launcher.plan(tmp_path, None)


def test_launcher_warns_when_tp_straddles_nodes() -> None:
    layout = Mapping(tp=16, pp=1, gpus_per_node=8)
    assert "straddle" in launcher.check_hosts(layout, launcher.parse_hosts("a:8,b:8"))[0]


def test_slurm_script_uses_the_launcher() -> None:
    text = (ROOT / "scripts" / "slurm_2x8.sbatch").read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text
    assert "-m reward_triton.ops.launcher --hosts" in text and "--exec" in text
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_2x8.sbatch")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
