"""The one table of weight names and split rules (the formats are described in docs/formats.md).

Each row is one canonical weight: its NeMo mcore name (the canonical name, without `model.`), its key in
pre-mcore (legacy) NeMo rank files, how Megatron shards it over tensor-parallel ranks in a NeMo checkpoint, its
TensorRT-LLM name and the rule by which the converter cuts it per TensorRT-LLM rank (and the engine joins the
rank files back). Every reader and writer is driven by this table:
- `build_engine/nemo/legacy.py` maps legacy keys to canonical names (`LEGACY`);
- `tooling/nemo_writer.py` shards canonical tensors as NeMo does (`Weight.nemo_split`, `legacy`);
- `build_engine/convert.py` cuts each rank file (`engine_rows`: which rows this architecture has, by which `Rule`);
- `reward_triton/engine/checkpoint.py` joins the rank files into whole tensors (`join`).
Adding an architecture variant is adding a row (with the `Needs` that selects it). The table sits in the runtime
package because the serving engine reads rank files by it, and the runtime never imports `build_engine`.

Architecture facts are decided once here: `is_gated(activation)` and `Arch` (gated MLP, norm with bias, layernorm1p).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# ------------------------------------------------------------------------------------------------ architecture
GATED_ACTIVATIONS = ("swiglu", "geglu", "reglu", "silu")


def is_gated(activation: str) -> bool:
    """Whether an MLP with this activation has two fc1 halves (NeMo `swiglu`, TensorRT-LLM Llama `silu`)."""
    return any(g in activation.lower() for g in GATED_ACTIVATIONS)


@dataclass(frozen=True)
class Arch:
    """The architecture facts that select table rows and rules."""

    gated: bool  # fc1 is [act; up] (SwiGLU): two TensorRT-LLM tensors, mlp.fc (activated) and mlp.gate
    norm_bias: bool  # LayerNorm (has a bias), not RMSNorm
    layernorm1p: bool = False  # NeMo stores gamma - 1; TensorRT-LLM's LayerNorm takes gamma


class Needs(enum.Enum):
    """Which architectures have a row."""

    ALWAYS = "always"
    NORM_BIAS = "norm_bias"
    DENSE_MLP = "dense_mlp"
    GATED_MLP = "gated_mlp"

    def __call__(self, arch: Arch) -> bool:
        return {
            Needs.ALWAYS: True,
            Needs.NORM_BIAS: arch.norm_bias,
            Needs.DENSE_MLP: not arch.gated,
            Needs.GATED_MLP: arch.gated,
        }[self]


class Rule(enum.Enum):
    """How a canonical weight becomes TensorRT-LLM rank tensors (docs/formats.md, "TensorRT-LLM checkpoint")."""

    EMBEDDING = "embedding"  # whole table on each stage-0 rank, or vocab rows over TP (use_parallel_embedding)
    NORM_WEIGHT = "norm_weight"  # replicated; layernorm1p gets +1
    NORM_BIAS = "norm_bias"  # replicated
    QKV = "qkv"  # NeMo's per-group [q.., k, v] rows → per rank [q_r; k_r; v_r]; KV heads replicate when kv < TP
    COLUMN = "column"  # rows split over TP
    GATED = "gated"  # [act; up] rows: act → first name, up → second name, each split over TP
    ROW = "row"  # columns split over TP
    REWARD_HEAD = "reward_head"  # lm_head: padded-vocab rows with rm_head in rows 0..K-1, or compact [K, H]
    METADATA = "metadata"  # not a rank tensor: rm_head.bias goes to reward_metadata.json
    UNUSED = "unused"  # read by no stage (the LM output_layer; linear biases, which the spec refuses)


@dataclass(frozen=True)
class Weight:
    name: str  # canonical NeMo name; `decoder.layers.` names are layer tensors (stacked [L, ...] in mcore)
    legacy: str  # key in legacy rank files after `model.`; `{i}`: the layer index local to the pipeline stage
    nemo_split: int | None  # Megatron's TP split dim in NeMo checkpoints (per layer); None: replicated
    trtllm: tuple[str, ...]  # TensorRT-LLM names; `{i}`: the layer index local to the pipeline stage
    rule: Rule
    needs: Needs = Needs.ALWAYS

    @property
    def is_layer(self) -> bool:
        return is_layer(self.name)


def is_layer(name: str) -> bool:
    """Layer tensors are stored per layer (`decoder.layers.{i}.`) or stacked with a leading layer axis."""
    return name.startswith("decoder.layers.")


# Canonical names (docs/formats.md, "Canonical weight names").
EMBEDDING = "embedding.word_embeddings.weight"
LN1_W = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
LN1_B = "decoder.layers.self_attention.linear_qkv.layer_norm_bias"
QKV = "decoder.layers.self_attention.linear_qkv.weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"
LN2_W = "decoder.layers.mlp.linear_fc1.layer_norm_weight"
LN2_B = "decoder.layers.mlp.linear_fc1.layer_norm_bias"
FC1 = "decoder.layers.mlp.linear_fc1.weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"
LNF_W = "decoder.final_layernorm.weight"
LNF_B = "decoder.final_layernorm.bias"
HEAD_W = "rm_head.weight"
HEAD_B = "rm_head.bias"
OUTPUT = "output_layer.weight"

_L = "language_model.encoder.layers.{i}."
_T = "transformer.layers.{i}."
# fmt: off
WEIGHTS: tuple[Weight, ...] = (
    Weight(EMBEDDING, "language_model.embedding.word_embeddings.weight", 0, ("transformer.vocab_embedding.weight",),
           Rule.EMBEDDING),
    Weight(LN1_W, _L + "input_layernorm.weight", None, (_T + "input_layernorm.weight",), Rule.NORM_WEIGHT),
    Weight(LN1_B, _L + "input_layernorm.bias", None, (_T + "input_layernorm.bias",), Rule.NORM_BIAS,
           Needs.NORM_BIAS),
    Weight(QKV, _L + "self_attention.query_key_value.weight", 0, (_T + "attention.qkv.weight",), Rule.QKV),
    Weight(PROJ, _L + "self_attention.dense.weight", 1, (_T + "attention.dense.weight",), Rule.ROW),
    Weight(LN2_W, _L + "post_attention_layernorm.weight", None, (_T + "post_layernorm.weight",), Rule.NORM_WEIGHT),
    Weight(LN2_B, _L + "post_attention_layernorm.bias", None, (_T + "post_layernorm.bias",), Rule.NORM_BIAS,
           Needs.NORM_BIAS),
    Weight(FC1, _L + "mlp.dense_h_to_4h.weight", 0, (_T + "mlp.fc.weight",), Rule.COLUMN, Needs.DENSE_MLP),
    Weight(FC1, _L + "mlp.dense_h_to_4h.weight", 0, (_T + "mlp.fc.weight", _T + "mlp.gate.weight"), Rule.GATED,
           Needs.GATED_MLP),
    Weight(FC2, _L + "mlp.dense_4h_to_h.weight", 1, (_T + "mlp.proj.weight",), Rule.ROW),
    Weight(LNF_W, "language_model.encoder.final_layernorm.weight", None, ("transformer.ln_f.weight",),
           Rule.NORM_WEIGHT),
    Weight(LNF_B, "language_model.encoder.final_layernorm.bias", None, ("transformer.ln_f.bias",), Rule.NORM_BIAS,
           Needs.NORM_BIAS),
    # mcore splits the reward head's columns (dim 1); legacy rank files replicate it (the legacy reader tells).
    Weight(HEAD_W, "rm_head.weight", 1, ("lm_head.weight",), Rule.REWARD_HEAD),
    Weight(HEAD_B, "rm_head.bias", None, (), Rule.METADATA),
    Weight(OUTPUT, "language_model.output_layer.weight", 0, (), Rule.UNUSED),
    # linear-layer biases: mapped so that a checkpoint holding them is read by name; `bias: true` is refused
    Weight("decoder.layers.self_attention.linear_qkv.bias", _L + "self_attention.query_key_value.bias", 0, (),
           Rule.UNUSED),
    Weight("decoder.layers.self_attention.linear_proj.bias", _L + "self_attention.dense.bias", None, (), Rule.UNUSED),
    Weight("decoder.layers.mlp.linear_fc1.bias", _L + "mlp.dense_h_to_4h.bias", 0, (), Rule.UNUSED),
    Weight("decoder.layers.mlp.linear_fc2.bias", _L + "mlp.dense_4h_to_h.bias", None, (), Rule.UNUSED),
)
# fmt: on

BY_NAME: dict[str, Weight] = {w.name: w for w in WEIGHTS}  # the NeMo facts (legacy key, split) agree across variants
LEGACY: dict[str, Weight] = {w.legacy: w for w in WEIGHTS}  # layer keys with `{i}` in place of the index


def nemo_split(name: str) -> int | None:
    """Megatron's TP split dim of a canonical weight (per layer), None when replicated or unknown."""
    w = BY_NAME.get(name)
    return None if w is None else w.nemo_split


def engine_rows(arch: Arch) -> list[Weight]:
    """The rows that become rank tensors for this architecture, in table order."""
    return [w for w in WEIGHTS if w.trtllm and w.needs(arch)]


# ------------------------------------------------------------------------------------------------ split rules
@dataclass(frozen=True)
class TPLayout:
    """What the cut and join rules need to know about the model and the tensor-parallel mapping."""

    tp: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    parallel_embedding: bool = False
    compact_head: bool = False  # lm_head is [K, H] on every last-stage rank (PyTorch engine only)

    @property
    def kv_per_rank(self) -> int:
        return max(self.num_kv_heads // self.tp, 1)

    def vocab_rows_per_rank(self) -> int:
        return pad_to(self.vocab_size, self.tp) // self.tp

    def qkv_source_rows(self, tp_rank: int) -> tuple[int, int, list[int]]:
        """The converter's QKV cut for one rank: (first, end) rows of the group-aligned NeMo block this rank reads,
        and the block's row indices in output order [q_r; k_r; v_r]."""
        hd, kv, t = self.head_dim, self.num_kv_heads, self.tp
        hpg = self.num_heads // kv
        group_rows = (hpg + 2) * hd
        q_heads = self.num_heads // t
        if kv >= t:  # whole groups per rank: all their query heads
            g0, n_groups, h0, h1 = tp_rank * self.kv_per_rank, self.kv_per_rank, 0, hpg
        else:  # several ranks share one group: a slice of its query heads, its KV head replicated
            part = tp_rank % (t // kv)
            g0, n_groups, h0, h1 = tp_rank * kv // t, 1, part * q_heads, (part + 1) * q_heads
        idx = [g * group_rows + h * hd + d for g in range(n_groups) for h in range(h0, h1) for d in range(hd)]
        for head in (hpg, hpg + 1):  # k, then v
            idx += [g * group_rows + head * hd + d for g in range(n_groups) for d in range(hd)]
        return g0 * group_rows, (g0 + n_groups) * group_rows, idx


def pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


Shards = Sequence[torch.Tensor]  # one tensor per TP rank of a stage, in TP-rank order


def _join_qkv(shards: Shards, lay: TPLayout) -> torch.Tensor:
    """Rank [q_r; k_r; v_r] blocks → global [q; k; v] rows (one GEMM for all three)."""
    q_rows = lay.num_heads // lay.tp * lay.head_dim
    kv_rows = lay.kv_per_rank * lay.head_dim
    # KV head j lives on the first rank whose slice holds it (ranks replicate heads when kv < tp)
    kv, t = lay.num_kv_heads, lay.tp
    kv_ranks = list(range(t)) if kv >= t else [j * t // kv for j in range(kv)]
    return torch.cat(
        [x[:q_rows] for x in shards]
        + [shards[r][q_rows : q_rows + kv_rows] for r in kv_ranks]
        + [shards[r][q_rows + kv_rows :] for r in kv_ranks]
    )


def join(weight: Weight, read: Callable[[str], Shards], lay: TPLayout) -> torch.Tensor:
    """Whole tensor of one row from its rank tensors (`read(trtllm_name)` gives the TP shards of the stage).

    The result is in TensorRT-LLM's math: norm weights as applied (+1 already in), QKV as [q; k; v], a gated fc1
    as [act; up] (NeMo's order), lm_head as stored (padded vocab rows, or [K, H] when compact)."""
    rule, names = weight.rule, weight.trtllm
    if rule in (Rule.NORM_WEIGHT, Rule.NORM_BIAS):
        return read(names[0])[0]
    if rule is Rule.EMBEDDING:
        shards = read(names[0])
        return torch.cat(list(shards))[: lay.vocab_size] if lay.parallel_embedding else shards[0]
    if rule is Rule.QKV:
        return _join_qkv(read(names[0]), lay)
    if rule is Rule.COLUMN:
        return torch.cat(list(read(names[0])))
    if rule is Rule.GATED:
        return torch.cat([*read(names[0]), *read(names[1])])
    if rule is Rule.ROW:
        return torch.cat(list(read(names[0])), dim=1)
    if rule is Rule.REWARD_HEAD:
        shards = read(names[0])
        return shards[0] if lay.compact_head else torch.cat(list(shards))
    raise ValueError(f"'{weight.name}' ({rule.value}) is not a rank tensor")


def stage_layer_names(weight: Weight, local: int) -> tuple[str, ...]:
    """The row's TensorRT-LLM names for the layer with index `local` in its stage (or as they are, not a layer)."""
    return tuple(n.format(i=local) for n in weight.trtllm)
