"""NeMo reward checkpoint → TensorRT-LLM unified checkpoint (config.json + rank{N}.safetensors), any TP×PP.

A conversion is the weight table (reward_triton/engine/weights.py: names and split rules, docs/formats.md) applied
per rank:
- column-parallel weights (qkv, fc, gate, vocab rows of lm_head) split on dim 0, row-parallel (dense, proj) on dim 1;
- qkv is regrouped from NeMo's per-group [q.., k, v] rows into per-rank [q_r; k_r; v_r], replicating KV heads
  when there are fewer KV heads than TP ranks;
- layernorm1p weights get +1 (the runtime LayerNorm is plain);
- lm_head carries the reward head: padded vocab rows with rm_head in rows 0..K-1 and zeros elsewhere
  ("padded", what TensorRT-LLM needs), or just [K, H] on every last-stage rank ("compact", PyTorch engine only).
Every rank file is streamed one tensor slice at a time; memory stays at a few tensor shards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from build_engine.atomic import atomic_directory
from build_engine.nemo.errors import CheckpointError
from build_engine.nemo.source import NemoCheckpoint, WeightSource, open_checkpoint
from build_engine.safetensors_stream import SafetensorsWriter
from build_engine.spec import ModelSpec
from reward_triton.engine import dtypes
from reward_triton.engine.mapping import Mapping
from reward_triton.engine.weights import (
    EMBEDDING,
    HEAD_B,
    HEAD_W,
    QKV,
    Rule,
    TPLayout,
    Weight,
    engine_rows,
    stage_layer_names,
)
from reward_triton.metadata import TOKENIZER_FILE, RewardMetadata

BLOCK_BYTES = 64 << 20  # row-block size for tensors streamed in pieces (embedding, lm_head)


class ConversionError(ValueError):
    """Unsupported TP×PP for this model, or a checkpoint that does not match its config."""


def validate(spec: ModelSpec, weights: WeightSource, mapping: Mapping) -> None:
    """Every tensor the conversion reads exists with the shape the config implies; TP×PP fits the model."""
    for name, shape in spec.expected_shapes().items():
        if not weights.has(name):
            raise CheckpointError(f"checkpoint: required tensor '{name}' is missing")
        got = tuple(weights.shape(name))
        if got != shape:
            raise CheckpointError(f"checkpoint: tensor '{name}' has shape {list(got)}, config implies {list(shape)}")
        if name.startswith("decoder.layers.") and weights.num_layers(name) != spec.num_layers:
            raise CheckpointError(
                f"checkpoint: tensor '{name}' has {weights.num_layers(name)} layers, config says {spec.num_layers}"
            )
    t, kv = mapping.tp, spec.num_kv_heads
    checks = [
        (spec.num_attention_heads % t == 0, f"num_attention_heads {spec.num_attention_heads}"),
        (spec.ffn_hidden_size % t == 0, f"ffn_hidden_size {spec.ffn_hidden_size}"),
        (kv % t == 0 if kv >= t else t % kv == 0, f"num_query_groups {kv} (KV heads replicate only evenly)"),
    ]
    for ok, what in checks:
        if not ok:
            raise ConversionError(f"tp_size {t} does not divide {what}")
    if mapping.pp > spec.num_layers:
        raise ConversionError(f"pp_size {mapping.pp} must be between 1 and num_layers {spec.num_layers}")


# ---------------------------------------------------------------------------------------------------------
# Cutting: each table rule (reward_triton/engine/weights.py) as jobs that produce one rank's tensors from the source.
Blocks = Iterator[tuple[int, torch.Tensor]]


@dataclass(frozen=True)
class Job:
    name: str  # TensorRT-LLM name inside the rank file
    shape: tuple[int, ...]
    blocks: Callable[[], Blocks]  # (row_start, block) pieces of the tensor, read lazily
    zero_bytes: int = 0  # bytes of this tensor intentionally left zero (padded lm_head rows)


class RankPlanner:
    """The tensors (name, per-rank shape, how to produce them) of one output rank, by the weight table.

    `parallel_embedding`: TensorRT-LLM use_parallel_embedding (sharding dim 0): each TP rank of stage 0 holds
    pad(V,T)/T embedding rows instead of all V, saving (T-1)/T of the table per GPU (8 GiB per GPU for
    Nemotron-4-340B at TP8)."""

    def __init__(
        self,
        spec: ModelSpec,
        weights: WeightSource,
        mapping: Mapping,
        dtype: torch.dtype,
        lm_head: str,
        parallel_embedding: bool = False,
    ):
        self.spec, self.weights, self.mapping, self.dtype, self.lm_head = spec, weights, mapping, dtype, lm_head
        self.parallel_embedding = parallel_embedding
        self.tp = tp_layout(spec, mapping, lm_head, parallel_embedding)
        self.shapes = spec.expected_shapes()  # `validate` checked the checkpoint against them; capacity has no weights

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype).contiguous()

    def _one(self, name: str, shape: tuple[int, ...], fn: Callable[[], torch.Tensor]) -> Job:
        return Job(name, shape, lambda: iter([(0, fn())]))

    def _rows(self, dst: str, src: str, layer: int | None, start: int, n: int) -> Job:
        cols = self.shapes[src][1]
        return self._one(dst, (n, cols), lambda: self._cast(self.weights.read(src, layer, rows=(start, start + n))))

    # -- rules -----------------------------------------------------------------------------------------
    def norm(self, dst: str, src: str, layer: int | None, plus_one: bool) -> Job:
        def build() -> torch.Tensor:
            return self._cast(self.weights.read(src, layer).float() + (1.0 if plus_one else 0.0))

        return self._one(dst, (self.spec.hidden_size,), build)

    def qkv(self, dst: str, layer: int, tp_rank: int) -> Job:
        start, end, idx = self.tp.qkv_source_rows(tp_rank)
        index = torch.tensor(idx)

        def build() -> torch.Tensor:  # the group-aligned block, gathered into [q_r; k_r; v_r] in one copy
            return self._cast(self.weights.read(QKV, layer, rows=(start, end)).index_select(0, index))

        return self._one(dst, (len(idx), self.spec.hidden_size), build)

    def column(self, dst: str, src: str, layer: int, tp_rank: int, offset: int, total: int) -> Job:
        """Rows [offset + r*total/T, ...) of the source (offset selects a gated half)."""
        n = total // self.mapping.tp
        return self._rows(dst, src, layer, offset + tp_rank * n, n)

    def row(self, dst: str, src: str, layer: int, tp_rank: int) -> Job:
        """Columns [r*total/T, (r+1)*total/T) of the source."""
        rows, total = self.shapes[src]
        n = total // self.mapping.tp
        start = tp_rank * n
        return self._one(dst, (rows, n), lambda: self._cast(self.weights.read(src, layer, cols=(start, start + n))))

    def embedding(self, dst: str, tp_rank: int) -> Job:
        v, h = self.spec.vocab_size, self.spec.hidden_size
        lo, hi, rows = 0, v, v
        if self.parallel_embedding:
            rows = self.tp.vocab_rows_per_rank()
            lo, hi = tp_rank * rows, min(v, (tp_rank + 1) * rows)
        step = max(1, BLOCK_BYTES // (h * 4))

        def blocks() -> Blocks:
            for a in range(lo, hi, step):
                b = min(hi, a + step)
                yield a - lo, self._cast(self.weights.read(EMBEDDING, rows=(a, b)))

        padding = (rows - max(0, hi - lo)) * h * self.dtype.itemsize  # rows past V on the last rank stay zero
        return Job(dst, (rows, h), blocks, zero_bytes=padding)

    def head(self, dst: str, tp_rank: int) -> Job:
        k, h = self.spec.num_attributes, self.spec.hidden_size
        if self.lm_head == "compact":
            return self._one(dst, (k, h), lambda: self._cast(self.weights.read(HEAD_W)))
        rows = self.tp.vocab_rows_per_rank()
        lo = tp_rank * rows
        a, b = max(lo, 0), min(lo + rows, k)  # reward rows that fall into this rank's slice

        def blocks() -> Blocks:
            if a < b:
                yield a - lo, self._cast(self.weights.read(HEAD_W, rows=(a, b)))

        nonzero = max(0, b - a)
        return Job(dst, (rows, h), blocks, zero_bytes=(rows - nonzero) * h * self.dtype.itemsize)

    def cut(self, w: Weight, layer: int | None, local: int, tp_rank: int) -> list[Job]:
        """One table row's tensors on one rank (`local`: the layer's index within its pipeline stage)."""
        dst = stage_layer_names(w, local)
        if w.rule in (Rule.NORM_WEIGHT, Rule.NORM_BIAS):
            plus_one = w.rule is Rule.NORM_WEIGHT and self.spec.arch.layernorm1p
            return [self.norm(dst[0], w.name, layer, plus_one)]
        if w.rule is Rule.EMBEDDING:
            return [self.embedding(dst[0], tp_rank)]
        if w.rule is Rule.REWARD_HEAD:
            return [self.head(dst[0], tp_rank)]
        assert layer is not None, w.name
        if w.rule is Rule.QKV:
            return [self.qkv(dst[0], layer, tp_rank)]
        if w.rule is Rule.COLUMN:
            return [self.column(dst[0], w.name, layer, tp_rank, 0, self.shapes[w.name][0])]
        if w.rule is Rule.GATED:
            half = self.shapes[w.name][0] // 2
            return [self.column(name, w.name, layer, tp_rank, i * half, half) for i, name in enumerate(dst)]
        if w.rule is Rule.ROW:
            return [self.row(dst[0], w.name, layer, tp_rank)]
        raise ConversionError(f"'{w.name}': rule {w.rule.value} has no rank tensor")

    # -- the rank ------------------------------------------------------------------------------------
    def jobs(self, rank: int) -> list[Job]:
        tp_rank, pp_rank = self.mapping.ranks(rank)
        rows = engine_rows(self.spec.arch)
        first, last = pp_rank == 0, pp_rank == self.mapping.pp - 1
        jobs: list[Job] = []
        for w in rows:  # stage 0 holds the embedding, the last stage the final norm and the head
            if not w.is_layer and (first if w.rule is Rule.EMBEDDING else last):
                jobs += self.cut(w, None, 0, tp_rank)
        for local, layer in enumerate(self.mapping.stage_layers(self.spec.num_layers, pp_rank)):
            for w in rows:
                if w.is_layer:
                    jobs += self.cut(w, layer, local, tp_rank)
        return jobs


def tp_layout(spec: ModelSpec, mapping: Mapping, lm_head: str, parallel_embedding: bool = False) -> TPLayout:
    return TPLayout(
        tp=mapping.tp,
        num_heads=spec.num_attention_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        vocab_size=spec.vocab_size,
        parallel_embedding=parallel_embedding,
        compact_head=lm_head == "compact",
    )


# ---------------------------------------------------------------------------------------------------------
def trtllm_config(
    spec: ModelSpec, mapping: Mapping, dtype: str, lm_head: str, parallel_embedding: bool = False
) -> dict[str, object]:
    common: dict[str, object] = {
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_size": spec.head_dim,
        "intermediate_size": spec.ffn_hidden_size,
        "norm_epsilon": spec.norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": spec.max_position_embeddings,
        "rotary_base": spec.rotary_base,
        "mapping": mapping.to_json(),
        "use_parallel_embedding": parallel_embedding,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        "reward_head": {"num_attributes": spec.num_attributes, "lm_head": lm_head},
    }
    if spec.family == "llama":
        return {
            "architecture": "LlamaForCausalLM",
            **common,
            "hidden_act": "silu",
            "attn_bias": False,
            "mlp_bias": False,
            "rotary_scaling": None,
        }
    return {
        "architecture": "GPTForCausalLM",
        **common,
        "gpt_variant": "nemotron",
        "hidden_act": spec.activation,  # "squared-relu" | "gelu" | "swiglu"
        "bias": False,
        "rotary_pct": spec.rotary_pct,
        "apply_query_key_layer_scaling": False,
    }


def build_metadata(spec: ModelSpec, weights: WeightSource, dtype: str, lm_head: str) -> RewardMetadata:
    bias = weights.read(HEAD_B).float().tolist()
    return RewardMetadata(
        attribute_names=spec.attribute_names,
        trained_attributes=spec.trained_attributes,
        head_bias=tuple(bias),
        scalar_weights=spec.scalar_weights,
        max_input_len=spec.max_input_len,
        vocab_size=spec.vocab_size,
        lm_head=lm_head,
        dtype=dtype,
        model_family=spec.family,
    )


def write_rank(planner: RankPlanner, rank: int, directory: Path, progress: tqdm | None = None) -> Path:
    jobs = planner.jobs(rank)
    path = directory / f"rank{rank}.safetensors"
    writer = SafetensorsWriter(path, {j.name: (planner.dtype, j.shape) for j in jobs}, {"format": "pt"})
    try:
        for job in jobs:
            for row_start, block in job.blocks():
                n = writer.write(job.name, block, row_start)
                if progress is not None:
                    progress.update(n)
            if job.zero_bytes:
                writer.mark_zero(job.name, job.zero_bytes)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return path


def rank_bytes(planner: RankPlanner, rank: int) -> int:
    return sum(math.prod(j.shape) for j in planner.jobs(rank)) * planner.dtype.itemsize


def prepare(
    ckpt: NemoCheckpoint, mapping: Mapping, dtype: str, lm_head: str, parallel_embedding: bool = False
) -> tuple[ModelSpec, RankPlanner]:
    if dtype not in dtypes.NAMES:
        raise ConversionError(f"dtype '{dtype}' is not supported (choose from {', '.join(dtypes.NAMES)})")
    if lm_head not in ("padded", "compact"):
        raise ConversionError(f"lm_head '{lm_head}' must be 'padded' or 'compact'")
    spec = ModelSpec.from_nemo(ckpt.config, ckpt.weights)
    validate(spec, ckpt.weights, mapping)
    return spec, RankPlanner(spec, ckpt.weights, mapping, dtypes.parse_dtype(dtype), lm_head, parallel_embedding)


def write_side_files(ckpt: NemoCheckpoint, planner: RankPlanner, dtype: str, d: Path) -> None:
    """config.json, reward_metadata.json and the tokenizer: everything but the rank files."""
    spec, lm_head = planner.spec, planner.lm_head
    (d / TOKENIZER_FILE).write_bytes(ckpt.read_artifact(spec.tokenizer_ref))
    build_metadata(spec, ckpt.weights, dtype, lm_head).save(d)
    config = trtllm_config(spec, planner.mapping, dtype, lm_head, planner.parallel_embedding)
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def convert(
    nemo: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tp: int = 1,
    pp: int = 1,
    dtype: str = "bfloat16",
    lm_head: str = "padded",
    progress: bool = True,
    parallel_embedding: bool = False,
) -> Path:
    """Convert a NeMo reward checkpoint into a complete TensorRT-LLM checkpoint directory at `output`."""
    mapping = Mapping(tp, pp)
    with open_checkpoint(nemo) as ckpt:
        _, planner = prepare(ckpt, mapping, dtype, lm_head, parallel_embedding)
        total = sum(rank_bytes(planner, r) for r in range(mapping.world_size))
        with atomic_directory(Path(output)) as tmp:
            write_side_files(ckpt, planner, dtype, tmp)
            with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
                for rank in range(mapping.world_size):
                    write_rank(planner, rank, tmp, bar)
    return Path(output)


def convert_ranks(planner: RankPlanner, ranks: Iterable[int], directory: Path, progress: bool = False) -> None:
    """Write only `ranks` into `directory` (used by the MPI-parallel conversion)."""
    ranks = list(ranks)
    total = sum(rank_bytes(planner, r) for r in ranks)
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
        for rank in ranks:
            write_rank(planner, rank, directory, bar)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a conversion, shared by `python -m build_engine convert` and `build_engine.mpi_convert`."""
    p.add_argument("--nemo", required=True, help=".nemo file or extracted checkpoint directory (all nodes see it)")
    p.add_argument("--output", required=True, help="output directory (replaced atomically when complete)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--dtype", default="bfloat16", choices=dtypes.NAMES)
    p.add_argument(
        "--lm-head",
        default="padded",
        choices=["padded", "compact"],
        help="padded: vocab-sized lm_head with reward rows 0..K-1 (TensorRT-LLM); compact: [K, H] (PyTorch engine)",
    )
    p.add_argument(
        "--parallel-embedding",
        action="store_true",
        help="shard the embedding table over TP ranks (TensorRT-LLM use_parallel_embedding, dim 0)",
    )
    p.add_argument("--no-progress", action="store_true")


def arguments(a: argparse.Namespace) -> dict[str, Any]:
    """Parsed `add_arguments` options → keyword arguments of `convert` / `mpi_convert`."""
    return {
        "nemo": a.nemo,
        "output": a.output,
        "tp": a.tp,
        "pp": a.pp,
        "dtype": a.dtype,
        "lm_head": a.lm_head,
        "progress": not a.no_progress,
        "parallel_embedding": a.parallel_embedding,
    }
