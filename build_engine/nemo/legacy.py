"""Pre-mcore NeMo checkpoints: one `model_weights.ckpt` torch pickle per model-parallel rank.

Layouts: `model_weights.ckpt` (tp=1, pp=1), `mp_rank_XX/model_weights.ckpt` (tensor parallel only) or
`tp_rank_XX_pp_rank_YYY/model_weights.ckpt`. Keys live under `model.language_model.`; each file holds its rank's
TP shard, and with PP the layer indices in a file are local to its pipeline stage. Shapes are indexed once from
the pickles alone (`map_location="meta"`, no tensor data read); tensor data is loaded per stage on demand
(mmap when the checkpoint is a directory) and at most one stage's rank files are held at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from build_engine.nemo.archive import Archive
from build_engine.nemo.errors import CheckpointError, check_layer_arg, require_layer_tensor
from reward_triton.engine.weights import EMBEDDING, FC1, HEAD_W, LEGACY, LN1_W, LNF_W

CKPT_NAME = "model_weights.ckpt"
_AUTO = -1  # rm_head.weight: replicated, or split on dim 1 (decided against the hidden size)

_RANK_DIR = re.compile(r"^(?:mp_rank_(\d+)|tp_rank_(\d+)_pp_rank_(\d+))$")
_LAYER_KEY = re.compile(r"^language_model\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_TEMPLATE = "language_model.encoder.layers.{i}."
GATED_NAMES = {FC1, "decoder.layers.mlp.linear_fc1.bias"}  # [act; up] halves per rank when the MLP is gated


def find_rank_files(archive: Archive, base: str) -> dict[tuple[int, int], str] | None:
    """(pp stage, tp rank) → rank file path under `base`, or None if `base` holds no legacy weights."""
    prefix = f"{base}/" if base else ""
    if not archive.is_dir(base):
        return None
    files: dict[tuple[int, int], str] = {}
    for name in archive.listdir(base):
        m = _RANK_DIR.match(name)
        if m is None or not archive.exists(f"{prefix}{name}/{CKPT_NAME}"):
            continue
        if m.group(1) is not None:
            tp, pp = int(m.group(1)), 0
        else:
            tp, pp = int(m.group(2)), int(m.group(3))
        files[(pp, tp)] = f"{prefix}{name}/{CKPT_NAME}"
    if not files and archive.exists(f"{prefix}{CKPT_NAME}") and not archive.is_dir(f"{prefix}{CKPT_NAME}"):
        files[(0, 0)] = f"{prefix}{CKPT_NAME}"
    return files or None


def map_legacy_key(key: str) -> tuple[str, int | None, int | None] | None:
    """Legacy state-dict key → (canonical name, local layer index or None, split dim), None if not a weight.

    The keys are the weight table's `legacy` column (reward_triton/engine/weights.py)."""
    if key.startswith("model."):
        key = key[len("model.") :]
    if "_extra_state" in key:
        return None
    layer = None
    m = _LAYER_KEY.match(key)
    if m is not None:
        suffix = m.group(2)
        if suffix.startswith("attention."):  # older name of self_attention.
            suffix = "self_" + suffix
        layer, key = int(m.group(1)), _LAYER_TEMPLATE + suffix
    w = LEGACY.get(key)
    if w is None:
        return None
    return w.name, layer, _AUTO if w.name == HEAD_W else w.nemo_split


@dataclass
class _Part:
    """One canonical tensor (one layer) as its pipeline stage's TP rank files store it."""

    stage: int
    key: str
    shapes: list[tuple[int, ...]]  # per TP rank
    dtype: torch.dtype
    split: int | None
    gated: bool
    shape: tuple[int, ...] = ()  # global


def _unwrap(obj: Any, rel: str) -> dict[str, Any]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"legacy checkpoint '{rel}' does not hold a state dict")
    return obj


class LegacyWeightSource:
    """WeightSource over legacy rank files; `gated` says fc1 holds [act; up] halves (SwiGLU-style)."""

    def __init__(self, archive: Archive, files: dict[tuple[int, int], str], gated: bool) -> None:
        self.archive = archive
        self.gated = gated
        stages = sorted({pp for pp, _ in files})
        ranks = sorted({tp for _, tp in files})
        if stages != list(range(len(stages))) or ranks != list(range(len(ranks))):
            raise CheckpointError(f"legacy checkpoint: rank folders are not a complete grid: {sorted(files.values())}")
        for pp in stages:
            for tp in ranks:
                if (pp, tp) not in files:
                    raise CheckpointError(f"legacy checkpoint: missing rank file for tp {tp} pp {pp}")
        self.files = files
        self.tp = len(ranks)
        self.pp = len(stages)
        self._parts: dict[str, dict[int | None, _Part]] = {}
        self._stage_layers: list[int] = []
        self._cache_stage: int | None = None
        self._cache: dict[int, dict[str, Any]] = {}
        self._index()

    # ---------------------------------------------------------------- loading
    def _load(self, rel: str, meta: bool) -> dict[str, Any]:
        location = "meta" if meta else "cpu"
        try:
            local = self.archive.local_path(rel)
            if local is not None:
                try:
                    obj = torch.load(local, map_location=location, weights_only=True, mmap=not meta)
                except RuntimeError as e:  # pre-zipfile torch.save format: cannot be memory-mapped
                    if "mmap can only be used" not in str(e):
                        raise
                    obj = torch.load(local, map_location=location, weights_only=True)
            else:
                with self.archive.open(rel) as f:
                    obj = torch.load(f, map_location=location, weights_only=True)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"legacy checkpoint: cannot load '{rel}' ({e})") from e
        return _unwrap(obj, rel)

    def _rank_state(self, stage: int, tp: int) -> dict[str, Any]:
        if self._cache_stage != stage:
            self._cache.clear()  # bounded memory: only one pipeline stage's rank files at a time
            self._cache_stage = stage
        if tp not in self._cache:
            self._cache[tp] = self._load(self.files[(stage, tp)], meta=False)
        return self._cache[tp]

    def _index(self) -> None:
        offset = 0
        for stage in range(self.pp):
            metas = [self._load(self.files[(stage, tp)], meta=True) for tp in range(self.tp)]
            local_layers = 0
            for key, value in metas[0].items():
                mapped = map_legacy_key(key) if isinstance(value, torch.Tensor) else None
                if mapped is None:
                    continue
                name, local, split = mapped
                layer = None if local is None else offset + local
                if local is not None:
                    local_layers = max(local_layers, local + 1)
                if layer in self._parts.get(name, {}):
                    continue  # e.g. tied embeddings repeated in the last stage: keep the first
                shapes = []
                for tp, meta in enumerate(metas):
                    t = meta.get(key)
                    if not isinstance(t, torch.Tensor):
                        raise CheckpointError(f"legacy checkpoint: key '{key}' missing in '{self.files[(stage, tp)]}'")
                    shapes.append(tuple(t.shape))
                part = _Part(stage, key, shapes, value.dtype, split, gated=self.gated and name in GATED_NAMES)
                self._parts.setdefault(name, {})[layer] = part
            self._stage_layers.append(local_layers)
            offset += local_layers
        hidden = self._hidden_size()
        for parts in self._parts.values():
            for part in parts.values():
                if part.split == _AUTO:
                    part.split = self._head_split(part, hidden)
                part.shape = self._global_shape(part)

    def _hidden_size(self) -> int | None:
        for name, dim in ((LNF_W, 0), (EMBEDDING, 1), (LN1_W, 0)):
            if name in self._parts:
                return self._any_part(name).shapes[0][dim]
        return None

    def _head_split(self, part: _Part, hidden: int | None) -> int | None:
        """Legacy files replicate the reward head; a head split like mcore's (dim 1) is recognised too."""
        first = part.shapes[0]
        if len(first) != 2:
            raise CheckpointError(f"legacy checkpoint: '{part.key}' has shape {list(first)}, expected 2-D")
        if any(s != first for s in part.shapes):
            return 1
        if hidden is None or first[1] == hidden or self.tp == 1:
            return None
        if first[1] * self.tp == hidden:
            return 1
        raise CheckpointError(f"legacy checkpoint: '{part.key}' has {first[1]} columns for hidden size {hidden}")

    def _global_shape(self, part: _Part) -> tuple[int, ...]:
        first = part.shapes[0]
        if part.split is None:
            if any(s != first for s in part.shapes):
                raise CheckpointError(f"legacy checkpoint: replicated key '{part.key}' differs across TP ranks")
            return first
        d = part.split
        if any(len(s) != len(first) or s[:d] + s[d + 1 :] != first[:d] + first[d + 1 :] for s in part.shapes):
            raise CheckpointError(
                f"legacy checkpoint: TP shards of '{part.key}' have inconsistent shapes {part.shapes}"
            )
        if part.gated and any(s[0] % 2 for s in part.shapes):
            raise CheckpointError(f"legacy checkpoint: gated '{part.key}' has an odd number of rows per rank")
        return first[:d] + (sum(s[d] for s in part.shapes),) + first[d + 1 :]

    # ---------------------------------------------------------------- WeightSource
    def names(self) -> list[str]:
        return sorted(self._parts)

    def has(self, name: str) -> bool:
        return name in self._parts

    def num_layers(self, name: str | None = None) -> int:
        """Layers stored for layer tensor `name`; without a name, the model's layer count."""
        if name is None:
            return sum(self._stage_layers)
        parts = self._parts.get(name)
        if parts is None:
            raise CheckpointError(f"checkpoint has no tensor '{name}'")
        require_layer_tensor(name)
        return max(k for k in parts if k is not None) + 1

    def _part(self, name: str, layer: int | None) -> _Part:
        parts = self._parts.get(name)
        if parts is None:
            raise CheckpointError(f"checkpoint has no tensor '{name}'")
        check_layer_arg(name, layer)
        part = parts.get(layer)
        if part is None:
            raise CheckpointError(f"checkpoint has no tensor '{name}' for layer {layer}")
        return part

    def _any_part(self, name: str) -> _Part:
        parts = self._parts.get(name)
        if not parts:
            raise CheckpointError(f"checkpoint has no tensor '{name}'")
        return parts[min(parts, key=lambda k: -1 if k is None else k)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._any_part(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._any_part(name).dtype

    def read(
        self,
        name: str,
        layer: int | None = None,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        if cols is not None:  # rank files are loaded whole anyway: slice after reassembly
            full = self.read(name, layer, rows)
            if full.dim() != 2 or not 0 <= cols[0] <= cols[1] <= full.shape[1]:
                raise CheckpointError(f"tensor '{name}': cols {cols} outside its shape {list(full.shape)}")
            return full[:, cols[0] : cols[1]].clone()
        part = self._part(name, layer)
        r0, r1 = rows if rows is not None else (0, part.shape[0])
        if not 0 <= r0 <= r1 <= part.shape[0]:
            raise CheckpointError(f"tensor '{name}': rows {(r0, r1)} outside [0, {part.shape[0]})")
        if part.split is None:
            return self._tensor(part, 0)[r0:r1].clone()
        if part.split != 0:
            return torch.cat([self._tensor(part, tp)[r0:r1] for tp in range(self.tp)], dim=part.split)
        segments: list[tuple[int, int, int]] = []  # (tp rank, local start row, rows) in global row order
        if part.gated:
            half = [s[0] // 2 for s in part.shapes]
            segments = [(tp, 0, half[tp]) for tp in range(self.tp)]
            segments += [(tp, half[tp], half[tp]) for tp in range(self.tp)]
        else:
            segments = [(tp, 0, s[0]) for tp, s in enumerate(part.shapes)]
        pieces, start = [], 0
        for tp, local, n in segments:
            a, b = max(r0, start), min(r1, start + n)
            if a < b:
                pieces.append(self._tensor(part, tp)[local + a - start : local + b - start])
            start += n
        if not pieces:
            return torch.empty((0, *part.shape[1:]), dtype=part.dtype)
        return torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0].clone()

    def _tensor(self, part: _Part, tp: int) -> torch.Tensor:
        state = self._rank_state(part.stage, tp)
        t = state.get(part.key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != part.shapes[tp]:
            raise CheckpointError(f"legacy checkpoint: key '{part.key}' unreadable in '{self.files[(part.stage, tp)]}'")
        return t

    def close(self) -> None:
        self._cache.clear()
        self._cache_stage = None
