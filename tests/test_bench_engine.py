"""`python -m tooling.bench_engine` on CPU with the tiny presets: the GPU benchmark's code path end to end
(random weights, HF on views of the same tensors, timing, MFU, JSON), numbers checked against HF."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tooling import bench_engine as be


def test_bench_cpu_tiny_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--preset", "tiny-nemotron,tiny-llama", "--dtype", "float32,bfloat16"]
    argv += ["--seq-lens", "1,5,33", "--repeats", "1", "--threads", "1", "--peak-tflops", "1", "--json", str(out)]
    assert be.main(argv) == 0
    results = json.loads(out.read_text())
    assert [(r["preset"], r["dtype"]) for r in results] == [
        (p, d) for p in ("tiny-nemotron", "tiny-llama") for d in ("float32", "bfloat16")
    ]
    for r in results:
        assert r["tokens"] == 39 and r["sequences"] == 3 and r["threads"] == 1
        assert set(r["tokens_per_s"]) == {"engine", "hf_one_by_one", "hf_padded"}
        assert all(v > 0 for v in r["tokens_per_s"].values())
        assert r["flops"] == pytest.approx(be.PRESETS[r["preset"]].flops([1, 5, 33]))
        assert 0 < r["mfu"]["engine"] < 1
        assert r["hf_reward_std"] > 0.1  # the rewards depend on the input
        # the engine and HF (SDPA, its own layout, on the same tensors) agree: fp32 to rounding, bf16 to its bound
        assert r["max_abs_diff_vs_hf"] < (1e-4 if r["dtype"] == "float32" else 0.06), r


@pytest.mark.parametrize("arch", ["tiny-nemotron", "tiny-llama"])
def test_hf_padded_batch_equals_one_by_one(arch):
    shape = be.PRESETS[arch]
    engine = be.TorchEngine(shape.engine_config(), be.random_weights(shape, seed=3), "cpu", torch.float32)
    model = be.hf_model(shape, engine)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, shape.vocab, (n,), generator=g).tolist() for n in (4, 1, 19)]
    one = be.hf_one_by_one(model, engine, seqs)
    torch.testing.assert_close(be.hf_padded(model, engine, seqs), one, atol=1e-4, rtol=0)
    torch.testing.assert_close(engine.logits(seqs), one, atol=1e-4, rtol=0)


def test_random_weights_reproducible_and_bf16():
    shape = be.PRESETS["tiny-llama"]
    a, b = be.random_weights(shape, seed=5).named_tensors(), be.random_weights(shape, seed=5).named_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.bfloat16 for t in a.values())
    assert a["layers.0.fc"].shape == (2 * shape.ffn, shape.hidden)  # [fc; gate]
    assert "ln_f.bias" not in a  # RMSNorm: no bias


def test_presets_have_the_published_sizes():
    """Llama-2-13B ≈ 13.0 B parameters; all 96 Nemotron-4-340B layers + embedding ≈ 340 B."""
    llama = be.PRESETS["llama2-13b"]
    n = llama.linear_params() * llama.layers + 2 * llama.vocab * llama.hidden  # + embedding and output layer
    assert n == pytest.approx(13.0e9, rel=0.01)
    nemo = be.PRESETS["nemotron-340b-slice"]
    n = nemo.linear_params() * 96 + 2 * nemo.vocab * nemo.hidden
    assert n == pytest.approx(341e9, rel=0.01)
    assert nemo.heads * nemo.head_dim == nemo.hidden and nemo.kv_heads == 8


def test_flops_formula_by_hand():
    s = be.Shape("llama", hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, ffn=3, vocab=10, outputs=1, rotary_pct=1)
    linear = 4 * (2 + 2) * 2 + 2 * 2 * 4 + 3 * 4 * 3  # qkv + dense + gated MLP = 32 + 16 + 36
    assert s.linear_params() == linear == 84
    assert s.flops([3, 5]) == 2 * linear * 2 * 8 + 2 * 2 * 2 * 2 * (9 + 25) + 2 * 4 * 1 * 2


def test_seq_lens_parsing():
    assert be.parse_seq_lens("64:256:64,1000") == [64, 128, 192, 256, 1000]
    with pytest.raises(ValueError):
        be.parse_seq_lens("0")


def test_engine_fixes_its_structure_at_load() -> None:
    """Activation and norm are chosen once, when the engine is built; an unknown one is refused there, not at the
    first request."""
    shape = be.PRESETS["tiny-nemotron"]
    weights = be.random_weights(shape, seed=3)
    cfg = shape.engine_config()
    for change, needle in (
        (dict(activation="relu6"), "activation 'relu6'"),
        (dict(norm="batchnorm"), "norm 'batchnorm'"),
    ):
        with pytest.raises(ValueError, match=needle):
            be.TorchEngine(dataclasses.replace(cfg, **change), weights, "cpu", torch.float32)
