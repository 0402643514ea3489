"""Write a NeMo reward-model checkpoint in the real on-disk layouts: mcore zarr or torch_dist, or legacy rank files.

The reader of the same formats is `build_engine/nemo/source.py`; the layouts are in docs/formats.md. Tensors are
canonical (stacked [L, ...] for layer tensors) and sharded exactly as Megatron shards them, by the weight table
(`reward_triton/engine/weights.py`): split on `nemo_split` (dim 0 column-parallel, dim 1 row-parallel), replicated
tensors saved once; qkv shards are whole query groups; a gated fc1 ([act; up]) is cut into 2*tp row chunks in the
dist formats and [act_r; up_r] per rank in legacy rank files, which also replicate the reward head.
Used by the demo model's training script and by the test fixtures (`tooling/fixtures.py`).
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from build_engine.atomic import atomic_directory, atomic_file, partial_directory
from build_engine.nemo.legacy import CKPT_NAME
from reward_triton.engine.mapping import Mapping
from reward_triton.engine.weights import BY_NAME, EMBEDDING, FC1, HEAD_W, OUTPUT, is_gated, is_layer, nemo_split

Format = Literal["zarr", "torch_dist", "legacy"]
FORMATS: tuple[str, ...] = ("zarr", "torch_dist", "legacy")
DIST_METADATA = {
    "sharded_backend": "zarr",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


def model_config(
    *,
    num_layers: int,
    hidden_size: int,
    ffn_hidden_size: int,
    num_attention_heads: int,
    num_query_groups: int,
    num_attributes: int,
    seq_length: int,
    tokenizer: dict[str, Any],
    kv_channels: int | None = None,
    normalization: str = "layernorm1p",
    activation: str = "squared-relu",
    layernorm_epsilon: float = 1e-5,
    rotary_percentage: float = 0.5,
    rotary_base: float = 10000.0,
    make_vocab_size_divisible_by: int = 128,
) -> dict[str, Any]:
    """`model_config.yaml` of an mcore GPT regression reward model, with NeMo's keys (docs/formats.md).

    `tokenizer` is the config's tokenizer section (its `model` names the tokenizer file, `nemo:<member>`)."""
    return {
        "mcore_gpt": True,
        "precision": "bf16",
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "encoder_seq_length": seq_length,
        "max_position_embeddings": seq_length,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "ffn_hidden_size": ffn_hidden_size,
        "num_attention_heads": num_attention_heads,
        "num_query_groups": num_query_groups,
        "kv_channels": kv_channels,
        "normalization": normalization,
        "layernorm_epsilon": layernorm_epsilon,
        "bias": False,
        "activation": activation,
        "transformer_block_type": "pre_ln",
        "position_embedding_type": "rope",
        "rotary_percentage": rotary_percentage,
        "rotary_base": rotary_base,
        "make_vocab_size_divisible_by": make_vocab_size_divisible_by,
        "share_embeddings_and_output_weights": False,
        "reward_model_type": "regression",
        "regression": {"num_attributes": num_attributes},
        "tokenizer": tokenizer,
    }


# ------------------------------------------------------------------------------------------------ sharding
def _bounds(n: int, tp: int, name: str) -> list[tuple[int, int]]:
    """Megatron-style TP cut of n into tp ranks (ceil-sized shards; every rank non-empty)."""
    size = math.ceil(n / tp)
    if (tp - 1) * size >= n:
        raise ValueError(f"cannot split '{name}' ({n}) across {tp} TP ranks")
    return [(r * size, min(n, (r + 1) * size)) for r in range(tp)]


@dataclass(frozen=True)
class _Chunk:
    rank: int
    offsets: tuple[int, ...]  # per-layer coordinates
    sizes: tuple[int, ...]

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + n) for o, n in zip(self.offsets, self.sizes, strict=True))


def _chunks(name: str, shape: tuple[int, ...], tp: int, gated: bool) -> list[_Chunk]:
    """Global chunk layout of one (per-layer) tensor in the dist formats."""
    d = nemo_split(name)
    if d is None:
        return [_Chunk(0, (0,) * len(shape), shape)]  # replicated: saved once (replica 0)
    if name == FC1 and gated:
        f = shape[0] // 2
        rest = (0,) * (len(shape) - 1)
        out = []
        for half in (0, 1):
            for r, (a, b) in enumerate(_bounds(f, tp, name)):
                out.append(_Chunk(r, (half * f + a, *rest), (b - a, *shape[1:])))
        return out
    out = []
    for r, (a, b) in enumerate(_bounds(shape[d], tp, name)):
        offsets = tuple(a if i == d else 0 for i in range(len(shape)))
        out.append(_Chunk(r, offsets, tuple(b - a if i == d else n for i, n in enumerate(shape))))
    return out


def rank_shard(name: str, tensor: torch.Tensor, tp: int, rank: int, gated: bool) -> torch.Tensor:
    """Rank `rank`'s TP shard of a per-layer tensor as a legacy rank file holds it ([act_r; up_r] for gated fc1)."""
    d = nemo_split(name)
    if d is None or name == HEAD_W:  # legacy files replicate the reward head
        return tensor
    if name == FC1 and gated:
        act, up = tensor.chunk(2, dim=0)
        a, b = _bounds(act.shape[0], tp, name)[rank]
        return torch.cat([act[a:b], up[a:b]], dim=0)
    a, b = _bounds(tensor.shape[d], tp, name)[rank]
    return tensor.narrow(d, a, b - a)


def _check_parallel(config: dict[str, Any], tensors: dict[str, torch.Tensor], tp: int) -> None:
    groups = int(config.get("num_query_groups") or config["num_attention_heads"])
    if groups % tp:
        raise ValueError(f"num_query_groups {groups} is not a multiple of tp {tp} (qkv shards are whole groups)")
    for name, t in tensors.items():
        d = nemo_split(name)
        layer = 1 if name.startswith("decoder.layers.") else 0
        if d is not None and name not in (EMBEDDING, OUTPUT) and t.shape[layer + d] % tp:
            raise ValueError(f"'{name}' dim {d} ({t.shape[layer + d]}) is not divisible by tp {tp}")


# ------------------------------------------------------------------------------------------------ writers
def _per_layer_shape(name: str, t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape[1:]) if is_layer(name) else tuple(t.shape)


def _write_common(weights_dir: Path, backend: str) -> None:
    weights_dir.mkdir(parents=True, exist_ok=True)
    (weights_dir / "metadata.json").write_text(json.dumps({**DIST_METADATA, "sharded_backend": backend}))
    torch.save({"checkpoint_version": 3.0}, weights_dir / "common.pt")


_ZARR_DTYPES = {torch.bfloat16: "bfloat16", torch.float32: "<f4", torch.float16: "<f2", torch.float64: "<f8"}


def _to_numpy(t: torch.Tensor) -> Any:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


def _write_zarr(weights_dir: Path, tensors: dict[str, torch.Tensor], tp: int, gated: bool, dtype: torch.dtype) -> None:
    import tensorstore as ts

    _write_common(weights_dir, "zarr")
    for name, full in tensors.items():
        t = full.to(dtype)
        shape = _per_layer_shape(name, t)
        chunks = _chunks(name, shape, tp, gated)
        lead = [1] if is_layer(name) else []
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(weights_dir / f"model.{name}")},
            "metadata": {
                "shape": list(t.shape),
                "chunks": lead + list(chunks[0].sizes),
                "dtype": _ZARR_DTYPES[dtype],
                "compressor": None,
                "order": "C",
                "dimension_separator": ".",
            },
        }
        store = ts.open(spec, create=True, delete_existing=True).result()
        for layer in range(t.shape[0]) if is_layer(name) else [None]:
            src = t[layer] if layer is not None else t
            for c in chunks:
                index = ((layer,) if layer is not None else ()) + c.slices()
                store[index].write(_to_numpy(src[c.slices()])).result()


def _write_torch_dist(
    weights_dir: Path, tensors: dict[str, torch.Tensor], tp: int, gated: bool, dtype: torch.dtype
) -> None:
    """DCP files as FileSystemWriter lays them out: `__<rank>_0.distcp` holding one `torch.save` stream per
    chunk, and the pickled Metadata in `.metadata`."""
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    _write_common(weights_dir, "torch_dist")
    names = {r: f"__{r}_0.distcp" for r in range(tp)}
    files = {r: open(weights_dir / names[r], "wb") for r in range(tp)}
    state_md: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    try:
        for name, full in tensors.items():
            fqn = f"model.{name}"
            t = full.to(dtype)
            shape = _per_layer_shape(name, t)
            chunk_md = []
            for layer in range(t.shape[0]) if is_layer(name) else [None]:
                src = t[layer] if layer is not None else t
                for c in _chunks(name, shape, tp, gated):
                    lead = (layer,) if layer is not None else ()
                    offsets, sizes = (*lead, *c.offsets), ((1,) if lead else ()) + c.sizes
                    data = src[c.slices()].reshape(sizes).clone()
                    stream = files[c.rank]
                    start = stream.tell()
                    torch.save(data, stream)
                    info = _StorageInfo(names[c.rank], start, stream.tell() - start)
                    storage[MetadataIndex(fqn, offsets)] = info
                    chunk_md.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
            state_md[fqn] = TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(t.shape), chunk_md)
    finally:
        for f in files.values():
            f.close()
    metadata = Metadata(
        state_dict_metadata=state_md,
        planner_data={fqn: (fqn,) for fqn in state_md},
        storage_data=storage,
        storage_meta=StorageMeta(),
        version=CURRENT_DCP_VERSION,
    )
    with open(weights_dir / ".metadata", "wb") as f:
        pickle.dump(metadata, f)


def _legacy_key(name: str, layer: int | None) -> str:
    key = BY_NAME[name].legacy
    return "model." + (key.format(i=layer) if layer is not None else key)


def _write_legacy(
    root: Path, tensors: dict[str, torch.Tensor], tp: int, pp: int, gated: bool, dtype: torch.dtype
) -> None:
    tensors = {name: t.to(dtype) for name, t in tensors.items()}
    num_layers = next(t.shape[0] for n, t in tensors.items() if is_layer(n))
    if pp > num_layers:
        raise ValueError(f"pp {pp} is larger than num_layers {num_layers}")
    for stage in range(pp):
        layers = Mapping(tp, pp).stage_layers(num_layers, stage)
        for rank in range(tp):
            state: dict[str, torch.Tensor] = {}
            for name, t in tensors.items():
                if is_layer(name):
                    for local, layer in enumerate(layers):
                        shard = rank_shard(name, t[layer], tp, rank, gated)
                        state[_legacy_key(name, local)] = shard.clone()
                elif (name == EMBEDDING and stage == 0) or (name != EMBEDDING and stage == pp - 1):
                    state[_legacy_key(name, None)] = rank_shard(name, t, tp, rank, gated).clone()
            if tp == 1 and pp == 1:
                path = root / CKPT_NAME
            elif pp == 1:
                path = root / f"mp_rank_{rank:02d}" / CKPT_NAME
            else:
                path = root / f"tp_rank_{rank:02d}_pp_rank_{stage:03d}" / CKPT_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)


def _pack_tar(tree: Path, target: Path) -> None:
    with atomic_file(target) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(tree, arcname=".")  # NeMo's layout: members named ./model_config.yaml, ...


def write_nemo_checkpoint(
    out: Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    tokenizer_file: Path,
    fmt: Format,
    tp: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    tar: bool = False,
    pp: int = 1,
    replace: bool = False,
) -> Path:
    """Write a NeMo checkpoint in the real layout; returns the directory, or `<out>.nemo` when `tar`.

    `tensors` are canonical (stacked) and cast to `dtype`; `config` is written with tensor/pipeline parallel
    sizes and precision set to match. `pp` only changes the legacy layout (dist formats are PP-agnostic).
    The output appears complete or not at all; an existing one is an error unless `replace`.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {FORMATS})")
    if dtype not in _ZARR_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    _check_parallel(config, tensors, tp)
    config = {
        **config,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "precision": {torch.bfloat16: "bf16", torch.float16: 16}.get(dtype, 32),
    }
    target = out.with_name(out.name + ".nemo") if tar and out.suffix != ".nemo" else out
    if not replace and target.exists() and (target.is_file() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists")
    if not tar:
        with atomic_directory(target) as tree:
            _write_tree(tree, config, tensors, tokenizer_file, fmt, tp, pp, dtype)
        return target
    tree = partial_directory(target)
    try:
        _write_tree(tree, config, tensors, tokenizer_file, fmt, tp, pp, dtype)
        _pack_tar(tree, target)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return target


def _write_tree(
    tree: Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    tokenizer_file: Path,
    fmt: Format,
    tp: int,
    pp: int,
    dtype: torch.dtype,
) -> None:
    gated = is_gated(str(config.get("activation", "")))
    (tree / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tok = config.get("tokenizer") or {}
    ref = str(tok.get("model") or tok.get("tokenizer_model") or "nemo:tokenizer.model")
    shutil.copyfile(tokenizer_file, tree / ref.removeprefix("nemo:"))
    if fmt == "zarr":
        _write_zarr(tree / "model_weights", tensors, tp, gated, dtype)
    elif fmt == "torch_dist":
        _write_torch_dist(tree / "model_weights", tensors, tp, gated, dtype)
    else:
        _write_legacy(tree, tensors, tp, pp, gated, dtype)
