"""NeMo checkpoint readers: every format x arch round-trips exactly; corrupt or unsafe inputs raise CheckpointError."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from build_engine.nemo import Archive, CheckpointError, open_checkpoint
from build_engine.nemo.source import DistWeightSource
from build_engine.spec import ModelSpec
from reward_triton.engine.weights import EMBEDDING, FC1, HEAD_W, LN1_B, LN1_W, LN2_W, QKV
from tooling.fixtures import ARCHS, fixture_config, fixture_spec, fixture_tensors, train_tokenizer, write_fixture
from tooling.nemo_writer import FORMATS, write_nemo_checkpoint

QKV_KEY = f"model.{QKV}"


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def _write(tmp: Path, tok: Path, arch: str, fmt: str, **kw: object) -> tuple[Path, dict[str, torch.Tensor]]:
    spec = fixture_spec(arch)
    tensors = fixture_tensors(spec, seed=3)
    path = write_nemo_checkpoint(tmp / f"{arch}_{fmt}", fixture_config(spec), tensors, tok, fmt, **kw)  # type: ignore[arg-type]
    return path, tensors


def _row_ranges(n: int) -> list[tuple[int, int]]:
    ranges = [(0, n), (1, max(1, n - 1)), (max(0, n // 2 - 3), min(n, n // 2 + 5)), (n - 1, n), (n // 3, n // 3)]
    return [(a, b) for a, b in ranges if a <= b]


def _check_all(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> None:
    with open_checkpoint(path) as ckpt:
        w = ckpt.weights
        assert sorted(w.names()) == sorted(tensors)
        assert w.num_layers() == 3
        for name, full in tensors.items():
            expect = full.to(dtype)
            is_layer = name.startswith("decoder.layers.")
            assert w.has(name) and w.dtype(name) == dtype
            assert not is_layer or w.num_layers(name) == 3
            assert w.shape(name) == tuple(expect.shape[1:] if is_layer else expect.shape)
            for layer in range(expect.shape[0]) if is_layer else [None]:
                ref = expect[layer] if layer is not None else expect
                got = w.read(name, layer=layer)
                assert got.dtype == dtype and torch.equal(got, ref), (name, layer)
                for r0, r1 in _row_ranges(ref.shape[0]):
                    assert torch.equal(w.read(name, layer=layer, rows=(r0, r1)), ref[r0:r1]), (name, layer, r0, r1)
        spec = ModelSpec.from_nemo(ckpt.config, w)
        assert spec.vocab_size == tensors[EMBEDDING].shape[0]
        assert ckpt.read_artifact(spec.tokenizer_ref)[:1]  # the tokenizer travels inside the checkpoint


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tar", [False, True], ids=["dir", "tar"])
def test_round_trip(tmp_path: Path, tokenizer: Path, arch: str, fmt: str, tar: bool) -> None:
    path, tensors = _write(tmp_path, tokenizer, arch, fmt, tar=tar)
    assert path.suffix == ".nemo" if tar else path.is_dir()
    _check_all(path, tensors)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tp", [1, 8])
def test_round_trip_tp(tmp_path: Path, tokenizer: Path, fmt: str, tp: int) -> None:
    # llama at tp=8: the 388-row vocabulary splits into 49-row shards (zarr: a padded edge chunk)
    path, tensors = _write(tmp_path, tokenizer, "llama", fmt, tp=tp)
    _check_all(path, tensors)


def test_round_trip_float32(tmp_path: Path, tokenizer: Path) -> None:
    path, tensors = _write(tmp_path, tokenizer, "nemotron", "zarr", dtype=torch.float32)
    assert json.loads((path / "model_weights" / f"model.{LN1_W}" / ".zarray").read_text())["dtype"] == "<f4"
    _check_all(path, tensors, torch.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_legacy_pipeline_parallel(tmp_path: Path, tokenizer: Path, arch: str) -> None:
    path, tensors = _write(tmp_path, tokenizer, arch, "legacy", tp=2, pp=2)
    assert (path / "tp_rank_01_pp_rank_001" / "model_weights.ckpt").is_file()
    _check_all(path, tensors)
    with open_checkpoint(path) as ckpt:
        w = ckpt.weights
        w.read(QKV, layer=0)
        w.read(QKV, layer=2)  # stage 1 (3 layers split 2 + 1)
        assert w._cache_stage == 1 and len(w._cache) <= 2  # type: ignore[attr-defined]


def test_gzipped_tar(tmp_path: Path, tokenizer: Path) -> None:
    path, tensors = _write(tmp_path, tokenizer, "nemotron", "zarr", tar=True)
    gz = tmp_path / "ckpt.nemo"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with open_checkpoint(gz) as ckpt:
        assert torch.equal(ckpt.weights.read(QKV, layer=1, rows=(5, 40)), tensors[QKV][1, 5:40].bfloat16())


def test_write_fixture_and_cli(tmp_path: Path, tokenizer: Path) -> None:
    from tooling.fixtures import main

    p = write_fixture(tmp_path / "a", arch="llama", fmt="torch_dist", tokenizer=tokenizer)
    with open_checkpoint(p) as ckpt:
        assert ckpt.weights.shape(HEAD_W) == (1, 64) and ckpt.weights.shape(FC1) == (192, 64)
    shutil.copy(tokenizer, tmp_path / "fixture_tokenizer.model")  # the CLI's cached tokenizer
    main(["--arch", "nemotron", "--format", "zarr", "--out", str(tmp_path / "b"), "--tar"])
    with open_checkpoint(tmp_path / "b.nemo") as ckpt:
        assert ckpt.weights.shape(HEAD_W) == (9, 64) and ckpt.config["tensor_model_parallel_size"] == 2


def test_torch_dcp_reader_loads_fixture(tmp_path: Path, tokenizer: Path) -> None:
    import torch.distributed.checkpoint as dcp

    path, tensors = _write(tmp_path, tokenizer, "llama", "torch_dist")
    weights = path / "model_weights"
    assert sorted(p.name for p in weights.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    reader = dcp.FileSystemReader(weights)
    md = reader.read_metadata()
    state = {k: torch.zeros(v.size, dtype=v.properties.dtype) for k, v in md.state_dict_metadata.items()}
    with pytest.warns(UserWarning):  # "assuming the intent is to load in a single process"
        dcp.load(state, storage_reader=reader, no_dist=True)
    for name, t in tensors.items():
        assert torch.equal(state[f"model.{name}"], t.bfloat16()), name
    assert len(md.state_dict_metadata[f"model.{FC1}"].chunks) == 3 * 4  # 3 layers x 2*tp row chunks


def test_zarr_nested_dimension_separator(tmp_path: Path, tokenizer: Path) -> None:
    path, tensors = _write(tmp_path, tokenizer, "nemotron", "zarr")
    arr = path / "model_weights" / QKV_KEY
    meta = json.loads((arr / ".zarray").read_text())
    meta["dimension_separator"] = "/"
    (arr / ".zarray").write_text(json.dumps(meta))
    for chunk in [p for p in arr.iterdir() if not p.name.startswith(".")]:
        dst = arr.joinpath(*chunk.name.split("."))
        dst.parent.mkdir(parents=True, exist_ok=True)
        chunk.rename(dst)
    with open_checkpoint(path) as ckpt:
        assert torch.equal(ckpt.weights.read(QKV, layer=2), tensors[QKV][2].bfloat16())


def test_legacy_attention_alias_and_split_head(tmp_path: Path, tokenizer: Path) -> None:
    path, tensors = _write(tmp_path, tokenizer, "nemotron", "legacy")
    for rank in range(2):
        rank_file = path / f"mp_rank_{rank:02d}" / "model_weights.ckpt"
        state = torch.load(rank_file, weights_only=True)
        state = {k.replace(".self_attention.", ".attention."): v for k, v in state.items()}
        state["model.rm_head.weight"] = state["model.rm_head.weight"].chunk(2, dim=1)[rank].clone()
        torch.save(state, rank_file)
    _check_all(path, tensors)


def test_dist_weights_at_root(tmp_path: Path, tokenizer: Path) -> None:
    path, tensors = _write(tmp_path, tokenizer, "llama", "torch_dist")
    for item in (path / "model_weights").iterdir():
        item.rename(path / item.name)
    (path / "model_weights").rmdir()
    _check_all(path, tensors)


# ------------------------------------------------------------------------------------------------ canonical names
class _DictStore:
    def __init__(self, arrays: dict[str, torch.Tensor]) -> None:
        self.arrays = arrays

    def keys(self) -> list[str]:
        return list(self.arrays)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.arrays[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.arrays[key].dtype

    def read(self, key: str, box: list[tuple[int, int]]) -> torch.Tensor:
        return self.arrays[key][tuple(slice(a, b) for a, b in box)].clone()

    def close(self) -> None:
        pass


def test_per_layer_keys_and_unfused_aliases() -> None:
    ln = [torch.randn(8) for _ in range(2)]
    qkv = torch.randn(2, 12, 8)
    store = _DictStore(
        {
            "model.decoder.layers.0.input_layernorm.weight": ln[0],
            "model.decoder.layers.1.input_layernorm.weight": ln[1],
            "model.decoder.layers.pre_mlp_layernorm.weight": torch.stack(ln),
            f"model.{QKV}": qkv,
            "model.decoder.layers.self_attention.linear_qkv._extra_state": torch.zeros(1),
            "optimizer.state.exp_avg.model.decoder.final_layernorm.weight": torch.zeros(8),
        }
    )
    w = DistWeightSource(store)
    assert w.names() == sorted([LN1_W, LN2_W, QKV])
    assert w.num_layers() == 2 and w.shape(LN1_W) == (8,) and w.shape(QKV) == (12, 8)
    assert torch.equal(w.read(LN1_W, layer=1), ln[1])
    assert torch.equal(w.read(LN2_W, layer=0, rows=(2, 5)), ln[0][2:5])
    assert torch.equal(w.read(QKV, layer=1, rows=(3, 9)), qkv[1, 3:9])
    with pytest.raises(CheckpointError, match=LN1_B):
        w.read(LN1_B, layer=0)
    with pytest.raises(CheckpointError, match="layer"):
        w.read(QKV)
    with pytest.raises(CheckpointError, match="layer 2"):
        w.read(LN1_W, layer=2)


# ------------------------------------------------------------------------------------------------ bounded reads
def test_zarr_layer_read_touches_only_its_chunks(tmp_path: Path, tokenizer: Path) -> None:
    path, tensors = _write(tmp_path, tokenizer, "nemotron", "zarr")
    arr = path / "model_weights" / QKV_KEY
    for chunk in arr.glob("[12].*"):
        chunk.unlink()  # layers 1 and 2 are gone; layer 0 must still read
    with open_checkpoint(path) as ckpt:
        assert torch.equal(ckpt.weights.read(QKV, layer=0), tensors[QKV][0].bfloat16())
        ckpt.archive.read_counts.clear()
        ckpt.weights.read(QKV, layer=0, rows=(2, 10))  # inside TP chunk 0 only
        assert set(ckpt.archive.read_counts) == {f"model_weights/{QKV_KEY}/0.0.0"}
        assert ckpt.archive.bytes_read > 0
        before = ckpt.archive.bytes_read
        ckpt.weights.read(QKV, layer=0, rows=(2, 10))
        assert ckpt.archive.bytes_read - before == 8 * 64 * 2  # only the requested rows' bytes
        with pytest.raises(CheckpointError, match=r"1\.0\.0"):
            ckpt.weights.read(QKV, layer=1)


def test_torch_dist_layer_read_touches_only_its_chunks(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "nemotron", "torch_dist", tar=True)
    with open_checkpoint(path) as ckpt:
        store = ckpt.weights.store  # type: ignore[attr-defined]
        md = store.metadata
        layer0 = [c for c in md.state_dict_metadata[QKV_KEY].chunks if c.offsets[0] == 0]
        from torch.distributed.checkpoint.metadata import MetadataIndex

        budget = sum(md.storage_data[MetadataIndex(QKV_KEY, c.offsets)].length for c in layer0)
        before = ckpt.archive.bytes_read
        ckpt.weights.read(QKV, layer=0)
        assert 0 < ckpt.archive.bytes_read - before <= budget


# ------------------------------------------------------------------------------------------------ corrupt inputs
def test_missing_tensor(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "nemotron", "zarr")
    shutil.rmtree(path / "model_weights" / QKV_KEY)
    with open_checkpoint(path) as ckpt:
        assert not ckpt.weights.has(QKV)
        with pytest.raises(CheckpointError, match=QKV):
            ckpt.weights.read(QKV, layer=0)
        with pytest.raises(CheckpointError, match=QKV):
            ckpt.weights.shape(QKV)


def test_truncated_zarr_chunk(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "nemotron", "zarr")
    chunk = path / "model_weights" / QKV_KEY / "1.1.0"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with open_checkpoint(path) as ckpt:
        ckpt.weights.read(QKV, layer=0)
        with pytest.raises(CheckpointError, match=f"{QKV_KEY}/1.1.0"):
            ckpt.weights.read(QKV, layer=1)


def test_missing_zarr_chunk(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "llama", "zarr", tar=True)
    tree = tmp_path / "tree"
    with tarfile.open(path) as tar:
        tar.extractall(tree, filter="data")
    (tree / "model_weights" / f"model.{EMBEDDING}" / "1.0").unlink()
    path.unlink()
    with tarfile.open(path, "w") as tar:
        tar.add(tree, arcname=".")
    with open_checkpoint(path) as ckpt:
        assert ckpt.weights.read(EMBEDDING, rows=(0, 10)).shape == (10, 64)
        with pytest.raises(CheckpointError, match=rf"model\.{EMBEDDING}/1\.0"):
            ckpt.weights.read(EMBEDDING)


def test_compressed_zarr_array(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "nemotron", "zarr")
    zarray = path / "model_weights" / f"model.{LN1_W}" / ".zarray"
    meta = json.loads(zarray.read_text())
    meta["compressor"] = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}
    zarray.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"model\.{LN1_W}.*compress"):
        open_checkpoint(path)


def test_torch_dist_missing_chunk_and_truncated_file(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "llama", "torch_dist")
    meta_file = path / "model_weights" / ".metadata"
    md = pickle.loads(meta_file.read_bytes())
    md.state_dict_metadata[QKV_KEY].chunks = [
        c for c in md.state_dict_metadata[QKV_KEY].chunks if c.offsets != (1, 0, 0)
    ]
    meta_file.write_bytes(pickle.dumps(md))
    with open_checkpoint(path) as ckpt:
        ckpt.weights.read(QKV, layer=1, rows=(100, 120))  # rank 1's chunk is still there
        with pytest.raises(CheckpointError, match=QKV_KEY):
            ckpt.weights.read(QKV, layer=1)
    data = path / "model_weights" / "__1_0.distcp"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with open_checkpoint(path) as ckpt, pytest.raises(CheckpointError, match="__1_0.distcp"):
        ckpt.weights.read(FC1, layer=2)


def test_legacy_missing_key(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "nemotron", "legacy")
    rank_file = path / "mp_rank_01" / "model_weights.ckpt"
    state = torch.load(rank_file, weights_only=True)
    key = "model.language_model.encoder.layers.1.self_attention.query_key_value.weight"
    del state[key]
    torch.save(state, rank_file)
    with pytest.raises(CheckpointError, match=rf"{key}.*mp_rank_01"):
        open_checkpoint(path)


def test_missing_config(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "nemotron", "legacy")
    (path / "model_config.yaml").unlink()
    with pytest.raises(CheckpointError, match="model_config.yaml"):
        open_checkpoint(path)


def test_missing_tokenizer_artifact(tmp_path: Path, tokenizer: Path) -> None:
    path, _ = _write(tmp_path, tokenizer, "llama", "zarr")
    with open_checkpoint(path) as ckpt:
        ref = ckpt.config["tokenizer"]["model"]
        member = ref.removeprefix("nemo:")
        (path / member).unlink()
        with pytest.raises(CheckpointError, match=member):
            ckpt.read_artifact(ref)
        with pytest.raises(CheckpointError, match="nope.model"):
            ckpt.read_artifact("nemo:nope.model")


def _tar_with(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("./model_config.yaml")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"a: 1"[:3]))
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


@pytest.mark.parametrize(
    "name,kind,link",
    [
        ("../evil", tarfile.REGTYPE, ""),
        ("/abs", tarfile.REGTYPE, ""),
        ("./model_weights/../../evil", tarfile.REGTYPE, ""),
        ("link", tarfile.SYMTYPE, "../../etc/passwd"),
        ("sub/link", tarfile.SYMTYPE, "/etc/passwd"),
        ("hard", tarfile.LNKTYPE, "../outside"),
    ],
)
def test_unsafe_tar_members(tmp_path: Path, name: str, kind: bytes, link: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    path = _tar_with(tmp_path / "bad.nemo", [info])
    with pytest.raises(CheckpointError, match=f"'{name}'"):
        open_checkpoint(path)


def test_archive_tar_members_and_links(tmp_path: Path) -> None:
    inner = tarfile.TarInfo("d/link")
    inner.type, inner.linkname = tarfile.SYMTYPE, "../data.bin"
    data = tarfile.TarInfo("./data.bin")
    data.size = 4
    with tarfile.open(tmp_path / "ok.nemo", "w") as tar:
        tar.addfile(data, io.BytesIO(b"abcd"))
        tar.addfile(inner)
    with Archive(tmp_path / "ok.nemo") as a:
        assert a.listdir("") == ["d", "data.bin"] and a.listdir("./d") == ["link"]
        assert a.read_bytes("d/link") == b"abcd" and a.read_range("./data.bin", 1, 2) == b"bc"
        assert a.local_path("data.bin") is None
        with a.open("data.bin") as f:
            f.seek(2)
            assert f.read() == b"cd"
        with pytest.raises(CheckpointError, match="data.bin"):
            a.read_range("data.bin", 2, 5)
        with pytest.raises(CheckpointError, match="missing.bin"):
            a.read_bytes("missing.bin")
        with pytest.raises(CheckpointError, match=r"\.\./x"):
            a.read_bytes("../x")
