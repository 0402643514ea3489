"""The weight table (reward_triton/engine/weights.py) and the rank-file reader it drives
(reward_triton/engine/checkpoint.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from build_engine import convert
from build_engine.nemo.legacy import map_legacy_key
from build_engine.spec import ModelSpec, SpecError
from reward_triton.engine import weights
from reward_triton.engine.checkpoint import CheckpointFormatError
from reward_triton.engine.mapping import Mapping, MappingError
from reward_triton.engine.model import TorchEngine
from tooling import fixtures
from tooling.nemo_writer import write_nemo_checkpoint


def test_every_legacy_key_maps_back_to_its_row() -> None:
    for w in weights.WEIGHTS:
        layer = 3 if w.is_layer else None
        key = "model." + (w.legacy.format(i=3) if w.is_layer else w.legacy)
        split = -1 if w.name == weights.HEAD_W else w.nemo_split  # the legacy reader decides the head's split
        assert map_legacy_key(key) == (w.name, layer, split), key


def test_each_architecture_gets_each_weight_once() -> None:
    for gated in (False, True):
        for norm_bias in (False, True):
            rows = weights.engine_rows(weights.Arch(gated=gated, norm_bias=norm_bias))
            names = [w.name for w in rows]
            assert len(names) == len(set(names))
            assert (weights.LN1_B in names) == norm_bias
            fc1 = next(w for w in rows if w.name == weights.FC1)
            assert fc1.rule is (weights.Rule.GATED if gated else weights.Rule.COLUMN)


def test_stage_layers_split_like_torch_tensor_split() -> None:
    """TensorRT-LLM (>= 0.16) assigns layers to stages as torch.tensor_split(arange(L), pp)."""
    for n in range(1, 10):
        for pp in range(1, n + 1):
            stages = [Mapping(1, pp).stage_layers(n, s) for s in range(pp)]
            assert stages == [t.tolist() for t in torch.tensor_split(torch.arange(n), pp)]


def test_mapping_ranks_and_config_json() -> None:
    m = Mapping(8, 2, gpus_per_node=8)
    assert m.world_size == 16 and m.ranks(0) == (0, 0) and m.ranks(7) == (7, 0) and m.ranks(9) == (1, 1)
    assert Mapping.from_json(m.to_json(with_gpus_per_node=True)) == m
    assert Mapping.of_config({"pretrained_config": {"mapping": m.to_json()}}) == m  # an engine's config.json
    with pytest.raises(MappingError, match="world_size 12 != tp_size 8 x pp_size 2"):
        Mapping.from_json({"world_size": 12, "tp_size": 8, "pp_size": 2})
    with pytest.raises(MappingError, match="must be positive"):
        Mapping(0, 1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    nemo = fixtures.write_fixture(root / "llama", arch="llama", fmt="zarr", tp=1)
    return convert.convert(nemo, root / "ckpt", tp=2, pp=2, dtype="float32", progress=False)


def _edit_rank(src: Path, dst: Path, rank: int, edit) -> Path:
    shutil.copytree(src, dst)
    path = dst / f"rank{rank}.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return dst


def test_a_missing_rank_tensor_fails_at_load_naming_it(converted: Path, tmp_path: Path) -> None:
    TorchEngine.from_checkpoint(converted)  # the complete checkpoint loads
    broken = _edit_rank(converted, tmp_path / "missing", 3, lambda t: t.pop("transformer.layers.0.mlp.gate.weight"))
    with pytest.raises(CheckpointFormatError, match=r"rank3\.safetensors: tensors missing: .*layers\.0\.mlp\.gate"):
        TorchEngine.from_checkpoint(broken)


def test_an_unexpected_rank_tensor_fails_at_load_naming_it(converted: Path, tmp_path: Path) -> None:
    def add(t: dict) -> None:
        t["transformer.layers.9.attention.qkv.weight"] = t["transformer.layers.0.attention.qkv.weight"].clone()

    broken = _edit_rank(converted, tmp_path / "extra", 0, add)
    with pytest.raises(CheckpointFormatError, match=r"rank0\.safetensors: unexpected tensors .*layers\.9"):
        TorchEngine.from_checkpoint(broken)


VARIANTS = [("layernorm", "swiglu"), ("layernorm", "gelu"), ("layernorm1p", "fast-swiglu"), ("rmsnorm", "swiglu")]


@pytest.mark.parametrize(("normalization", "activation"), VARIANTS)
def test_architecture_variants_agree_across_layouts(normalization: str, activation: str, tmp_path: Path) -> None:
    """Norm × MLP variants beyond the two oracle-checked families: every TP×PP layout (GQA replicated, parallel
    embedding, compact head, legacy storage) scores like the unsharded conversion."""
    spec = dataclasses.replace(fixtures.nemotron_spec(), normalization=normalization, activation=activation)
    tok = fixtures.train_tokenizer(tmp_path / "tok.model", spec.tokenizer_vocab_size)
    tensors = fixtures.fixture_tensors(spec, seed=7)
    nemo = write_nemo_checkpoint(tmp_path / "nemo", fixtures.fixture_config(spec), tensors, tok, "legacy", tp=2, pp=2)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (1, 9, 33)]
    ref = TorchEngine.from_checkpoint(convert.convert(nemo, tmp_path / "ref", dtype="float32", progress=False))
    want = ref.logits(seqs)[:, : spec.num_attributes]
    for tp, pp, head, pe in [(2, 3, "padded", False), (4, 2, "compact", True), (8, 1, "padded", True)]:
        out = convert.convert(nemo, tmp_path / f"tp{tp}pp{pp}", tp, pp, "float32", head, False, pe)
        got = TorchEngine.from_checkpoint(out).logits(seqs)[:, : spec.num_attributes]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gated_linear_unit_needs_a_gated_activation() -> None:
    cfg = {**fixtures.fixture_config(fixtures.nemotron_spec()), "activation": "gelu", "gated_linear_unit": True}

    class Shapes:
        def has(self, name: str) -> bool:
            return True

        def shape(self, name: str) -> tuple[int, ...]:
            return (9, 64)

    with pytest.raises(SpecError, match="gated_linear_unit with activation 'gelu'"):
        ModelSpec.from_nemo(cfg, Shapes())
