"""Capacity figures (`build_engine/capacity.py`): weight bytes per GPU equal the rank files' payloads; 340B figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from production_helpers import PP, TP

from build_engine import capacity
from build_engine.nemo.source import open_checkpoint
from build_engine.spec import ModelSpec
from reward_triton.engine.mapping import Mapping


# ---------------------------------------------------------------------------------------------- capacity
def test_weight_bytes_per_gpu_are_the_rank_file_payloads(nemo: Path, single: Path) -> None:
    with open_checkpoint(nemo) as ckpt:
        spec = ModelSpec.from_nemo(ckpt.config, ckpt.weights)
    planned = capacity.per_rank_weight_bytes(spec, Mapping(TP, PP))
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
