"""Converter + reference engine against the Hugging Face oracle, every weight format × TP×PP; rank-file layout."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from oracle import hf_reward_model, hf_rewards
from safetensors import safe_open

from build_engine import convert as conv
from build_engine.nemo.errors import CheckpointError
from build_engine.spec import SpecError
from reward_triton.engine.model import TorchEngine
from reward_triton.metadata import RewardMetadata
from tooling import fixtures

ARCHS = ("nemotron", "llama")
FORMATS = ("zarr", "torch_dist", "legacy")
LAYOUTS = ((1, 1), (2, 1), (1, 2), (4, 2), (8, 2))
ROOT = Path(__file__).resolve().parents[1]


def _spec(arch: str) -> fixtures.FixtureSpec:
    return fixtures.nemotron_spec() if arch == "nemotron" else fixtures.llama_spec()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("nemo")
    return {(a, f): fixtures.write_fixture(root / f"{a}-{f}", arch=a, fmt=f) for a in ARCHS for f in FORMATS}


@pytest.fixture(scope="module")
def oracle() -> dict[str, tuple]:
    """HF model + head per arch, built from the same tensors the fixtures wrote (rounded to their stored bf16)."""
    out = {}
    for arch in ARCHS:
        spec = _spec(arch)
        tensors = {k: v.to(torch.bfloat16) for k, v in fixtures.fixture_tensors(spec, seed=0).items()}
        out[arch] = hf_reward_model(fixtures.fixture_config(spec), tensors)
    return out


def _sequences(vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (1, 2, 5, 9, 17, 31, 44, 64, 100)]


@pytest.mark.parametrize("tp,pp", LAYOUTS, ids=[f"tp{t}pp{p}" for t, p in LAYOUTS])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_matches_hf_oracle(arch, fmt, tp, pp, ckpts, oracle, tmp_path):
    out = conv.convert(ckpts[arch, fmt], tmp_path / "trt", tp=tp, pp=pp, dtype="float32", progress=False)
    engine = TorchEngine.from_checkpoint(out, dtype=torch.float32)
    meta = RewardMetadata.load(out)
    seqs = _sequences(meta.vocab_size)
    got = engine.logits(seqs)[:, : meta.num_attributes] + torch.tensor(meta.head_bias)
    want = hf_rewards(*oracle[arch], seqs)
    assert got.shape == want.shape == (len(seqs), meta.num_attributes)
    assert want.std() > 1e-2  # the rewards depend on the input: a wrong position or layout would show
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_compact_head_and_bfloat16(ckpts, oracle, tmp_path):
    seqs = _sequences(200)
    want = hf_rewards(*oracle["nemotron"], seqs)
    compact = conv.convert(
        ckpts["nemotron", "zarr"], tmp_path / "c", tp=2, dtype="float32", lm_head="compact", progress=False
    )
    engine = TorchEngine.from_checkpoint(compact)
    assert engine.output_size == 9
    torch.testing.assert_close(
        engine.logits(seqs) + torch.tensor(RewardMetadata.load(compact).head_bias), want, atol=1e-4, rtol=0
    )
    bf16 = conv.convert(ckpts["nemotron", "zarr"], tmp_path / "b", tp=2, pp=2, progress=False)
    engine = TorchEngine.from_checkpoint(bf16, dtype=torch.float32)
    got = engine.logits(seqs)[:, :9] + torch.tensor(RewardMetadata.load(bf16).head_bias)
    # layernorm1p's +1 is stored in bf16 (as TensorRT-LLM does): close, not exact.
    assert (got - want).abs().max() < 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_parallel_embedding(arch, ckpts, oracle, tmp_path):
    """use_parallel_embedding: stage-0 ranks hold pad(V,T)/T rows each, zero-padded; same rewards as the oracle."""
    out = conv.convert(
        ckpts[arch, "zarr"], tmp_path / "pe", tp=8, pp=2, dtype="float32", parallel_embedding=True, progress=False
    )
    config = json.loads((out / "config.json").read_text())
    assert config["use_parallel_embedding"] is True and config["embedding_sharding_dim"] == 0
    emb = fixtures.fixture_tensors(_spec(arch), seed=0)["embedding.word_embeddings.weight"].to(torch.bfloat16).float()
    vocab, rows = emb.shape[0], math.ceil(emb.shape[0] / 8)
    for r in range(8):
        with safe_open(str(out / f"rank{r}.safetensors"), framework="pt") as f:
            shard = f.get_tensor("transformer.vocab_embedding.weight")
        assert shard.shape == (rows, emb.shape[1])
        real = emb[r * rows : min(vocab, (r + 1) * rows)]
        torch.testing.assert_close(shard[: len(real)], real, atol=0, rtol=0)
        assert not shard[len(real) :].any()
    seqs = _sequences(vocab)
    meta = RewardMetadata.load(out)
    got = TorchEngine.from_checkpoint(out).logits(seqs)[:, : meta.num_attributes] + torch.tensor(meta.head_bias)
    torch.testing.assert_close(got, hf_rewards(*oracle[arch], seqs), atol=1e-4, rtol=0)


def test_batch_invariant_engine(ckpts, tmp_path):
    """batch_invariant: logits are bit-identical alone and inside any batch; the default mode agrees closely."""
    out = conv.convert(ckpts["nemotron", "zarr"], tmp_path / "bi", tp=2, dtype="float32", progress=False)
    seqs = _sequences(300, seed=7)
    invariant = TorchEngine.from_checkpoint(out, batch_invariant=True)
    alone = torch.cat([invariant.logits([s]) for s in seqs])
    assert torch.equal(invariant.logits(seqs), alone)
    assert torch.equal(invariant.logits(seqs[::-1]), alone.flip(0))
    torch.testing.assert_close(TorchEngine.from_checkpoint(out).logits(seqs), alone, atol=1e-5, rtol=0)


def test_nemo_tar_in_place(tmp_path, oracle):
    nemo = fixtures.write_fixture(tmp_path / "m", arch="llama", fmt="torch_dist", tar=True)
    assert nemo.suffix == ".nemo" and tarfile.is_tarfile(nemo)
    out = conv.convert(nemo, tmp_path / "trt", tp=2, pp=1, dtype="float32", progress=False)
    seqs = _sequences(200)
    got = TorchEngine.from_checkpoint(out).logits(seqs)[:, :1] + torch.tensor(RewardMetadata.load(out).head_bias)
    torch.testing.assert_close(got, hf_rewards(*oracle["llama"], seqs), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# The 8×2 rank files against the name/shape table of docs/formats.md, written out here, not taken from the converter.
def _expected_table(cfg: dict, vocab: int, k: int, tp: int, pp: int) -> dict[int, dict[str, tuple[int, ...]]]:
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg["num_query_groups"] or nh
    hd = cfg["kv_channels"] or h // nh
    f, n_layers = cfg["ffn_hidden_size"], cfg["num_layers"]
    gated = cfg["activation"] in ("swiglu", "fast-swiglu")
    layernorm = cfg["normalization"] != "rmsnorm"
    out: dict[int, dict[str, tuple[int, ...]]] = {}
    for rank in range(tp * pp):
        pp_rank = rank // tp
        layers = torch.tensor_split(torch.arange(n_layers), pp)[pp_rank]
        t: dict[str, tuple[int, ...]] = {}
        if pp_rank == 0:
            t["transformer.vocab_embedding.weight"] = (vocab, h)
        for i in range(len(layers)):
            p = f"transformer.layers.{i}."
            t[p + "input_layernorm.weight"] = (h,)
            t[p + "attention.qkv.weight"] = ((nh // tp + 2 * max(nkv // tp, 1)) * hd, h)
            t[p + "attention.dense.weight"] = (h, nh * hd // tp)
            t[p + "post_layernorm.weight"] = (h,)
            t[p + "mlp.fc.weight"] = (f // tp, h)
            t[p + "mlp.proj.weight"] = (h, f // tp)
            if gated:
                t[p + "mlp.gate.weight"] = (f // tp, h)
            if layernorm:
                t[p + "input_layernorm.bias"] = (h,)
                t[p + "post_layernorm.bias"] = (h,)
        if pp_rank == pp - 1:
            t["transformer.ln_f.weight"] = (h,)
            if layernorm:
                t["transformer.ln_f.bias"] = (h,)
            t["lm_head.weight"] = (math.ceil(vocab / tp) * tp // tp, h)
        out[rank] = t
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_8x2_rank_files_match_trtllm_table(arch, ckpts, tmp_path):
    spec = _spec(arch)
    cfg = fixtures.fixture_config(spec)
    tensors = fixtures.fixture_tensors(spec, seed=0)
    vocab, h = tensors["embedding.word_embeddings.weight"].shape
    k = tensors["rm_head.weight"].shape[0]
    out = conv.convert(ckpts[arch, "zarr"], tmp_path / "trt", tp=8, pp=2, dtype="float32", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["mapping"] == {"world_size": 16, "tp_size": 8, "pp_size": 2}
    assert config["architecture"] == ("GPTForCausalLM" if arch == "nemotron" else "LlamaForCausalLM")
    assert sorted(p.name for p in out.glob("rank*.safetensors")) == sorted(f"rank{r}.safetensors" for r in range(16))
    table = _expected_table(cfg, vocab, k, 8, 2)
    head = tensors["rm_head.weight"].to(torch.bfloat16).float()
    for rank, expected in table.items():
        with safe_open(str(out / f"rank{rank}.safetensors"), framework="pt") as f:
            assert {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()} == expected, f"rank {rank}"  # noqa: SIM118
            if "lm_head.weight" in expected:
                lm = f.get_tensor("lm_head.weight")
                if rank % 8 == 0:  # reward rows 0..K-1 live in TP rank 0's slice, zeros elsewhere
                    torch.testing.assert_close(lm[:k], head, atol=0, rtol=0)
                    assert not lm[k:].any()
                else:
                    assert not lm.any()
            if arch == "nemotron" and "transformer.layers.0.input_layernorm.weight" in expected:
                # layernorm1p: the runtime LayerNorm weight is 1 + w
                layer0 = 0 if rank < 8 else len(torch.tensor_split(torch.arange(cfg["num_layers"]), 2)[0])
                w = tensors["decoder.layers.self_attention.linear_qkv.layer_norm_weight"][layer0].to(torch.bfloat16)
                torch.testing.assert_close(f.get_tensor("transformer.layers.0.input_layernorm.weight"), w.float() + 1)


# ------------------------------------------------------------------------------------------------------------
# Corrupt inputs: an error naming the key/file, and no complete-looking output.
def _no_output(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not list(parent.glob(f".{name}.partial-*")), "partial directory left behind after a clean failure"


def _fresh(tmp_path: Path, fmt: str = "zarr", arch: str = "nemotron") -> Path:
    return fixtures.write_fixture(tmp_path / f"src-{fmt}", arch=arch, fmt=fmt)


def test_missing_tensor(tmp_path):
    src = _fresh(tmp_path)
    shutil.rmtree(src / "model_weights" / "model.decoder.layers.mlp.linear_fc2.weight")
    with pytest.raises(CheckpointError, match="linear_fc2"):
        conv.convert(src, tmp_path / "out", progress=False)
    _no_output(tmp_path, "out")


def test_wrong_shape(tmp_path):
    src = _fresh(tmp_path)
    cfg = yaml.safe_load((src / "model_config.yaml").read_text())
    cfg["ffn_hidden_size"] = cfg["ffn_hidden_size"] * 2
    (src / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="linear_fc1.weight"):
        conv.convert(src, tmp_path / "out", progress=False)
    _no_output(tmp_path, "out")


def test_truncated_chunk_file(tmp_path):
    src = _fresh(tmp_path)
    chunk = sorted((src / "model_weights" / "model.decoder.layers.self_attention.linear_qkv.weight").glob("2.*"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=chunk.name):
        conv.convert(src, tmp_path / "out", progress=False)
    _no_output(tmp_path, "out")


def test_unknown_activation(tmp_path):
    src = _fresh(tmp_path)
    cfg = yaml.safe_load((src / "model_config.yaml").read_text())
    cfg["activation"] = "reglu-9000"
    (src / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SpecError, match="reglu-9000"):
        conv.convert(src, tmp_path / "out", progress=False)
    _no_output(tmp_path, "out")


def test_missing_tokenizer(tmp_path):
    src = _fresh(tmp_path)
    ref = yaml.safe_load((src / "model_config.yaml").read_text())["tokenizer"]["model"]
    (src / ref.removeprefix("nemo:")).unlink()
    with pytest.raises(CheckpointError, match=ref.removeprefix("nemo:")):
        conv.convert(src, tmp_path / "out", progress=False)
    _no_output(tmp_path, "out")


def test_unsafe_tar_member(tmp_path):
    src = _fresh(tmp_path)
    evil = tmp_path / "evil.nemo"
    with tarfile.open(evil, "w") as tar:
        tar.add(src, arcname=".")
        info = tarfile.TarInfo("../escape.txt")
        info.size = 0
        tar.addfile(info)
    with pytest.raises(CheckpointError, match=r"\.\./escape\.txt"):
        conv.convert(evil, tmp_path / "out", progress=False)
    _no_output(tmp_path, "out")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_bad_layout_rejected(tmp_path):
    src = _fresh(tmp_path)
    with pytest.raises(conv.ConversionError, match="num_attention_heads"):
        conv.convert(src, tmp_path / "out", tp=3, progress=False)
    _no_output(tmp_path, "out")


def test_failed_rerun_keeps_previous_output_and_kill_leaves_nothing_complete(tmp_path):
    src = _fresh(tmp_path)
    good = conv.convert(src, tmp_path / "out", tp=2, progress=False)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    # A run killed with SIGKILL in the middle of writing rank files: the previous complete output stays intact,
    # and what the killed run left is a hidden partial directory, never `out`.
    code = (
        "import os, signal, sys\n"
        "from build_engine import convert as c\n"
        "real = c.write_rank\n"
        "def dying(planner, rank, d, bar=None):\n"
        "    real(planner, rank, d, bar)\n"
        "    if rank == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.write_rank = dying\n"
        f"c.convert({str(src)!r}, {str(tmp_path / 'out')!r}, tp=4, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert proc.returncode == -9
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    partial = list(tmp_path.glob(".out.partial-*"))
    assert len(partial) == 1 and not (partial[0] / "rank3.safetensors").exists()
