"""PyTorch reference engine for a TensorRT-LLM reward checkpoint (the CPU stand-in for the TRT-LLM engine).

The rank files are joined into whole, typed weights by `reward_triton/engine/checkpoint.py` (by the weight
table's join rules); this file is only the model: the math TensorRT-LLM applies to that checkpoint
(GPTForCausalLM / LlamaForCausalLM): pre-norm decoder, NeoX rotary on the first `rotary_pct` of each head, causal
GQA attention, squared-relu / gelu / SwiGLU MLP, final norm, lm_head on the LAST token only. Sequences are packed
end to end (no padding): the linear layers run on all tokens at once and only attention runs per sequence.

Speed (docs/engine.md): Q, K and V come from one fused GEMM (the checkpoint's own `attention.qkv` layout), SwiGLU's
fc and gate from one GEMM; rotary is applied in place on Q and K together; GQA K/V heads are expanded once per
layer on GPUs (CPU: `enable_gqa`) and attention gets 4-D [1, heads, L, hd] views, so that
`scaled_dot_product_attention` runs a fused (flash) kernel and never the math fallback (3-D inputs silently took
the math kernel: ~40 % of the CPU time); residual adds and activations are in place.
In bfloat16/float16 the GEMMs and attention run in that dtype (fp32 accumulation inside the kernels) while the
norms accumulate in fp32 and the final norm and lm_head run in fp32. (A bf16 TensorRT-LLM engine runs lm_head in
bf16 and casts the logits to fp32 (`logits_dtype` float32), so its rewards carry bf16 rounding that these do not.)
The layer loop issues no host synchronisation (sequence lengths stay on the host), so on a GPU the whole forward is
queued without waits.

Prefix cache (`prefix_cache_bytes` > 0; blocks, names and eviction in reward_triton/engine/prefix_cache.py): a
sequence whose leading blocks are stored runs only its remaining tokens (rotary positions continue after the prefix)
and attends to the stored keys/values of the prefix followed by its own (causal, aligned to the last row). The keys
and values of its new full blocks are kept by the forward and stored. Within one batch, rows that would compute the
same block run after the row that stores it (`PrefixCache.next_wave`). Batch-invariant mode with the cache runs
every sequence block by block, so each block is computed by the same operations whatever is stored already, and a
sequence's scores are bit-identical with a cold or a warm cache and in any batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from reward_triton.engine.checkpoint import EngineConfig, RankFiles, checkpoint_dtype
from reward_triton.engine.dtypes import parse_dtype
from reward_triton.engine.prefix_cache import DEFAULT_BLOCK_TOKENS, Counters, PrefixCache, stats
from reward_triton.engine.weights import (
    EMBEDDING,
    FC1,
    FC2,
    HEAD_W,
    LN1_B,
    LN1_W,
    LN2_B,
    LN2_W,
    LNF_B,
    LNF_W,
    PROJ,
    QKV,
)

__all__ = ["EngineConfig", "Layer", "Norm", "TorchEngine", "Weights", "checkpoint_dtype", "parse_dtype"]


@dataclass
class Norm:
    weight: torch.Tensor  # as applied (layernorm1p's +1 is already in, see docs/formats.md)
    bias: torch.Tensor | None  # None for RMSNorm


@dataclass
class Layer:
    input_layernorm: Norm
    qkv: torch.Tensor  # attention.qkv: [q; k; v] rows of all heads (one GEMM for the three)
    dense: torch.Tensor  # attention.dense
    post_layernorm: Norm
    fc: torch.Tensor  # mlp.fc, or [mlp.fc; mlp.gate] for a gated MLP (one GEMM; fc goes through the activation)
    proj: torch.Tensor  # mlp.proj


@dataclass
class Weights:
    """Whole (unsharded) weights, named like the TensorRT-LLM checkpoint; built from the rank files by the table."""

    embedding: torch.Tensor
    layers: list[Layer]
    ln_f: Norm
    lm_head: torch.Tensor  # padded-vocab rows with the reward head in rows 0..K-1, or [K, H] (compact)

    @classmethod
    def from_rank_files(cls, files: RankFiles) -> Weights:
        """Every tensor the architecture needs, or an error naming the missing one."""

        def norm(weight: str, bias: str, layer: int | None = None) -> Norm:
            return Norm(files.whole(weight, layer), files.whole(bias, layer) if files.has(bias) else None)

        layers = [
            Layer(
                input_layernorm=norm(LN1_W, LN1_B, i),
                qkv=files.whole(QKV, i),
                dense=files.whole(PROJ, i),
                post_layernorm=norm(LN2_W, LN2_B, i),
                fc=files.whole(FC1, i),
                proj=files.whole(FC2, i),
            )
            for i in range(files.cfg.num_layers)
        ]
        return cls(files.whole(EMBEDDING), layers, norm(LNF_W, LNF_B), files.whole(HEAD_W))

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor under a dotted path of fields (`layers.0.qkv`, `ln_f.bias`, ...); absent biases left out."""
        out: dict[str, torch.Tensor] = {}

        def add(path: str, value: object) -> None:
            if isinstance(value, torch.Tensor):
                out[path] = value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    add(f"{path}.{i}", item)
            elif dataclasses.is_dataclass(value):
                for f in dataclasses.fields(value):
                    add(f"{path}.{f.name}" if path else f.name, getattr(value, f.name))

        add("", self)
        return out

    def to(self, device: torch.device, dtype: torch.dtype) -> Weights:
        """The GEMM weights and embedding in `dtype`; the final norm and lm_head in float32 (fp32 logits, the
        dtype the served contract declares)."""

        def cast(t: torch.Tensor, dt: torch.dtype = dtype) -> torch.Tensor:
            return t.to(device, dt).contiguous()

        def norm(n: Norm, dt: torch.dtype = dtype) -> Norm:
            return Norm(cast(n.weight, dt), None if n.bias is None else cast(n.bias, dt))

        layers = [
            Layer(norm(x.input_layernorm), cast(x.qkv), cast(x.dense), norm(x.post_layernorm), cast(x.fc), cast(x.proj))
            for x in self.layers
        ]
        return Weights(cast(self.embedding), layers, norm(self.ln_f, torch.float32), cast(self.lm_head, torch.float32))


# SDPA backends the engine allows: CPU: the flash kernel; GPU: flash, cuDNN or memory-efficient. Never math.
FUSED_ATTENTION = {
    True: [SDPBackend.FLASH_ATTENTION],
    False: [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
}

CPU_CHUNK_TOKENS = 2048


def _squared_relu_(h: torch.Tensor) -> torch.Tensor:
    return torch.relu_(h).square_()


def _gelu(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate="tanh")


def _swiglu(h: torch.Tensor) -> torch.Tensor:
    """[fc; gate] rows of one GEMM → silu(fc) * gate."""
    f = h.shape[-1] // 2
    return F.silu(h[:, :f]).mul_(h[:, f:])


# The MLP activation by config name (config.json `hidden_act`; Llama's gated SiLU is "swiglu"), chosen at load.
MLP_ACTIVATIONS = {"squared-relu": _squared_relu_, "gelu": _gelu, "swiglu": _swiglu}
NORMS = ("layernorm", "rmsnorm")


class TorchEngine:
    """`batch_invariant=True` runs one forward per sequence, so a sequence's scores never depend on what it was
    batched with (packed GEMMs of different sizes differ in the last float bits); it trades throughput for
    bit-reproducible reruns (e.g. an annotation job resumed at another concurrency).

    `prefix_cache_bytes` > 0 keeps up to that many bytes of key/value blocks of `prefix_block_tokens` tokens for
    later sequences that start with the same tokens (0: no cache). `stats()`: sequences and tokens sent, read from
    the cache and computed, and the cache's blocks, bytes and evictions.

    `weights` are whole (unsharded) tensors (`Weights.from_rank_files`, or built directly as the benchmark does).
    """

    def __init__(
        self,
        cfg: EngineConfig,
        weights: Weights,
        device: str | torch.device,
        dtype: torch.dtype,
        batch_invariant: bool = False,
        prefix_cache_bytes: int = 0,
        prefix_block_tokens: int = DEFAULT_BLOCK_TOKENS,
    ):
        self.cfg, self.device, self.dtype, self.batch_invariant = cfg, torch.device(device), dtype, batch_invariant
        if len(weights.layers) != cfg.num_layers:
            raise ValueError(f"{len(weights.layers)} layers of weights for a config of {cfg.num_layers}")
        # The structure is fixed here, once: an unknown activation or norm is refused at load, not at a request.
        if cfg.activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"activation '{cfg.activation}' is not supported (supported: {', '.join(MLP_ACTIVATIONS)})"
            )
        if cfg.norm not in NORMS:
            raise ValueError(f"norm '{cfg.norm}' is not supported (supported: {', '.join(NORMS)})")
        self._activate = MLP_ACTIVATIONS[cfg.activation]
        self._norm = self._rms_norm if cfg.norm == "rmsnorm" else self._layer_norm
        self.w = weights.to(self.device, dtype)
        rd = cfg.rotary_dim
        self.inv_freq = 1.0 / (
            cfg.rotary_base ** (torch.arange(0, rd, 2, dtype=torch.float32, device=self.device) / rd)
        )
        self._cos = self._sin = torch.empty(0, rd // 2, device=self.device)
        # CPU: token-wise work (norms, GEMMs, activations) runs in chunks of this many tokens so that each chunk's
        # intermediates stay in cache; GPU: all tokens at once (0). Measured in docs/engine.md.
        self.chunk_tokens = CPU_CHUNK_TOKENS if self.device.type == "cpu" else 0
        # GQA: the CPU flash kernel takes fewer KV heads as is (enable_gqa); on GPUs K/V are expanded to MHA shape
        # once per layer, which every fused kernel (flash, cuDNN, memory-efficient) accepts.
        self.expand_kv = self.device.type != "cpu"
        self.cache = PrefixCache(prefix_cache_bytes, prefix_block_tokens) if prefix_cache_bytes > 0 else None
        self.counters = Counters()
        self._counters_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | os.PathLike[str],
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        batch_invariant: bool = False,
        prefix_cache_bytes: int = 0,
        prefix_block_tokens: int = DEFAULT_BLOCK_TOKENS,
    ) -> TorchEngine:
        """`dtype` "auto" computes in the checkpoint's own dtype (config.json `dtype`)."""
        cfg = EngineConfig.load(directory)
        dt = parse_dtype(checkpoint_dtype(directory) if dtype == "auto" else dtype)
        weights = Weights.from_rank_files(RankFiles(directory, cfg))
        return cls(cfg, weights, device, dt, batch_invariant, prefix_cache_bytes, prefix_block_tokens)

    @property
    def output_size(self) -> int:
        return self.w.lm_head.shape[0]

    def stats(self) -> dict[str, int]:
        with self._counters_lock:
            return stats(self.counters, self.cache)

    # -- building blocks -----------------------------------------------------------------------------
    # `_norm` is one of these two, chosen at load; statistics in float32 whatever the dtype of x (the kernels
    # accumulate in fp32).
    def _rms_norm(self, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        w = norm.weight
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), w, self.cfg.norm_eps)
        # bf16/fp16: x * rsqrt(mean(x²) + eps) in fp32, rounded once, then × w (as HF's LlamaRMSNorm), in
        # three passes over x instead of F.rms_norm's upcast copy + five.
        ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        scale = ss.square_().div_(x.shape[-1]).add_(self.cfg.norm_eps).rsqrt_()
        return torch.mul(x, scale, out=torch.empty_like(x)).mul_(w)

    def _layer_norm(self, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, self.cfg.norm_eps)

    def _rotary_tables(self, starts: Sequence[int], lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [N, 1, rotary_dim / 2] (float32) at every packed token's position within its sequence (a
        sequence's tokens start at position `starts[i]`: after its cached prefix)."""
        longest = max(s + n for s, n in zip(starts, lengths, strict=True))
        if self._cos.shape[0] < longest:
            pos = torch.arange(max(longest, 2 * self._cos.shape[0]), dtype=torch.float32, device=self.device)
            freqs = pos[:, None] * self.inv_freq[None, :]
            self._cos, self._sin = freqs.cos(), freqs.sin()
        if len(lengths) == 1:
            s, e = starts[0], starts[0] + lengths[0]
            return self._cos[s:e, None, :], self._sin[s:e, None, :]
        pos = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        pos = pos.to(self.device, non_blocking=True)
        return self._cos[pos][:, None, :], self._sin[pos][:, None, :]

    def _rope_(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """NeoX rotary on the first rotary_dim channels of every head of qk [N, heads, hd], in place."""
        half = self.cfg.rotary_dim // 2
        x1, x2 = qk[..., :half], qk[..., half : 2 * half]
        # cos/sin are float32: the rotation is computed in float32 and rounded once to qk's dtype
        r2 = x2 * cos
        r2.addcmul_(x1, sin)  # x2' = x2 cos + x1 sin (x1 still the input)
        torch.addcmul(x1 * cos, x2, sin, value=-1.0, out=x1)  # x1' = x1 cos - x2 sin (x2 still the input)
        x2.copy_(r2)

    def _mlp_(self, x: torch.Tensor, layer: Layer, chunks: Sequence[tuple[int, int]]) -> None:
        """x += MLP(post_layernorm(x)), in place, one token chunk at a time (its intermediate stays in cache)."""
        for start, end in chunks:
            xc = x[start:end]
            h = self._activate(F.linear(self._norm(xc, layer.post_layernorm), layer.fc))
            xc.addmm_(h, layer.proj.t())

    def _attention_(
        self,
        x: torch.Tensor,
        layer: Layer,
        lengths: Sequence[int],
        chunks: Sequence[tuple[int, int]],
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: Sequence[torch.Tensor | None],
        keep: Sequence[torch.Tensor | None],
    ) -> None:
        """x += attention(input_layernorm(x)), in place. Sequence i attends to `past[i]` (this layer's cached
        [prefix, 2 * kv heads, hd] K/V) before its own tokens; `keep[i]` receives its first tokens' K/V."""
        c = self.cfg
        n, nh, nkv = x.shape[0], c.num_heads, c.num_kv_heads
        w_qkv = layer.qkv
        qkv = torch.empty(n, nh + 2 * nkv, c.head_dim, dtype=x.dtype, device=x.device)
        for start, end in chunks:
            torch.mm(self._norm(x[start:end], layer.input_layernorm), w_qkv.t(), out=qkv[start:end].flatten(1))
            self._rope_(qkv[start:end, : nh + nkv], cos[start:end], sin[start:end])
        q = qkv[:, :nh]
        gqa = nkv != nh and not self.expand_kv
        kv = qkv[:, nh:]  # [n, 2 * nkv, hd]: K heads then V heads, as the cache stores them
        if nkv != nh and not gqa and all(p is None for p in past) and all(k is None for k in keep):
            # no cache in this forward: expand the KV heads once per layer (else per sequence, in _sdpa)
            kv = kv.repeat_interleave(nh // nkv, dim=1)
        outs, start = [], 0
        for length, past_kv, kept in zip(lengths, past, keep, strict=True):  # the only per-sequence step
            end = start + length
            if kept is not None:
                kept.copy_(kv[start : start + kept.shape[0]])
            own = kv[start:end] if past_kv is None else torch.cat([past_kv, kv[start:end]])
            outs.append(self._sdpa(q[start:end], own, gqa))
            start = end
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).view(n, nh * c.head_dim)
        w_dense = layer.dense.t()
        for start, end in chunks:
            x[start:end].addmm_(out[start:end], w_dense)

    def _sdpa(self, q: torch.Tensor, kv: torch.Tensor, gqa: bool) -> torch.Tensor:
        """Causal attention of one sequence's L newest tokens; q [L, heads, hd], kv [S ≥ L, 2 * kv heads, hd] (K
        heads then V heads; the first S - L are its cached prefix) → [L, heads, hd]. Query row j sees keys up to
        S - L + j (causal, aligned to the last row).

        4-D inputs: with 3-D ones SDPA silently takes the math kernel (all fused kernels need [B, H, L, D])."""
        heads, kv_heads = q.shape[1], kv.shape[1] // 2
        if kv_heads != heads and not gqa:  # GPU: expand the KV heads (every fused kernel takes MHA-shaped K/V)
            kv = kv.repeat_interleave(heads // kv_heads, dim=1)
            kv_heads = heads
        k, v = kv[:, :kv_heads], kv[:, kv_heads:]
        length, total = q.shape[0], kv.shape[0]
        mask = None if length == total else causal_lower_right(length, total)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=gqa,
        )
        return o[0].transpose(0, 1)

    # -- forward -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Last-token lm_head output [B, output_size] (float32) for token-id sequences of any lengths."""
        if not seqs or any(len(s) == 0 for s in seqs):
            raise ValueError("every sequence needs at least one token")
        if min(min(s) for s in seqs) < 0 or max(max(s) for s in seqs) >= self.cfg.vocab_size:  # on the host
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size})")
        if self.cache is not None:
            return self._cached(seqs)
        self._count([(len(s), 0) for s in seqs])
        if self.batch_invariant and len(seqs) > 1:
            return torch.cat([self._forward([s])[0] for s in seqs])
        return self._forward(seqs)[0]

    def _count(self, sent_cached: Sequence[tuple[int, int]]) -> None:
        with self._counters_lock:
            for sent, cached in sent_cached:
                self.counters.add(sent, cached)

    def _cached(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """`logits` with the prefix cache: each sequence reads its stored leading blocks, computes the rest and
        stores its new full blocks. Batch-invariant: one sequence at a time, block by block (`_blockwise`)."""
        assert self.cache is not None
        cache, bt = self.cache, self.cache.block_tokens
        names = [cache.hashes(s) for s in seqs]
        lengths = [len(s) for s in seqs]
        rows: list[torch.Tensor | None] = [None] * len(seqs)
        pending = list(range(len(seqs)))
        if self.batch_invariant:  # longest first: a conversation's last turn stores its earlier turns
            pending.sort(key=lambda i: -lengths[i])
        while pending:
            if self.batch_invariant:
                wave, pending = pending[:1], pending[1:]
            else:
                wave, pending = cache.next_wave(pending, names, lengths)
            stored = [cache.lookup(names[i]) for i in wave]
            self._count([(lengths[i], len(blocks) * bt) for i, blocks in zip(wave, stored, strict=True)])
            if self.batch_invariant:
                rows[wave[0]] = self._blockwise(seqs[wave[0]], names[wave[0]], stored[0])
                continue
            past = [torch.cat(blocks, dim=1) if blocks else None for blocks in stored]
            new = [seqs[i][len(blocks) * bt :] for i, blocks in zip(wave, stored, strict=True)]
            keep = [(len(names[i]) - len(blocks)) * bt for i, blocks in zip(wave, stored, strict=True)]
            logits, kept = self._forward(new, past, keep)
            for j, i in enumerate(wave):
                rows[i] = logits[j]
                if kept[j] is not None:
                    blocks = kept[j].split(bt, dim=1)
                    cache.store(names[i], [b.clone() for b in blocks] if len(blocks) > 1 else blocks, len(stored[j]))
        return torch.stack([r for r in rows if r is not None])

    def _blockwise(self, seq: Sequence[int], names: Sequence[bytes], stored: list[torch.Tensor]) -> torch.Tensor:
        """One sequence, one block per forward after its stored blocks (then the remaining 1..block tokens): every
        block is computed from the same inputs by the same operations whether or not it was stored before."""
        assert self.cache is not None
        bt, blocks = self.cache.block_tokens, list(stored)
        while True:
            start = len(blocks) * bt
            full = len(blocks) < len(names)  # a block to store, else the last tokens
            past = torch.cat(blocks, dim=1) if blocks else None
            logits, kept = self._forward([seq[start : start + bt if full else len(seq)]], [past], [bt if full else 0])
            if not full:
                return logits[0]
            blocks.append(kept[0])
            self.cache.store(names, [kept[0]], len(blocks) - 1)

    def _forward(
        self,
        seqs: Sequence[Sequence[int]],
        past: Sequence[torch.Tensor | None] | None = None,
        keep: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Last-token logits [B, output_size] of packed sequences; with a prefix cache, `seqs[i]` are the tokens
        after a prefix whose every layer's K/V is `past[i]` [layers, prefix, 2 * kv heads, hd]. Also returns, for
        `keep[i]` > 0, the K/V of sequence i's first keep[i] tokens, [layers, keep[i], 2 * kv heads, hd]."""
        c = self.cfg
        past = past or [None] * len(seqs)
        keep = keep or [0] * len(seqs)
        lengths = [len(s) for s in seqs]
        starts = [0 if p is None else p.shape[1] for p in past]
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long).to(self.device, non_blocking=True)
        cos, sin = self._rotary_tables(starts, lengths)
        last = (torch.tensor(list(itertools.accumulate(lengths))) - 1).to(self.device, non_blocking=True)
        kept = [
            torch.empty(c.num_layers, k, 2 * c.num_kv_heads, c.head_dim, dtype=self.dtype, device=self.device)
            if k
            else None
            for k in keep
        ]

        x = self.w.embedding[ids]
        n = x.shape[0]
        step = self.chunk_tokens or n
        chunks = [(s, min(s + step, n)) for s in range(0, n, step)]
        with sdpa_kernel(FUSED_ATTENTION[self.device.type == "cpu"]):  # a fused kernel or an error, never math
            for i, layer in enumerate(self.w.layers):
                layer_past = [None if p is None else p[i] for p in past]
                layer_keep = [None if k is None else k[i] for k in kept]
                self._attention_(x, layer, lengths, chunks, cos, sin, layer_past, layer_keep)
                self._mlp_(x, layer, chunks)
        h = self._norm(x[last].float(), self.w.ln_f)
        return F.linear(h, self.w.lm_head), kept
