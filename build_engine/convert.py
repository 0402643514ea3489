"""NeMo reward checkpoint → TensorRT-LLM unified checkpoint (config.json + rank{N}.safetensors), any TP×PP.

A conversion is a table of name mappings plus a few split rules (docs/design.md lists the canonical names):
- column-parallel weights (qkv, fc, gate, vocab rows of lm_head) split on dim 0, row-parallel (dense, proj) on dim 1;
- qkv is regrouped from NeMo's per-group [q.., k, v] rows into per-rank [q_r; k_r; v_r], replicating KV heads
  when there are fewer KV heads than TP ranks;
- layernorm1p weights get +1 (the runtime LayerNorm is plain);
- lm_head carries the reward head: padded vocab rows with rm_head in rows 0..K-1 and zeros elsewhere
  ("padded", what TensorRT-LLM needs), or just [K, H] on every last-stage rank ("compact", PyTorch engine only).
Every rank file is streamed one tensor slice at a time; memory stays at a few tensor shards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from build_engine import spec as names
from build_engine.nemo.errors import CheckpointError
from build_engine.nemo.source import NemoCheckpoint, WeightSource, open_checkpoint
from build_engine.safetensors_stream import SafetensorsWriter
from build_engine.spec import ModelSpec
from reward_triton.metadata import TOKENIZER_FILE, RewardMetadata

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
BLOCK_BYTES = 64 << 20  # row-block size for tensors streamed in pieces (embedding, lm_head)


class ConversionError(ValueError):
    """Unsupported TP×PP for this model, or a checkpoint that does not match its config."""


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    # TensorRT-LLM use_parallel_embedding (sharding dim 0): each TP rank of stage 0 holds pad(V,T)/T embedding
    # rows instead of all V, saving (T-1)/T of the table per GPU (8 GiB per GPU for Nemotron-4-340B at TP8).
    parallel_embedding: bool = False

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def ranks(self, rank: int) -> tuple[int, int]:
        """(tp_rank, pp_rank) of a global rank: ranks 0..tp-1 are stage 0."""
        return rank % self.tp, rank // self.tp

    def stage_layers(self, num_layers: int, pp_rank: int) -> list[int]:
        return torch.tensor_split(torch.arange(num_layers), self.pp)[pp_rank].tolist()


def pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def validate(spec: ModelSpec, weights: WeightSource, layout: Layout) -> None:
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
    t, kv = layout.tp, spec.num_kv_heads
    checks = [
        (spec.num_attention_heads % t == 0, f"num_attention_heads {spec.num_attention_heads}"),
        (spec.ffn_hidden_size % t == 0, f"ffn_hidden_size {spec.ffn_hidden_size}"),
        (kv % t == 0 if kv >= t else t % kv == 0, f"num_query_groups {kv} (KV heads replicate only evenly)"),
    ]
    for ok, what in checks:
        if not ok:
            raise ConversionError(f"tp_size {t} does not divide {what}")
    if layout.pp < 1 or layout.pp > spec.num_layers:
        raise ConversionError(f"pp_size {layout.pp} must be between 1 and num_layers {spec.num_layers}")


# ---------------------------------------------------------------------------------------------------------
# Split rules: each returns the per-rank shape and a generator of (row_start, block) for that rank.
Blocks = Iterator[tuple[int, torch.Tensor]]


@dataclass(frozen=True)
class Job:
    name: str  # TensorRT-LLM name inside the rank file
    shape: tuple[int, ...]
    blocks: Callable[[], Blocks]
    zero_bytes: int = 0  # bytes of this tensor intentionally left zero (padded lm_head rows)


class RankPlanner:
    """Builds the list of tensors (name, per-rank shape, how to produce it) for one output rank."""

    def __init__(self, spec: ModelSpec, weights: WeightSource, layout: Layout, dtype: torch.dtype, lm_head: str):
        self.spec, self.weights, self.layout, self.dtype, self.lm_head = spec, weights, layout, dtype, lm_head

    # -- reading helpers -------------------------------------------------------------------------------
    def _read(self, name: str, layer: int | None = None, rows: tuple[int, int] | None = None) -> torch.Tensor:
        return self.weights.read(name, layer=layer, rows=rows)

    def _read_cols(self, name: str, layer: int, start: int, stop: int) -> torch.Tensor:
        return self.weights.read(name, layer=layer, cols=(start, stop))

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype).contiguous()

    def _norm(self, t: torch.Tensor, is_weight: bool) -> torch.Tensor:
        t = t.float()
        if is_weight and self.spec.normalization == "layernorm1p":
            t = t + 1.0
        return self._cast(t)

    def _one(self, name: str, shape: tuple[int, ...], fn: Callable[[], torch.Tensor]) -> Job:
        return Job(name, shape, lambda: iter([(0, fn())]))

    # -- rules -----------------------------------------------------------------------------------------
    def norm(self, dst: str, src: str, layer: int | None, is_weight: bool) -> Job:
        return self._one(dst, (self.spec.hidden_size,), lambda: self._norm(self._read(src, layer), is_weight))

    def qkv(self, dst: str, layer: int, tp_rank: int) -> Job:
        s, t = self.spec, self.layout.tp
        hd, kv, hpg = s.head_dim, s.num_kv_heads, s.num_attention_heads // s.num_kv_heads
        group_rows = (hpg + 2) * hd
        q_heads = s.num_attention_heads // t
        kv_local = max(kv // t, 1)
        rows = (q_heads + 2 * kv_local) * hd

        if kv >= t:  # whole groups per rank: all their query heads
            g0, n_groups, h0, h1 = tp_rank * kv_local, kv_local, 0, hpg
        else:  # several ranks share one group: a slice of its query heads, its KV head replicated
            part = tp_rank % (t // kv)
            g0, n_groups, h0, h1 = tp_rank * kv // t, 1, part * q_heads, (part + 1) * q_heads
        # rows of the group-aligned block in output order [q_r; k_r; v_r], gathered in one copy
        idx = [g * group_rows + h * hd + d for g in range(n_groups) for h in range(h0, h1) for d in range(hd)]
        for head in (hpg, hpg + 1):  # k, then v
            idx += [g * group_rows + head * hd + d for g in range(n_groups) for d in range(hd)]
        index = torch.tensor(idx)

        def build() -> torch.Tensor:
            block = self._read(names.QKV, layer, (g0 * group_rows, (g0 + n_groups) * group_rows))
            return self._cast(block.index_select(0, index))

        return self._one(dst, (rows, s.hidden_size), build)

    def split_rows(self, dst: str, src: str, layer: int, tp_rank: int, offset: int, total: int) -> Job:
        """Column-parallel: rows [offset + r*total/T, ...) of the source (offset selects a SwiGLU half)."""
        n = total // self.layout.tp
        start = offset + tp_rank * n
        return self._one(
            dst, (n, self.spec.hidden_size), lambda: self._cast(self._read(src, layer, (start, start + n)))
        )

    def split_cols(self, dst: str, src: str, layer: int, tp_rank: int, total: int) -> Job:
        """Row-parallel: columns [r*total/T, (r+1)*total/T) of the source."""
        n = total // self.layout.tp
        start = tp_rank * n
        return self._one(
            dst, (self.spec.hidden_size, n), lambda: self._cast(self._read_cols(src, layer, start, start + n))
        )

    def embedding(self, tp_rank: int) -> Job:
        v, h = self.spec.vocab_size, self.spec.hidden_size
        lo, hi = 0, v
        if self.layout.parallel_embedding:
            rows = pad_to(v, self.layout.tp) // self.layout.tp
            lo, hi = tp_rank * rows, min(v, (tp_rank + 1) * rows)
        else:
            rows = v
        step = max(1, BLOCK_BYTES // (h * 4))

        def blocks() -> Blocks:
            for a in range(lo, hi, step):
                b = min(hi, a + step)
                yield a - lo, self._cast(self._read(names.EMBEDDING, rows=(a, b)))

        padding = (rows - max(0, hi - lo)) * h * self.dtype.itemsize  # rows past V on the last rank stay zero
        return Job("transformer.vocab_embedding.weight", (rows, h), blocks, zero_bytes=padding)

    def head(self, tp_rank: int) -> Job:
        k, h = self.spec.num_attributes, self.spec.hidden_size
        if self.lm_head == "compact":
            return self._one("lm_head.weight", (k, h), lambda: self._cast(self._read(names.HEAD_W)))
        rows = pad_to(self.spec.vocab_size, self.layout.tp) // self.layout.tp
        lo, hi = tp_rank * rows, (tp_rank + 1) * rows
        a, b = max(lo, 0), min(hi, k)  # reward rows that fall into this rank's slice

        def blocks() -> Blocks:
            if a < b:
                yield a - lo, self._cast(self._read(names.HEAD_W, rows=(a, b)))

        nonzero = max(0, b - a)
        return Job("lm_head.weight", (rows, h), blocks, zero_bytes=(rows - nonzero) * h * self.dtype.itemsize)

    # -- the table -------------------------------------------------------------------------------------
    def jobs(self, rank: int) -> list[Job]:
        s = self.spec
        tp_rank, pp_rank = self.layout.ranks(rank)
        jobs: list[Job] = []
        if pp_rank == 0:
            jobs.append(self.embedding(tp_rank))
        f, attn = s.ffn_hidden_size, s.num_attention_heads * s.head_dim
        for local, layer in enumerate(self.layout.stage_layers(s.num_layers, pp_rank)):
            p = f"transformer.layers.{local}."
            jobs.append(self.norm(p + "input_layernorm.weight", names.LN1_W, layer, True))
            jobs.append(self.qkv(p + "attention.qkv.weight", layer, tp_rank))
            jobs.append(self.split_cols(p + "attention.dense.weight", names.PROJ, layer, tp_rank, attn))
            jobs.append(self.norm(p + "post_layernorm.weight", names.LN2_W, layer, True))
            jobs.append(self.split_rows(p + "mlp.fc.weight", names.FC1, layer, tp_rank, 0, f))
            if s.gated:
                jobs.append(self.split_rows(p + "mlp.gate.weight", names.FC1, layer, tp_rank, f, f))
            jobs.append(self.split_cols(p + "mlp.proj.weight", names.FC2, layer, tp_rank, f))
            if s.has_norm_bias:
                jobs.append(self.norm(p + "input_layernorm.bias", names.LN1_B, layer, False))
                jobs.append(self.norm(p + "post_layernorm.bias", names.LN2_B, layer, False))
        if pp_rank == self.layout.pp - 1:
            jobs.append(self.norm("transformer.ln_f.weight", names.LNF_W, None, True))
            if s.has_norm_bias:
                jobs.append(self.norm("transformer.ln_f.bias", names.LNF_B, None, False))
            jobs.append(self.head(tp_rank))
        return jobs


# ---------------------------------------------------------------------------------------------------------
def trtllm_config(spec: ModelSpec, layout: Layout, dtype: str, lm_head: str) -> dict[str, object]:
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
        "mapping": {"world_size": layout.world_size, "tp_size": layout.tp, "pp_size": layout.pp},
        "use_parallel_embedding": layout.parallel_embedding,
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
    bias = weights.read(names.HEAD_B).float().tolist()
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


def partial_directory(output: Path) -> Path:
    """Create and return a fresh hidden sibling `.NAME.partial-*` of `output` to build into."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def commit_directory(tmp: Path, output: Path) -> None:
    """Atomically put the finished `tmp` in place of `output` (an existing `output` is replaced, then removed)."""
    output = Path(output)
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output)


@contextmanager
def atomic_directory(output: Path) -> Iterator[Path]:
    """Yield a hidden sibling directory; on success it replaces `output`, on failure it is removed.

    A directory named `output` therefore only ever holds a complete conversion; a killed run leaves only a
    `.NAME.partial-*` directory, never something that looks finished.
    """
    tmp = partial_directory(Path(output))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_directory(tmp, Path(output))


def prepare(ckpt: NemoCheckpoint, layout: Layout, dtype: str, lm_head: str) -> tuple[ModelSpec, RankPlanner]:
    if dtype not in DTYPES:
        raise ConversionError(f"dtype '{dtype}' is not supported (choose from {sorted(DTYPES)})")
    if lm_head not in ("padded", "compact"):
        raise ConversionError(f"lm_head '{lm_head}' must be 'padded' or 'compact'")
    spec = ModelSpec.from_nemo(ckpt.config, ckpt.weights)
    validate(spec, ckpt.weights, layout)
    return spec, RankPlanner(spec, ckpt.weights, layout, DTYPES[dtype], lm_head)


def write_side_files(ckpt: NemoCheckpoint, spec: ModelSpec, layout: Layout, dtype: str, lm_head: str, d: Path) -> None:
    """config.json, reward_metadata.json and the tokenizer: everything but the rank files."""
    (d / TOKENIZER_FILE).write_bytes(ckpt.read_artifact(spec.tokenizer_ref))
    build_metadata(spec, ckpt.weights, dtype, lm_head).save(d)
    (d / "config.json").write_text(json.dumps(trtllm_config(spec, layout, dtype, lm_head), indent=2) + "\n")


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
    layout = Layout(tp, pp, parallel_embedding)
    with open_checkpoint(nemo) as ckpt:
        spec, planner = prepare(ckpt, layout, dtype, lm_head)
        total = sum(rank_bytes(planner, r) for r in range(layout.world_size))
        with atomic_directory(Path(output)) as tmp:
            write_side_files(ckpt, spec, layout, dtype, lm_head, tmp)
            with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
                for rank in range(layout.world_size):
                    write_rank(planner, rank, tmp, bar)
    return Path(output)


def convert_ranks(planner: RankPlanner, ranks: Iterable[int], directory: Path, progress: bool = False) -> None:
    """Write only `ranks` into `directory` (used by the MPI-parallel conversion)."""
    ranks = list(ranks)
    total = sum(rank_bytes(planner, r) for r in ranks)
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
        for rank in ranks:
            write_rank(planner, rank, directory, bar)
