"""Open a NeMo checkpoint (`.nemo` tar read in place, or a directory) and expose its weights by canonical name.

Canonical names are the mcore GPT names without the `model.` prefix, in the global (un-sharded) layout; names
containing `decoder.layers.` are layer tensors read one layer at a time (see docs/formats.md).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import torch
import yaml

from build_engine.nemo.archive import Archive
from build_engine.nemo.errors import CheckpointError, check_layer_arg, require_layer_tensor
from build_engine.nemo.legacy import LegacyWeightSource, find_rank_files
from build_engine.nemo.torch_dist import TorchDistStore
from build_engine.nemo.zarr import ZarrStore
from build_engine.spec import gated_config

CONFIG_FILE = "model_config.yaml"
WEIGHTS_DIR = "model_weights"
DIST_METADATA = "metadata.json"
LAYER_PREFIX = "decoder.layers."
# unfused (local-spec) names → the fused Transformer Engine names used canonically
LAYER_ALIASES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "input_layernorm.bias": "self_attention.linear_qkv.layer_norm_bias",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    "pre_mlp_layernorm.bias": "mlp.linear_fc1.layer_norm_bias",
}
_PER_LAYER = re.compile(r"^(\d+)\.(.+)$")


class WeightSource(Protocol):
    def has(self, name: str) -> bool: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def read(
        self,
        name: str,
        layer: int | None = None,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ) -> torch.Tensor: ...
    def num_layers(self, name: str | None = None) -> int: ...
    def names(self) -> list[str]: ...
    def close(self) -> None: ...


class ArrayStore(Protocol):
    """Global arrays of a dist-checkpoint backend, addressed by stored key; `read` takes one [start, stop)
    per dimension."""

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> torch.dtype: ...
    def read(self, key: str, box: Sequence[tuple[int, int]]) -> torch.Tensor: ...
    def close(self) -> None: ...


def canonical_name(key: str) -> tuple[str, int | None] | None:
    """Stored mcore key → (canonical name, layer index for per-layer storage), None if not a weight."""
    if "_extra_state" in key:
        return None
    name = key[len("model.") :] if key.startswith("model.") else key
    if not name.startswith(LAYER_PREFIX):
        return name, None
    rest = name[len(LAYER_PREFIX) :]
    layer = None
    m = _PER_LAYER.match(rest)
    if m is not None:
        layer, rest = int(m.group(1)), m.group(2)
    return LAYER_PREFIX + LAYER_ALIASES.get(rest, rest), layer


@dataclass(frozen=True)
class _Entry:
    stacked: str | None  # key of a stacked [L, ...] array
    per_layer: dict[int, str]  # layer → key of a per-layer array


class DistWeightSource:
    """WeightSource over a zarr or torch_dist store (stacked or per-layer layer tensors)."""

    def __init__(self, store: ArrayStore) -> None:
        self.store = store
        keys = store.keys()
        if any(k.startswith("model.") for k in keys):
            keys = [k for k in keys if k.startswith("model.")]  # e.g. ignore optimizer state
        stacked: dict[str, str] = {}
        per_layer: dict[str, dict[int, str]] = {}
        for key in keys:
            mapped = canonical_name(key)
            if mapped is None:
                continue
            name, layer = mapped
            if layer is None:
                if name in stacked:
                    raise CheckpointError(f"checkpoint stores '{name}' twice ('{stacked[name]}' and '{key}')")
                stacked[name] = key
            else:
                layers = per_layer.setdefault(name, {})
                if layer in layers:
                    raise CheckpointError(
                        f"checkpoint stores '{name}' layer {layer} twice ('{layers[layer]}', '{key}')"
                    )
                layers[layer] = key
        self._entries = {
            name: _Entry(stacked.get(name), per_layer.get(name, {})) for name in sorted({*stacked, *per_layer})
        }
        for name, entry in self._entries.items():
            if entry.stacked is not None and entry.per_layer:
                raise CheckpointError(f"checkpoint stores '{name}' both stacked ('{entry.stacked}') and per layer")
            if name.startswith(LAYER_PREFIX) and entry.stacked is not None and len(store.shape(entry.stacked)) < 2:
                raise CheckpointError(f"stacked layer tensor '{entry.stacked}' lacks a leading layer axis")

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise CheckpointError(f"checkpoint has no tensor '{name}'")
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def has(self, name: str) -> bool:
        return name in self._entries

    def num_layers(self, name: str | None = None) -> int:
        """Layers stored for layer tensor `name`; without a name, for the deepest layer tensor."""
        if name is not None:
            entry = self._entry(name)
            require_layer_tensor(name)
            return self.store.shape(entry.stacked)[0] if entry.stacked is not None else max(entry.per_layer) + 1
        return max((self.num_layers(n) for n in self._entries if n.startswith(LAYER_PREFIX)), default=0)

    def shape(self, name: str) -> tuple[int, ...]:
        entry = self._entry(name)
        if entry.stacked is not None:
            shape = self.store.shape(entry.stacked)
            return shape[1:] if name.startswith(LAYER_PREFIX) else shape
        return self.store.shape(entry.per_layer[min(entry.per_layer)])

    def dtype(self, name: str) -> torch.dtype:
        entry = self._entry(name)
        return self.store.dtype(entry.stacked if entry.stacked is not None else entry.per_layer[min(entry.per_layer)])

    def read(
        self,
        name: str,
        layer: int | None = None,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        entry = self._entry(name)
        is_layer = check_layer_arg(name, layer)
        if entry.stacked is not None:
            key, shape = entry.stacked, self.store.shape(entry.stacked)
            lead: list[tuple[int, int]] = []
            if is_layer:
                assert layer is not None
                if not 0 <= layer < shape[0]:
                    raise CheckpointError(f"tensor '{name}': layer {layer} outside [0, {shape[0]})")
                lead, shape = [(layer, layer + 1)], shape[1:]
        else:
            assert layer is not None
            if layer not in entry.per_layer:
                raise CheckpointError(f"checkpoint has no tensor '{name}' for layer {layer}")
            key, lead = entry.per_layer[layer], []
            shape = self.store.shape(key)
        if not shape:
            if rows is not None:
                raise CheckpointError(f"tensor '{name}' is a scalar: rows= must be None")
            return self.store.read(key, lead).reshape(())
        r0, r1 = rows if rows is not None else (0, shape[0])
        if not 0 <= r0 <= r1 <= shape[0]:
            raise CheckpointError(f"tensor '{name}': rows {(r0, r1)} outside [0, {shape[0]})")
        tail = [(0, n) for n in shape[1:]]
        if cols is not None:
            if len(shape) != 2 or not 0 <= cols[0] <= cols[1] <= shape[1]:
                raise CheckpointError(f"tensor '{name}': cols {cols} outside its shape {list(shape)}")
            tail = [cols]
        box = [*lead, (r0, r1), *tail]
        out = self.store.read(key, box)
        return out[0] if lead else out

    def close(self) -> None:
        self.store.close()


def _open_weights(archive: Archive, config: dict[str, Any]) -> DistWeightSource | LegacyWeightSource:
    for base in (WEIGHTS_DIR, ""):
        meta_rel = f"{base}/{DIST_METADATA}" if base else DIST_METADATA
        if not archive.exists(meta_rel) or archive.is_dir(meta_rel):
            continue
        try:
            meta = json.loads(archive.read_bytes(meta_rel))
            backend = meta["sharded_backend"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if not base:
                continue  # some other metadata.json at the root
            raise CheckpointError(f"{meta_rel}: not a dist-checkpoint metadata file ({e})") from e
        if backend == "zarr":
            return DistWeightSource(ZarrStore(archive, base))
        if backend == "torch_dist":
            return DistWeightSource(TorchDistStore(archive, base))
        raise CheckpointError(f"{meta_rel}: sharded_backend '{backend}' is not supported (zarr, torch_dist)")
    for base in (WEIGHTS_DIR, ""):
        files = find_rank_files(archive, base)
        if files:
            return LegacyWeightSource(archive, files, gated=gated_config(config))
    raise CheckpointError(
        f"{archive.path}: no weights found (expected {WEIGHTS_DIR}/{DIST_METADATA}, mp_rank_XX/ or "
        "tp_rank_XX_pp_rank_YYY/ rank folders, or model_weights.ckpt)"
    )


def artifact_member(ref: str) -> str:
    """`nemo:xyz.model` (or a plain member name) → the member path at the checkpoint root."""
    return ref[len("nemo:") :] if ref.startswith("nemo:") else ref


class NemoCheckpoint:
    """An opened checkpoint: parsed config, a WeightSource and access to artifacts. Close it (or use `with`)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        if not archive.exists(CONFIG_FILE):
            raise CheckpointError(f"{archive.path}: missing {CONFIG_FILE}")
        try:
            config = yaml.safe_load(archive.read_bytes(CONFIG_FILE))
        except yaml.YAMLError as e:
            raise CheckpointError(f"{archive.path}: {CONFIG_FILE} is not valid YAML ({e})") from e
        if not isinstance(config, dict):
            raise CheckpointError(f"{archive.path}: {CONFIG_FILE} is not a mapping")
        self.config: dict[str, Any] = config
        self.weights: WeightSource = _open_weights(archive, config)

    def read_artifact(self, ref: str) -> bytes:
        member = artifact_member(ref)
        if not member or not self.archive.exists(member) or self.archive.is_dir(member):
            raise CheckpointError(f"{self.archive.path}: missing artifact '{member}' (config value '{ref}')")
        return self.archive.read_bytes(member)

    def close(self) -> None:
        self.weights.close()
        self.archive.close()

    def __enter__(self) -> NemoCheckpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike[str]) -> NemoCheckpoint:
    """Open a `.nemo` file (tar, read in place) or an extracted checkpoint directory."""
    archive = Archive(path)
    try:
        return NemoCheckpoint(archive)
    except BaseException:
        archive.close()
        raise
