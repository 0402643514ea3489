"""PyTorch reference engine for a TensorRT-LLM reward checkpoint (the CPU stand-in for the TRT-LLM engine).

Loads `config.json` + every `rank{N}.safetensors`, reassembles the TP×PP shards into whole weights, and applies
the same math TensorRT-LLM applies to that checkpoint (GPTForCausalLM / LlamaForCausalLM): pre-norm decoder,
NeoX rotary on the first `rotary_pct` of each head, causal GQA attention, squared-relu / gelu / SwiGLU MLP,
final norm, lm_head on the LAST token only. Sequences are packed end to end (no padding): the linear layers run
on all tokens at once and only attention runs per sequence.

Speed (docs/engine.md): Q, K and V come from one fused GEMM (the checkpoint's own `attention.qkv` layout), SwiGLU's
fc and gate from one GEMM; rotary is applied in place on Q and K together; GQA K/V heads are expanded once per
layer on GPUs (CPU: `enable_gqa`) and attention gets 4-D [1, heads, L, hd] views, so that
`scaled_dot_product_attention` runs a fused (flash) kernel and never the math fallback (3-D inputs silently took
the math kernel: ~40 % of the CPU time); residual adds and activations are in place.
In bfloat16/float16 the GEMMs and attention run in that dtype (fp32 accumulation inside the kernels) while the
norms accumulate in fp32 and the final norm and lm_head run in fp32, as TensorRT-LLM computes a bf16 engine with
`logits_dtype` float32. The layer loop issues no host synchronisation (sequence lengths stay on the host), so on
a GPU the whole forward is queued without waits.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass(frozen=True)
class EngineConfig:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    activation: str  # "squared-relu" | "gelu" | "swiglu" | "silu" (Llama: gated SiLU)
    norm: str  # "layernorm" | "rmsnorm"
    norm_eps: float
    rotary_dim: int
    rotary_base: float
    tp: int
    pp: int
    compact_head: bool  # lm_head is [K, H] on every last-stage rank instead of the padded vocab
    parallel_embedding: bool  # embedding rows sharded over the TP ranks of stage 0

    @classmethod
    def from_json(cls, d: dict) -> EngineConfig:
        llama = d["architecture"] == "LlamaForCausalLM"
        hd = int(d.get("head_size") or d["hidden_size"] // d["num_attention_heads"])
        return cls(
            architecture=d["architecture"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=hd,
            vocab_size=d["vocab_size"],
            activation="swiglu" if llama else d["hidden_act"],
            norm="rmsnorm" if llama else "layernorm",
            norm_eps=float(d.get("norm_epsilon", 1e-5)),
            rotary_dim=int(hd * float(1.0 if llama else d.get("rotary_pct", 1.0))),
            rotary_base=float(d.get("rotary_base", 10000.0)),
            tp=d["mapping"]["tp_size"],
            pp=d["mapping"]["pp_size"],
            compact_head=d.get("reward_head", {}).get("lm_head") == "compact",
            parallel_embedding=bool(d.get("use_parallel_embedding", False)),
        )

    @property
    def gated(self) -> bool:
        return self.activation in ("swiglu", "silu")


def _load_weights(directory: Path, cfg: EngineConfig) -> dict[str, torch.Tensor]:
    """Read every rank file and return whole (unsharded) weights under global layer indices."""
    t, pp = cfg.tp, cfg.pp
    shards: list[dict[str, torch.Tensor]] = []
    for rank in range(t * pp):
        path = directory / f"rank{rank}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: rank file missing (checkpoint mapping has {t * pp} ranks)")
        with safe_open(str(path), framework="pt") as f:
            shards.append({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - safe_open has no __iter__
    stage = [shards[s * t : (s + 1) * t] for s in range(pp)]
    hd, kv = cfg.head_dim, cfg.num_kv_heads
    q_rows = cfg.num_heads // t * hd
    kv_rows = max(kv // t, 1) * hd
    # KV head j lives on the first rank whose slice holds it (ranks replicate heads when kv < tp).
    kv_ranks = list(range(t)) if kv >= t else [j * t // kv for j in range(kv)]

    emb = [r["transformer.vocab_embedding.weight"] for r in stage[0]]
    w: dict[str, torch.Tensor] = {"embedding": torch.cat(emb)[: cfg.vocab_size] if cfg.parallel_embedding else emb[0]}
    layer = 0
    for s in range(pp):
        local = 0
        while f"transformer.layers.{local}.attention.qkv.weight" in stage[s][0]:

            def get(name: str, s: int = s, local: int = local) -> list[torch.Tensor]:
                return [r[f"transformer.layers.{local}.{name}"] for r in stage[s]]

            qkv = get("attention.qkv.weight")
            p = f"layers.{layer}."
            w[p + "qkv"] = torch.cat(  # global [q; k; v] rows: one GEMM for all three
                [x[:q_rows] for x in qkv]
                + [qkv[r][q_rows : q_rows + kv_rows] for r in kv_ranks]
                + [qkv[r][q_rows + kv_rows :] for r in kv_ranks]
            )
            w[p + "dense"] = torch.cat(get("attention.dense.weight"), dim=1)
            if cfg.gated:  # [fc; gate] rows: one GEMM, fc goes through the activation
                w[p + "fc_gate"] = torch.cat(get("mlp.fc.weight") + get("mlp.gate.weight"))
            else:
                w[p + "fc"] = torch.cat(get("mlp.fc.weight"))
            w[p + "proj"] = torch.cat(get("mlp.proj.weight"), dim=1)
            for n in ("input_layernorm", "post_layernorm"):
                for kind in ("weight", "bias"):
                    key = f"transformer.layers.{local}.{n}.{kind}"
                    if key in stage[s][0]:
                        w[f"{p}{n}.{kind}"] = stage[s][0][key]
            local += 1
            layer += 1
    if layer != cfg.num_layers:
        raise ValueError(f"{directory}: rank files hold {layer} layers, config.json says {cfg.num_layers}")
    last = stage[pp - 1]
    w["ln_f.weight"] = last[0]["transformer.ln_f.weight"]
    if "transformer.ln_f.bias" in last[0]:
        w["ln_f.bias"] = last[0]["transformer.ln_f.bias"]
    heads = [r["lm_head.weight"] for r in last]
    w["lm_head"] = heads[0] if cfg.compact_head else torch.cat(heads)
    return w


# SDPA backends the engine allows: CPU: the flash kernel; GPU: flash, cuDNN or memory-efficient. Never math.
FUSED_ATTENTION = {
    True: [SDPBackend.FLASH_ATTENTION],
    False: [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
}

CPU_CHUNK_TOKENS = 2048

_FLOAT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """`float32` | `bfloat16` | `float16` (also `fp32`, `bf16`, `fp16`) → torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    alias = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if alias not in _FLOAT:
        raise ValueError(f"dtype must be one of {', '.join(_FLOAT)}, got {name!r}")
    return _FLOAT[alias]


def checkpoint_dtype(directory: str | os.PathLike[str]) -> str:
    """The dtype a converted checkpoint stores its weights in (config.json `dtype`), e.g. "bfloat16"."""
    name = json.loads((Path(directory) / "config.json").read_text()).get("dtype", "float32")
    return str(parse_dtype(name)).removeprefix("torch.")


class TorchEngine:
    """`batch_invariant=True` runs one forward per sequence, so a sequence's scores never depend on what it was
    batched with (packed GEMMs of different sizes differ in the last float bits); it trades throughput for
    bit-reproducible reruns (e.g. an annotation job resumed at another concurrency).

    `weights` are whole (unsharded) tensors named as `_load_weights` returns them: per layer either `q`, `k`, `v`
    or the fused `qkv` ([q; k; v] rows), and for gated MLPs `fc` + `gate` or the fused `fc_gate` ([fc; gate]).
    """

    def __init__(
        self,
        cfg: EngineConfig,
        weights: dict[str, torch.Tensor],
        device: str | torch.device,
        dtype: torch.dtype,
        batch_invariant: bool = False,
    ):
        self.cfg, self.device, self.dtype, self.batch_invariant = cfg, torch.device(device), dtype, batch_invariant
        head_names = {"ln_f.weight", "ln_f.bias", "lm_head"}
        w: dict[str, torch.Tensor] = {}
        for i in range(cfg.num_layers):
            p = f"layers.{i}."
            if p + "qkv" not in weights:
                weights = {**weights, p + "qkv": torch.cat([weights[p + "q"], weights[p + "k"], weights[p + "v"]])}
            if cfg.gated and p + "fc_gate" not in weights:
                weights = {**weights, p + "fc_gate": torch.cat([weights[p + "fc"], weights[p + "gate"]])}
            names = ["qkv", "dense", "fc_gate" if cfg.gated else "fc", "proj"]
            names += [f"{n}.{k}" for n in ("input_layernorm", "post_layernorm") for k in ("weight", "bias")]
            for n in names:
                if p + n in weights:
                    w[p + n] = weights[p + n].to(self.device, dtype).contiguous()
        w["embedding"] = weights["embedding"].to(self.device, dtype)
        for n in head_names & weights.keys():  # the head runs in float32 (TensorRT-LLM: logits_dtype float32)
            w[n] = weights[n].to(self.device, torch.float32).contiguous()
        self.w = w
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

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | os.PathLike[str],
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        batch_invariant: bool = False,
    ) -> TorchEngine:
        """`dtype` "auto" computes in the checkpoint's own dtype (config.json `dtype`)."""
        directory = Path(directory)
        cfg = EngineConfig.from_json(json.loads((directory / "config.json").read_text()))
        dt = parse_dtype(checkpoint_dtype(directory) if dtype == "auto" else dtype)
        return cls(cfg, _load_weights(directory, cfg), device, dt, batch_invariant)

    @property
    def output_size(self) -> int:
        return self.w["lm_head"].shape[0]

    # -- building blocks -----------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """LayerNorm / RMSNorm; statistics in float32 whatever the dtype of x (the kernels accumulate in fp32)."""
        w = self.w[prefix + ".weight"]
        if self.cfg.norm == "rmsnorm":
            if x.dtype == torch.float32:
                return F.rms_norm(x, (x.shape[-1],), w, self.cfg.norm_eps)
            # bf16/fp16: x * rsqrt(mean(x²) + eps) in fp32, rounded once, then × w (as HF's LlamaRMSNorm), in
            # three passes over x instead of F.rms_norm's upcast copy + five.
            ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
            scale = ss.square_().div_(x.shape[-1]).add_(self.cfg.norm_eps).rsqrt_()
            return torch.mul(x, scale, out=torch.empty_like(x)).mul_(w)
        return F.layer_norm(x, (x.shape[-1],), w, self.w.get(prefix + ".bias"), self.cfg.norm_eps)

    def _rotary_tables(self, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [N, 1, rotary_dim / 2] (float32) at every packed token's position within its sequence."""
        longest = max(lengths)
        if self._cos.shape[0] < longest:
            pos = torch.arange(max(longest, 2 * self._cos.shape[0]), dtype=torch.float32, device=self.device)
            freqs = pos[:, None] * self.inv_freq[None, :]
            self._cos, self._sin = freqs.cos(), freqs.sin()
        if len(lengths) == 1:
            return self._cos[:longest, None, :], self._sin[:longest, None, :]
        pos = torch.cat([torch.arange(n) for n in lengths]).to(self.device, non_blocking=True)
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

    def _mlp_(self, x: torch.Tensor, p: str, chunks: Sequence[tuple[int, int]]) -> None:
        """x += MLP(post_layernorm(x)), in place, one token chunk at a time (its intermediate stays in cache)."""
        act = self.cfg.activation
        for start, end in chunks:
            xc = x[start:end]
            h = self._norm(xc, p + "post_layernorm")
            if self.cfg.gated:
                h = F.linear(h, self.w[p + "fc_gate"])
                f = h.shape[-1] // 2
                h = F.silu(h[:, :f]).mul_(h[:, f:])
            else:
                h = F.linear(h, self.w[p + "fc"])
                if act == "squared-relu":
                    h = torch.relu_(h).square_()
                elif act == "gelu":
                    h = F.gelu(h, approximate="tanh")
                else:
                    raise ValueError(f"activation '{act}' not supported")
            xc.addmm_(h, self.w[p + "proj"].t())

    def _attention_(
        self,
        x: torch.Tensor,
        p: str,
        lengths: Sequence[int],
        chunks: Sequence[tuple[int, int]],
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> None:
        """x += attention(input_layernorm(x)), in place."""
        c = self.cfg
        n, nh, nkv = x.shape[0], c.num_heads, c.num_kv_heads
        w_qkv = self.w[p + "qkv"]
        qkv = torch.empty(n, nh + 2 * nkv, c.head_dim, dtype=x.dtype, device=x.device)
        for start, end in chunks:
            torch.mm(self._norm(x[start:end], p + "input_layernorm"), w_qkv.t(), out=qkv[start:end].flatten(1))
            self._rope_(qkv[start:end, : nh + nkv], cos[start:end], sin[start:end])
        q = qkv[:, :nh]
        gqa = nkv != nh and not self.expand_kv
        if nkv == nh or gqa:
            k, v = qkv[:, nh : nh + nkv], qkv[:, nh + nkv :]
        else:  # expand the KV heads once per layer: every fused GPU kernel takes MHA-shaped K/V
            kv = qkv[:, nh:].repeat_interleave(nh // nkv, dim=1)
            k, v = kv[:, :nh], kv[:, nh:]
        if len(lengths) == 1:
            out = self._sdpa(q, k, v, gqa)
        else:
            out = torch.empty(n, nh, c.head_dim, dtype=x.dtype, device=x.device)
            start = 0
            for length in lengths:  # attention is the only per-sequence step (host ints: no device sync)
                end = start + length
                out[start:end] = self._sdpa(q[start:end], k[start:end], v[start:end], gqa)
                start = end
        out = out.view(n, nh * c.head_dim)
        w_dense = self.w[p + "dense"].t()
        for start, end in chunks:
            x[start:end].addmm_(out[start:end], w_dense)

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> torch.Tensor:
        """Causal attention of one sequence; q [L, heads, hd], k/v [L, kv heads, hd] → [L, heads, hd].

        4-D inputs: with 3-D ones SDPA silently takes the math kernel (all fused kernels need [B, H, L, D])."""
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=True, enable_gqa=gqa
        )
        return o[0].transpose(0, 1)

    # -- forward -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Last-token lm_head output [B, output_size] (float32) for token-id sequences of any lengths."""
        if not seqs or any(len(s) == 0 for s in seqs):
            raise ValueError("every sequence needs at least one token")
        if self.batch_invariant and len(seqs) > 1:
            return torch.cat([self._forward([s]) for s in seqs])
        return self._forward(seqs)

    def _forward(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        lengths = [len(s) for s in seqs]
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
        if int(ids.max()) >= self.cfg.vocab_size or int(ids.min()) < 0:  # checked on the host
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size})")
        ids = ids.to(self.device, non_blocking=True)
        cos, sin = self._rotary_tables(lengths)
        last = (torch.tensor(list(itertools.accumulate(lengths))) - 1).to(self.device, non_blocking=True)

        x = self.w["embedding"][ids]
        n = x.shape[0]
        step = self.chunk_tokens or n
        chunks = [(s, min(s + step, n)) for s in range(0, n, step)]
        with sdpa_kernel(FUSED_ATTENTION[self.device.type == "cpu"]):  # a fused kernel or an error, never math
            for i in range(self.cfg.num_layers):
                p = f"layers.{i}."
                self._attention_(x, p, lengths, chunks, cos, sin)
                self._mlp_(x, p, chunks)
        h = self._norm(x[last].float(), "ln_f")
        return F.linear(h, self.w["lm_head"])
