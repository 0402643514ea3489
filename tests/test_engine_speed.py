"""The fast engine paths against the Hugging Face oracle: bf16 bound, token chunks, GPU-style KV expansion, fused
attention kernels only (never SDPA's math fallback), dtype "auto", and the served dtype/threads defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from oracle import hf_reward_model, hf_rewards
from torch.profiler import profile
from tritonclient.grpc import model_config_pb2

from build_engine import convert as conv
from build_engine.repository import RenderOptions, render_repository, resolve_torch_options
from reward_triton.engine.model import TorchEngine, checkpoint_dtype
from reward_triton.metadata import RewardMetadata
from tooling import fixtures

ARCHS = ("nemotron", "llama")
# bf16 engine (bf16 GEMMs/attention, fp32 norm statistics and head) against the fp32 oracle on the same bf16
# weights: rewards of std ≈ 1 (|r| ≤ 2.6) differ by at most 0.011 (llama) / 0.023 (nemotron) here.
BF16_BOUND = 0.06


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Converted TP1 checkpoints per arch, stored in float32 and in bfloat16."""
    root = tmp_path_factory.mktemp("speed")
    out = {}
    for arch in ARCHS:
        nemo = fixtures.write_fixture(root / arch, arch=arch, fmt="zarr")
        for dtype in ("float32", "bfloat16"):
            out[arch, dtype] = conv.convert(nemo, root / f"{arch}-{dtype}", tp=1, dtype=dtype, progress=False)
    return out


@pytest.fixture(scope="module")
def oracle() -> dict[str, tuple]:
    out = {}
    for arch in ARCHS:
        spec = fixtures.fixture_spec(arch)
        tensors = {k: v.to(torch.bfloat16) for k, v in fixtures.fixture_tensors(spec, seed=0).items()}
        out[arch] = hf_reward_model(fixtures.fixture_config(spec), tensors)
    return out


def _seqs(vocab: int, lengths=(1, 2, 5, 9, 17, 31, 44, 64, 100), seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _rewards(engine: TorchEngine, ckpt: Path, seqs: list[list[int]]) -> torch.Tensor:
    meta = RewardMetadata.load(ckpt)
    return engine.logits(seqs)[:, : meta.num_attributes] + torch.tensor(meta.head_bias)


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_within_bound_of_fp32_oracle(arch, ckpts, oracle):
    seqs = _seqs(200)
    want = hf_rewards(*oracle[arch], seqs)
    for stored in ("float32", "bfloat16"):
        engine = TorchEngine.from_checkpoint(ckpts[arch, stored], dtype=torch.bfloat16)
        got = _rewards(engine, ckpts[arch, stored], seqs)
        assert got.dtype == torch.float32
        err = (got - want).abs().max().item()
        assert err < BF16_BOUND, (stored, err)
        assert err > 0  # it really computed in bf16


@pytest.mark.parametrize("arch", ARCHS)
def test_token_chunks_and_kv_expansion_match_oracle(arch, ckpts, oracle):
    """Chunk boundaries inside sequences (7 tokens), one chunk, and the GPU path's expanded KV heads, on CPU."""
    seqs = _seqs(200)
    want = hf_rewards(*oracle[arch], seqs)
    engine = TorchEngine.from_checkpoint(ckpts[arch, "float32"])
    for chunk in (0, 7, 64):
        for expand in (False, True):
            engine.chunk_tokens, engine.expand_kv = chunk, expand
            torch.testing.assert_close(_rewards(engine, ckpts[arch, "float32"], seqs), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_runs_the_flash_kernel_never_math(dtype, ckpts):
    """GQA (nemotron fixture: 8 heads / 2 groups) on packed sequences: only the fused CPU flash kernel runs."""
    engine = TorchEngine.from_checkpoint(ckpts["nemotron", "bfloat16"], dtype=dtype)
    assert engine.cfg.num_kv_heads < engine.cfg.num_heads
    with profile() as prof:
        engine.logits(_seqs(200, (3, 40, 77)))
    ops = {e.key: e.count for e in prof.key_averages()}
    assert ops.get("aten::_scaled_dot_product_flash_attention_for_cpu") == 3 * engine.cfg.num_layers
    assert not [k for k in ops if "math" in k], ops


def test_dtype_auto_is_the_checkpoints(ckpts):
    assert checkpoint_dtype(ckpts["llama", "bfloat16"]) == "bfloat16"
    assert checkpoint_dtype(ckpts["llama", "float32"]) == "float32"
    assert TorchEngine.from_checkpoint(ckpts["llama", "bfloat16"], dtype="auto").dtype == torch.bfloat16
    assert TorchEngine.from_checkpoint(ckpts["llama", "float32"], dtype="auto").dtype == torch.float32


def test_served_defaults_dtype_of_checkpoint_threads_measured(ckpts, tmp_path):
    ckpt = ckpts["nemotron", "bfloat16"]
    resolved = resolve_torch_options(ckpt, RenderOptions())
    assert resolved.torch_dtype == "bfloat16" and resolved.torch_threads >= 1
    explicit = resolve_torch_options(ckpt, RenderOptions(torch_dtype="float32", torch_threads=3))
    assert (explicit.torch_dtype, explicit.torch_threads) == ("float32", 3)
    out = render_repository(ckpt, tmp_path / "repo", options=RenderOptions(torch_threads=2))
    cfg = text_format.Parse((out / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["dtype"] == "bfloat16" and params["num_threads"] == "2"
    # no weights to time (metadata-only directory): 1 thread
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert resolve_torch_options(bare, RenderOptions()).torch_threads == 1
