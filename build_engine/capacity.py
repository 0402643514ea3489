"""Capacity planning: weight memory per GPU, KV-cache headroom and the FLOP-bound throughput ceiling.

    python -m build_engine.capacity                    # both production models, published configs
    python -m build_engine.capacity --nemo CKPT --tp 8 --pp 2 --seq-len 4096

Weight bytes per GPU are exact: they are the sizes of the tensors the converter plans for each output rank
(`convert.RankPlanner`, summed like `convert.rank_bytes`), so replicated norms, the whole embedding table on
first-stage ranks and the vocab-padded lm_head on last-stage ranks are all counted. Everything else is a model:

- headroom = GPU memory − weights − a fixed runtime reserve (CUDA context, NCCL, TensorRT activations);
  TensorRT-LLM gives `kv_cache_free_gpu_mem_fraction` of what is free to the paged KV cache;
- KV bytes per token on a rank = 2 (K, V) × its layers × KV heads per TP rank × head_dim × 2 (bf16);
- FLOPs per token = 2 × (linear-layer weights every token multiplies) + causal attention
  2 × layers × heads × head_dim × (S + 1) at sequence length S (QKᵀ and AV over on average (S + 1)/2 keys)
  + the lm_head once per sequence; the embedding is a lookup (no FLOPs);
- ceiling (tokens/s) = GPUs × dense BF16 peak / FLOPs per token: 100 % utilisation with the pipeline always
  full; real serving reaches a fraction of it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from build_engine.convert import RankPlanner, rank_bytes
from build_engine.spec import ModelSpec
from reward_triton.engine.dtypes import parse_dtype
from reward_triton.engine.mapping import Mapping
from reward_triton.engine.weights import EMBEDDING, HEAD_W

GIB = 1 << 30
H100_MEMORY_BYTES = 81559 * (1 << 20)  # H100 SXM 80 GB (HBM3) as nvidia-smi reports it: 81559 MiB
H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM dense BF16 tensor-core peak (no sparsity)
DEFAULT_RESERVE_BYTES = 4 * GIB  # assumption: CUDA context + NCCL + TensorRT activations at max_num_tokens 16384
DEFAULT_KV_FRACTION = 0.9  # tensorrt_llm config.pbtxt kv_cache_free_gpu_mem_fraction


# Published model_config.yaml values of the released checkpoints (docs/production.md lists what they imply).
NEMOTRON_4_340B_REWARD: dict[str, Any] = {
    "num_layers": 96,
    "hidden_size": 18432,
    "ffn_hidden_size": 73728,
    "num_attention_heads": 96,
    "num_query_groups": 8,
    "kv_channels": None,
    "encoder_seq_length": 4096,
    "max_position_embeddings": 4096,
    "normalization": "layernorm1p",
    "layernorm_epsilon": 1e-5,
    "bias": False,
    "activation": "squared-relu",
    "transformer_block_type": "pre_ln",
    "position_embedding_type": "rope",
    "rotary_percentage": 0.5,
    "share_embeddings_and_output_weights": False,
    "regression": {"num_attributes": 9},
    "tokenizer": {"library": "sentencepiece", "model": "nemo:nemotron_2_256k.model"},
}
LLAMA2_13B_RLHF_RM: dict[str, Any] = {
    "num_layers": 40,
    "hidden_size": 5120,
    "ffn_hidden_size": 13824,
    "num_attention_heads": 40,
    "num_query_groups": None,
    "kv_channels": None,
    "encoder_seq_length": 4096,
    "max_position_embeddings": 4096,
    "normalization": "rmsnorm",
    "layernorm_epsilon": 1e-5,
    "bias": False,
    "activation": "fast-swiglu",
    "transformer_block_type": "pre_ln",
    "position_embedding_type": "rope",
    "rotary_percentage": 1.0,
    "share_embeddings_and_output_weights": False,
    "regression": {"num_attributes": 1},
    "tokenizer": {"library": "sentencepiece", "model": "nemo:tokenizer.model"},
}
# name → (config, embedding rows, production layouts (tp, pp, parallel embedding) to tabulate)
PUBLISHED: dict[str, tuple[dict[str, Any], int, tuple[tuple[int, int, bool], ...]]] = {
    "Nemotron-4-340B-Reward": (NEMOTRON_4_340B_REWARD, 256000, ((8, 2, False), (8, 2, True), (8, 1, False))),
    "Llama2-13B-RLHF-RM": (LLAMA2_13B_RLHF_RM, 32000, ((1, 1, False), (2, 1, False))),
}


class _Shapes:
    """The two shapes ModelSpec.from_nemo reads from a checkpoint, for a config without one."""

    def __init__(self, vocab_rows: int, hidden: int, num_attributes: int) -> None:
        self._shapes = {EMBEDDING: (vocab_rows, hidden), HEAD_W: (num_attributes, hidden)}

    def has(self, name: str) -> bool:
        return name in self._shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]


def published_spec(name: str) -> ModelSpec:
    cfg, vocab, _ = PUBLISHED[name]
    k = int(cfg["regression"]["num_attributes"])
    return ModelSpec.from_nemo(cfg, _Shapes(vocab, int(cfg["hidden_size"]), k))


def per_rank_weight_bytes(
    spec: ModelSpec, mapping: Mapping, dtype: str = "bfloat16", parallel_embedding: bool = False
) -> list[int]:
    """Bytes of every output rank file's tensors, from the converter's own plan (no weights are read)."""
    planner = RankPlanner(spec, None, mapping, parse_dtype(dtype), "padded", parallel_embedding)  # type: ignore[arg-type]
    return [rank_bytes(planner, r) for r in range(mapping.world_size)]


def kv_bytes_per_token(spec: ModelSpec, mapping: Mapping, pp_rank: int, kv_itemsize: int = 2) -> int:
    layers = len(mapping.stage_layers(spec.num_layers, pp_rank))
    kv_heads = max(spec.num_kv_heads // mapping.tp, 1)
    return 2 * layers * kv_heads * spec.head_dim * kv_itemsize


def linear_params(spec: ModelSpec) -> int:
    """Weights of the per-token matmuls (qkv, dense, fc [+ gate], proj) over all layers."""
    h, f = spec.hidden_size, spec.ffn_hidden_size
    per_layer = spec.qkv_rows * h + h * spec.num_attention_heads * spec.head_dim + (3 if spec.arch.gated else 2) * f * h
    return spec.num_layers * per_layer


def total_params(spec: ModelSpec) -> int:
    norms = (2 * spec.num_layers + 1) * spec.hidden_size * (2 if spec.arch.norm_bias else 1)
    head = spec.num_attributes * (spec.hidden_size + 1)
    return linear_params(spec) + spec.vocab_size * spec.hidden_size + norms + head


def flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    attention = 2 * spec.num_layers * spec.num_attention_heads * spec.head_dim * (seq_len + 1)
    lm_head = 2 * spec.vocab_size * spec.hidden_size / seq_len  # padded lm_head, last token of each sequence
    return 2 * linear_params(spec) + attention + lm_head


@dataclass(frozen=True)
class Capacity:
    model: str
    tp: int
    pp: int
    gpus: int
    params: int
    weight_max: int  # bytes on the fullest GPU
    weight_min: int
    free_min: int  # bytes left on the tightest GPU after weights and the reserve (negative: does not fit)
    kv_tokens: int  # KV-cache tokens the tightest rank can hold at the KV fraction
    kv_bytes_token: int  # on the rank with the most layers
    flops_token: float
    seq_len: int
    tokens_per_s: float
    parallel_embedding: bool = False

    @property
    def fits(self) -> bool:
        return self.free_min > 0

    @property
    def sequences_in_kv(self) -> int:
        return self.kv_tokens // (self.seq_len + 1)

    @property
    def requests_per_s(self) -> float:
        return self.tokens_per_s / self.seq_len


def capacity(
    model: str,
    spec: ModelSpec,
    tp: int,
    pp: int,
    seq_len: int = 4096,
    gpu_bytes: int = H100_MEMORY_BYTES,
    reserve: int = DEFAULT_RESERVE_BYTES,
    kv_fraction: float = DEFAULT_KV_FRACTION,
    peak_flops: float = H100_BF16_DENSE_FLOPS,
    parallel_embedding: bool = False,
) -> Capacity:
    mapping = Mapping(tp, pp)
    weights = per_rank_weight_bytes(spec, mapping, parallel_embedding=parallel_embedding)
    kv_tokens = None
    free_min = None
    for rank, w in enumerate(weights):
        free = gpu_bytes - w - reserve
        per_tok = kv_bytes_per_token(spec, mapping, mapping.ranks(rank)[1])
        tokens = max(0, int(free * kv_fraction) // per_tok)
        kv_tokens = tokens if kv_tokens is None else min(kv_tokens, tokens)
        free_min = free if free_min is None else min(free_min, free)
    flops = flops_per_token(spec, seq_len)
    return Capacity(
        model=model,
        tp=tp,
        pp=pp,
        gpus=mapping.world_size,
        params=total_params(spec),
        weight_max=max(weights),
        weight_min=min(weights),
        free_min=int(free_min or 0),
        kv_tokens=int(kv_tokens or 0),
        kv_bytes_token=max(kv_bytes_per_token(spec, mapping, s) for s in range(pp)),
        flops_token=flops,
        seq_len=seq_len,
        tokens_per_s=mapping.world_size * peak_flops / flops,
        parallel_embedding=parallel_embedding,
    )


def table(rows: Sequence[Capacity]) -> str:
    head = (
        "| model | TP×PP | GPUs | params | weights/GPU (max / min) | free after weights+reserve | KV B/token/GPU "
        "| KV tokens (seqs of S+1) | GFLOP/token @S | ceiling tokens/s | ceiling req/s @S |"
    )
    lines = [head, "|" + "---|" * 11]
    for c in rows:
        free = f"{c.free_min / GIB:.1f} GiB" if c.fits else f"does not fit (−{-c.free_min / GIB:.1f} GiB)"
        kv = f"{c.kv_tokens:,} ({c.sequences_in_kv:,})" if c.fits else "–"
        ceiling = f"{c.tokens_per_s:,.0f} | {c.requests_per_s:.2f}" if c.fits else "– | –"
        lines.append(
            f"| {c.model} | {c.tp}×{c.pp}{' +PE' if c.parallel_embedding else ''} | {c.gpus} | {c.params / 1e9:.1f} B "
            f"| {c.weight_max / GIB:.2f} / {c.weight_min / GIB:.2f} GiB | {free} | {c.kv_bytes_token:,} | {kv} "
            f"| {c.flops_token / 1e9:.1f} @{c.seq_len} | {ceiling} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m build_engine.capacity",
        description="Weight memory per GPU (exact, from the conversion plan), KV headroom and FLOP-bound "
        "throughput ceiling on H100.",
    )
    p.add_argument("--nemo", help="a NeMo checkpoint to size instead of the two published configs")
    p.add_argument("--tp", type=int, help="with --nemo (or to override the published layouts)")
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--parallel-embedding", action="store_true", help="embedding sharded over TP ranks (+PE)")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per request for FLOPs and KV sizing")
    p.add_argument("--gpu-gib", type=float, default=H100_MEMORY_BYTES / GIB, help="GPU memory (default H100 80GB)")
    p.add_argument("--reserve-gib", type=float, default=DEFAULT_RESERVE_BYTES / GIB, help="runtime reserve per GPU")
    p.add_argument("--kv-fraction", type=float, default=DEFAULT_KV_FRACTION)
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_FLOPS / 1e12, help="per GPU, dense BF16")
    a = p.parse_args(argv)
    kw = dict(
        seq_len=a.seq_len,
        gpu_bytes=int(a.gpu_gib * GIB),
        reserve=int(a.reserve_gib * GIB),
        kv_fraction=a.kv_fraction,
        peak_flops=a.peak_tflops * 1e12,
    )
    rows: list[Capacity] = []
    if a.nemo:
        from build_engine.nemo.source import open_checkpoint

        with open_checkpoint(a.nemo) as ckpt:
            spec = ModelSpec.from_nemo(ckpt.config, ckpt.weights)
        rows.append(capacity(str(a.nemo), spec, a.tp or 1, a.pp, parallel_embedding=a.parallel_embedding, **kw))  # type: ignore[arg-type]
    else:
        for name, (_, _, layouts) in PUBLISHED.items():
            spec = published_spec(name)
            for tp, pp, pe in ((a.tp, a.pp, a.parallel_embedding),) if a.tp else layouts:
                rows.append(capacity(name, spec, tp, pp, parallel_embedding=pe, **kw))  # type: ignore[arg-type]
    gpu = f"{a.gpu_gib:.1f} GiB GPUs, {a.peak_tflops:g} TFLOP/s dense BF16 each"
    print(f"{gpu}; reserve {a.reserve_gib:g} GiB/GPU; KV fraction {a.kv_fraction}; bf16 weights and KV cache\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
