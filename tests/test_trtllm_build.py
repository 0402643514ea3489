"""`trtllm-build` for the converted checkpoint: the command line, atomic engine directory and side files; plus a real
tiny TensorRT-LLM engine against the PyTorch engine where tensorrt_llm is installed (GPU)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from production_helpers import config_340b, leftovers, standin_trtllm_build

from build_engine import convert, trtllm_build
from reward_triton.engine.mapping import Mapping
from reward_triton.engine.model import TorchEngine
from reward_triton.metadata import METADATA_FILE, TOKENIZER_FILE, RewardMetadata
from reward_triton.ops import launcher
from tooling import fixtures
from tooling.nemo_writer import write_nemo_checkpoint


# ---------------------------------------------------------------------------------------------- trtllm-build
def test_trtllm_build_argv_for_340b_tp8_pp2() -> None:
    opts = trtllm_build.BuildOptions(max_batch_size=32, max_num_tokens=8192, workers=8)
    argv = trtllm_build.build_argv(Path("/ckpt"), Path("/engine"), config_340b(), opts)
    assert argv == [
        "trtllm-build",
        "--checkpoint_dir", "/ckpt",
        "--output_dir", "/engine",
        "--gemm_plugin", "bfloat16",
        "--gpt_attention_plugin", "bfloat16",
        "--remove_input_padding", "enable",
        "--kv_cache_type", "paged",
        "--context_fmha", "enable",
        "--use_paged_context_fmha", "enable",
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
    cfg = config_340b()
    build = trtllm_build.build_argv
    argv = build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(workers=64, extra_args=("--fast_build",)))
    assert argv[argv.index("--workers") + 1] == "16" and argv[-1] == "--fast_build"  # workers <= world size
    with pytest.raises(trtllm_build.BuildError, match="max_num_tokens 2048 < max_input_len 4096"):
        build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(max_num_tokens=2048, paged_context_fmha=False))
    # with paged context FMHA (the default) the rendered config turns chunked context on instead
    assert "2048" in build(Path("c"), Path("e"), cfg, trtllm_build.BuildOptions(max_num_tokens=2048))
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
    assert not (tmp_path / "engine").exists() and leftovers(tmp_path, "engine") == []
    assert trtllm_build.main(["--checkpoint", str(single), "--output", "e", "--print"]) == 0
    assert capsys.readouterr().out.startswith("trtllm-build --checkpoint_dir ")


def _fake_exe(tmp_path: Path, fail: bool = False, gpus_flag: bool = True) -> str:
    return standin_trtllm_build(tmp_path, fail=fail, gpus_flag=gpus_flag)


def test_build_engine_atomic_with_side_files_and_gpus_per_node(single: Path, tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    # the fixture's 3 layers over PP 2: correct with TensorRT-LLM >= 0.16, which the operator vouches for here
    opts = trtllm_build.BuildOptions(max_input_len=64, max_num_tokens=256, gpus_per_node=4, allow_uneven_pp=True)
    trtllm_build.build_engine(single, engine, opts, executable=_fake_exe(tmp_path))
    names = sorted(p.name for p in engine.iterdir())
    assert names == sorted(["config.json", METADATA_FILE, TOKENIZER_FILE, *(f"rank{r}.engine" for r in range(8))])
    # every stage enforces the BUILT engine's max_input_len (64), not the checkpoint's
    assert RewardMetadata.load(single).max_input_len != 64 and RewardMetadata.load(engine).max_input_len == 64
    mapping = json.loads((engine / "config.json").read_text())["pretrained_config"]["mapping"]
    assert mapping == {"world_size": 8, "tp_size": 4, "pp_size": 2, "gpus_per_node": 4}
    assert launcher.engine_mapping(engine) == Mapping(4, 2, gpus_per_node=4)
    assert "gpus_per_node" not in json.loads((single / "config.json").read_text())["mapping"]  # source untouched

    with pytest.raises(trtllm_build.BuildError, match="exit status 3"):
        trtllm_build.build_engine(single, engine, opts, executable=_fake_exe(tmp_path, fail=True))
    assert (engine / "rank7.engine").is_file() and leftovers(tmp_path, "engine") == []  # previous engine kept


def test_gpus_per_node_reaches_the_engine_with_or_without_the_flag(single: Path, tmp_path: Path) -> None:
    """0.13-0.19 trtllm-build overwrites the checkpoint's gpus_per_node with its own --gpus_per_node (default 8):
    the flag is passed where it exists; where it does not, the checkpoint view carries the value."""
    opts = trtllm_build.BuildOptions(max_input_len=64, max_num_tokens=256, gpus_per_node=4, allow_uneven_pp=True)
    for gpus_flag in (True, False):
        d = tmp_path / str(gpus_flag)
        d.mkdir()
        engine = trtllm_build.build_engine(single, d / "engine", opts, executable=_fake_exe(d, gpus_flag=gpus_flag))
        assert json.loads((engine / "config.json").read_text())["pretrained_config"]["mapping"]["gpus_per_node"] == 4
    # no option: the checkpoint's value (none: TensorRT-LLM's 8) is passed explicitly
    d = tmp_path / "default"
    d.mkdir()
    engine = trtllm_build.build_engine(
        single, d / "engine", trtllm_build.BuildOptions(max_input_len=64, allow_uneven_pp=True), executable=_fake_exe(d)
    )
    assert json.loads((engine / "config.json").read_text())["pretrained_config"]["mapping"]["gpus_per_node"] == 8


def test_uneven_pipeline_split_needs_trtllm_0_16() -> None:
    cfg = {**config_340b(), "num_hidden_layers": 95}  # 95 layers over PP 2: 48 + 47 (tensor_split) vs 47 + 47 + ...
    opts = trtllm_build.BuildOptions()
    for version in (None, (0, 13), (0, 15)):
        with pytest.raises(trtllm_build.BuildError, match="do not divide evenly"):
            trtllm_build.check_pipeline_split(cfg, opts, version)
    trtllm_build.check_pipeline_split(cfg, opts, (0, 16))
    trtllm_build.check_pipeline_split(cfg, opts, (1, 2))
    trtllm_build.check_pipeline_split(cfg, trtllm_build.BuildOptions(allow_uneven_pp=True), None)
    trtllm_build.check_pipeline_split(config_340b(), opts, None)  # 96 layers over PP 2: even
    # the version is asked of the interpreter that runs trtllm-build (the container's, not this virtualenv's)
    assert trtllm_build.installed_trtllm_version(sys.executable) is None


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
    # TensorRT-LLM runs lm_head in bf16 and casts the logits to fp32; the PyTorch engine's head is fp32: the engine
    # rewards carry bf16 rounding of the head's inputs and weights, which this tolerance allows.
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.1)
