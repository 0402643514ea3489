"""Engine speed against Hugging Face on the same random weights, same device, same dtype, same threads.

    python -m tooling.bench_engine --device cpu --preset cpu-nemotron,cpu-llama --dtype float32,bfloat16
    python -m tooling.bench_engine --device cuda --preset llama2-13b --seq-lens 128:4096:256 --json out.json
    python -m tooling.bench_engine --device cuda --preset nemotron-340b-slice --layers 4 --json out.json

Random weights (seeded, rounded to bf16 like a converted bf16 checkpoint; no downloads) are built in the engine's
own layout; the Hugging Face model (`NemotronModel` / `LlamaModel`, SDPA attention) is assembled on the meta device
and then given views of the very same tensors (`load_state_dict(assign=True)`), so both run the same bytes and a
large preset needs one copy of the weights on the GPU. Measured, interleaved, best of `--repeats` after a warm-up:

- engine: `TorchEngine.logits` on all sequences at once (packed, no padding);
- HF one by one: `model(input_ids[1, L])` per sequence, last hidden state → the same fp32 reward head;
- HF padded batch: one right-padded batch with an attention mask (timed at most twice; skipped if out of memory).

Printed: tokens/s of each, the engine's ratio to both, max |engine - HF| of the rewards, and the engine's MFU
against `--peak-tflops` (default: H100 SXM dense BF16, 989) from the model FLOPs: 2 × linear weights per token,
2 × heads × head_dim × L² per sequence and layer for causal attention (half of the full QKᵀ and PV), the head on
the last token. `--json` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from reward_triton.engine.mapping import Mapping
from reward_triton.engine.model import EngineConfig, Layer, Norm, TorchEngine, Weights, parse_dtype

H100_BF16_DENSE_TFLOPS = 989.0
GOALS = {"float32": 1.0, "bfloat16": 1.2}  # CPU: engine tokens/s over HF one by one, same dtype and threads


@dataclass(frozen=True)
class Shape:
    arch: str  # "nemotron" | "llama"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    outputs: int  # reward head rows (compact lm_head)
    rotary_pct: float
    rotary_base: float = 10000.0
    norm_eps: float = 1e-5

    def engine_config(self) -> EngineConfig:
        llama = self.arch == "llama"
        return EngineConfig(
            architecture="LlamaForCausalLM" if llama else "GPTForCausalLM",
            hidden_size=self.hidden,
            num_layers=self.layers,
            num_heads=self.heads,
            num_kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab,
            activation="swiglu" if llama else "squared-relu",
            norm="rmsnorm" if llama else "layernorm",
            norm_eps=self.norm_eps,
            rotary_dim=int(self.head_dim * self.rotary_pct),
            rotary_base=self.rotary_base,
            mapping=Mapping(1, 1),
            compact_head=True,
            parallel_embedding=False,
        )

    def linear_params(self) -> int:
        """Weights every token multiplies per layer (QKV, dense, MLP)."""
        attn = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden
        return attn + (3 if self.arch == "llama" else 2) * self.hidden * self.ffn

    def flops(self, lengths: Sequence[int]) -> float:
        n = sum(lengths)
        linear = 2.0 * self.linear_params() * self.layers * n
        attention = 2.0 * self.heads * self.head_dim * self.layers * sum(length * length for length in lengths)
        return linear + attention + 2.0 * self.hidden * self.outputs * len(lengths)


PRESETS: dict[str, Shape] = {
    # tiny: the CPU tests run the whole benchmark on these
    "tiny-nemotron": Shape("nemotron", 64, 2, 8, 2, 8, 256, 512, 9, 0.5),
    "tiny-llama": Shape("llama", 64, 2, 8, 8, 8, 96, 512, 1, 1.0),
    # the CPU figures of docs/engine.md: hidden 512, 8 layers
    "cpu-nemotron": Shape("nemotron", 512, 8, 16, 4, 32, 2048, 32000, 9, 0.5),
    "cpu-llama": Shape("llama", 512, 8, 16, 16, 32, 1376, 32000, 1, 1.0),
    # published shapes (Llama-2-13B; Nemotron-4-340B with only a few of its 96 layers, to fit one GPU)
    "llama2-13b": Shape("llama", 5120, 40, 40, 40, 128, 13824, 32000, 1, 1.0),
    "nemotron-340b-slice": Shape("nemotron", 18432, 4, 96, 8, 192, 73728, 256000, 9, 0.5),
}
DEFAULT_SEQ_LENS = {"cpu": "64:1024:64", "cuda": "128:4096:256"}


# ---- weights ---------------------------------------------------------------------------------------------------
def _randn(shape: tuple[int, ...], std: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """bf16 normal(0, std), generated in row blocks (a 256k × 18k embedding never exists in fp32 at once)."""
    out = torch.empty(shape, dtype=torch.bfloat16, device=device)
    rows = max(1, (1 << 26) // max(1, math.prod(shape[1:])))
    for i in range(0, shape[0], rows):
        block = out[i : i + rows]
        block.copy_(torch.randn(block.shape, generator=g, device=device).mul_(std))
    return out


def _near(shape: tuple[int, ...], center: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """center + small multiples of 2^-7: exact in bf16 both as stored (layernorm1p w+1) and as HF's w."""
    return (torch.randn(shape, generator=g, device=device).mul_(0.1 * 128).round_().div_(128) + center).to(
        torch.bfloat16
    )


def random_weights(shape: Shape, device: str | torch.device = "cpu", seed: int = 0) -> Weights:
    """Engine weights (fused qkv, [fc; gate]), bf16 like a converted bf16 checkpoint, reproducible."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(seed)
    h, f, hd = shape.hidden, shape.ffn, shape.head_dim
    rows = (shape.heads + 2 * shape.kv_heads) * hd
    embedding = _randn((shape.vocab, h), 1.0, g, dev)
    layernorm = shape.arch != "llama"

    def norm() -> Norm:
        weight = _near((h,), 1.0, g, dev)
        return Norm(weight, _near((h,), 0.0, g, dev) if layernorm else None)

    layers = []
    for _ in range(shape.layers):
        qkv = _randn((rows, h), h**-0.5, g, dev)
        dense = _randn((h, shape.heads * hd), 0.5 * (shape.heads * hd) ** -0.5, g, dev)
        fc = _randn((f if layernorm else 2 * f, h), h**-0.5, g, dev)
        proj = _randn((h, f), 0.5 * f**-0.5 * (0.3 if layernorm else 1.0), g, dev)
        layers.append(Layer(norm(), qkv, dense, norm(), fc, proj))
    ln_f = norm()
    return Weights(embedding, layers, ln_f, _randn((shape.outputs, h), h**-0.5, g, dev))


# ---- Hugging Face on the engine's tensors ----------------------------------------------------------------------
def hf_model(shape: Shape, engine: TorchEngine) -> torch.nn.Module:
    """`NemotronModel` / `LlamaModel` (SDPA) whose weights are views of the engine's (norms: HF's own layout)."""
    from transformers import LlamaConfig, LlamaModel, NemotronConfig, NemotronModel

    w, dtype, device = engine.w, engine.dtype, engine.device
    common = dict(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=1 << 16,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    rope: dict[str, object] = {"rope_type": "default", "rope_theta": shape.rotary_base}
    llama = shape.arch == "llama"
    if llama:
        cfg = LlamaConfig(**common, rms_norm_eps=shape.norm_eps, hidden_act="silu", rope_parameters=rope)
    else:
        rope["partial_rotary_factor"] = shape.rotary_pct
        cfg = NemotronConfig(**common, norm_eps=shape.norm_eps, hidden_act="relu2", rope_parameters=rope)
    with torch.device("meta"):
        model = (LlamaModel if llama else NemotronModel)(cfg)

    def norm(n: Norm) -> torch.Tensor:  # layernorm1p: HF adds the 1 itself; exact for `_near` weights
        t = n.weight.to(dtype)
        return t if llama else t - 1

    q_rows, kv_rows, f = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    sd = {"embed_tokens.weight": w.embedding, "norm.weight": norm(w.ln_f)}
    if not llama:
        assert w.ln_f.bias is not None
        sd["norm.bias"] = w.ln_f.bias.to(dtype)
    for i, layer in enumerate(w.layers):
        p = f"layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = layer.qkv[:q_rows]
        sd[p + "self_attn.k_proj.weight"] = layer.qkv[q_rows : q_rows + kv_rows]
        sd[p + "self_attn.v_proj.weight"] = layer.qkv[q_rows + kv_rows :]
        sd[p + "self_attn.o_proj.weight"] = layer.dense
        if llama:
            sd[p + "mlp.gate_proj.weight"] = layer.fc[:f]  # the SiLU branch (TensorRT-LLM `fc`)
            sd[p + "mlp.up_proj.weight"] = layer.fc[f:]
        else:
            sd[p + "mlp.up_proj.weight"] = layer.fc
        sd[p + "mlp.down_proj.weight"] = layer.proj
        for hf, ours in (
            ("input_layernorm", layer.input_layernorm),
            ("post_attention_layernorm", layer.post_layernorm),
        ):
            sd[f"{p}{hf}.weight"] = norm(ours)
            if not llama:
                assert ours.bias is not None
                sd[f"{p}{hf}.bias"] = ours.bias
    model.load_state_dict(sd, strict=True, assign=True)
    with torch.device(device):  # non-persistent rotary buffers were built on meta: rebuild them for real
        model.rotary_emb = type(model.rotary_emb)(config=cfg)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"HF model tensors left on the meta device: {meta[:5]}")
    return model.eval()


@torch.inference_mode()
def hf_one_by_one(model: torch.nn.Module, engine: TorchEngine, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    out = []
    for s in seqs:
        hidden = model(input_ids=torch.tensor([list(s)], device=engine.device)).last_hidden_state[0, -1]
        out.append(hidden.float())
    return torch.nn.functional.linear(torch.stack(out), engine.w.lm_head)


@torch.inference_mode()
def hf_padded(model: torch.nn.Module, engine: TorchEngine, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s))
        mask[i, : len(s)] = 1
    hidden = model(input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device)).last_hidden_state
    last = torch.tensor([len(s) - 1 for s in seqs], device=engine.device)
    h = hidden[torch.arange(len(seqs), device=engine.device), last].float()
    return torch.nn.functional.linear(h, engine.w.lm_head)


# ---- measuring -------------------------------------------------------------------------------------------------
THREAD_MARGIN = 1.15  # more threads must be this much faster to be chosen (noise; idle threads cost on shared CPUs)


def measure_threads(
    checkpoint: str | os.PathLike[str],
    dtype: str | torch.dtype = "auto",
    candidates: Sequence[int] | None = None,
    max_tokens: int = 1024,
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> tuple[int, dict[int, float]]:
    """The intra-op thread count under which the CPU engine scores a typical served batch fastest.

    The batch: 8 sequences spread over 30-90 % of min(max_input_len, `max_tokens`) tokens (what `make perf`
    sends). Each candidate (1, 2, 4, ... up to the cores this process may use) is timed `repeats` times,
    interleaved, best kept; more threads win only when at least THREAD_MARGIN× faster than the best smaller count.
    Returns (threads, {threads: tokens/s}); torch's own thread count is restored.
    """
    from reward_triton.metadata import RewardMetadata

    cores = len(os.sched_getaffinity(0))
    cand = sorted(set(candidates or [c for c in (1, 2, 4, 8, 16, 32, 64) if c < cores] + [cores]))
    engine = TorchEngine.from_checkpoint(checkpoint, device="cpu", dtype=dtype)
    limit = min(RewardMetadata.load(checkpoint).max_input_len, max_tokens)
    g = torch.Generator().manual_seed(0)
    lengths = [max(1, int(limit * f)) for f in (0.3, 0.39, 0.47, 0.56, 0.64, 0.73, 0.81, 0.9)]
    seqs = [torch.randint(0, engine.cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    before = torch.get_num_threads()
    best = dict.fromkeys(cand, math.inf)
    try:
        for r in range(repeats + 1):
            for c in cand:
                torch.set_num_threads(c)
                t0 = time.perf_counter()
                engine.logits(seqs)
                if r:  # round 0 warms up
                    best[c] = min(best[c], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    rate = {c: sum(lengths) / t for c, t in best.items()}
    chosen = cand[0]
    for c in cand[1:]:
        if rate[c] >= THREAD_MARGIN * rate[chosen]:
            chosen = c
    if log:
        log(f"engine threads: {chosen} ({', '.join(f'{c}: {r:.0f} tok/s' for c, r in rate.items())})")
    return chosen, rate


def parse_seq_lens(spec: str) -> list[int]:
    """`64,128,512` or `start:stop:step` (stop included), or a mix: `64:1024:64,2048`."""
    out: list[int] = []
    for part in spec.split(","):
        if ":" in part:
            a, b, step = (int(x) for x in part.split(":"))
            out.extend(range(a, b + 1, step))
        elif part:
            out.append(int(part))
    if not out or min(out) < 1:
        raise ValueError(f"--seq-lens {spec!r}: need positive lengths")
    return out


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return run


def bench_one(
    name: str,
    shape: Shape,
    device: str,
    dtype: torch.dtype,
    lengths: Sequence[int],
    repeats: int = 3,
    padded: bool = True,
    peak_tflops: float | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed + 1)
    seqs = [torch.randint(0, shape.vocab, (n,), generator=g).tolist() for n in lengths]
    t0 = time.perf_counter()
    weights = random_weights(shape, dev, seed)
    engine = TorchEngine(shape.engine_config(), weights, dev, dtype)
    del weights  # the engine holds what it needs (the same tensors when the dtype is bf16)
    model = hf_model(shape, engine)
    log(f"[{name} {dtype} {device}] weights + models in {time.perf_counter() - t0:.1f} s")

    runs: dict[str, Callable[[], torch.Tensor]] = {
        "engine": lambda: engine.logits(seqs),
        "hf_one_by_one": lambda: hf_one_by_one(model, engine, seqs),
    }
    if padded:
        runs["hf_padded"] = lambda: hf_padded(model, engine, seqs)
    timer = _timer(dev)
    outputs = {k: runs[k]() for k in ("engine", "hf_one_by_one")}  # warm-up (and the rewards compared below)
    if padded:
        try:
            hf_padded(model, engine, seqs)  # warm-up at full size: a GPU that cannot hold it is told now
        except torch.OutOfMemoryError:
            log(f"[{name}] HF padded batch does not fit in GPU memory: skipped")
            del runs["hf_padded"]
            torch.cuda.empty_cache()
    best = dict.fromkeys(runs, math.inf)
    for r in range(repeats):  # interleaved: drifting load on a shared machine hits every variant alike
        for k, fn in runs.items():
            if k != "hf_padded" or r < 2:
                best[k] = min(best[k], timer(fn))
    tokens = sum(lengths)
    ref = outputs["hf_one_by_one"]
    result: dict[str, object] = {
        "preset": name,
        "shape": asdict(shape),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "sequences": len(lengths),
        "tokens": tokens,
        "seq_lens": list(lengths),
        "seconds": best,
        "tokens_per_s": {k: tokens / s for k, s in best.items()},
        "engine_vs": {k: best[k] / best["engine"] for k in best if k != "engine"},
        "max_abs_diff_vs_hf": float((outputs["engine"] - ref).abs().max()),
        "hf_reward_std": float(ref.std()) if ref.numel() > 1 else 0.0,
        "flops": shape.flops(lengths),
    }
    if peak_tflops:
        result["peak_tflops"] = peak_tflops
        result["mfu"] = {k: shape.flops(lengths) / s / (peak_tflops * 1e12) for k, s in best.items()}
    return result


def format_result(r: dict) -> str:
    tps, vs = r["tokens_per_s"], r["engine_vs"]
    parts = [
        f"{r['preset']:<20} {r['dtype']:<8} {r['device']:<5} thr={r['threads']} {r['sequences']} seqs "
        f"{r['tokens']} tok | engine {tps['engine']:>9.0f} tok/s | HF 1-by-1 {tps['hf_one_by_one']:>9.0f} "
        f"(engine {vs['hf_one_by_one']:.2f}x)"
    ]
    if "hf_padded" in tps:
        parts.append(f"| HF padded {tps['hf_padded']:>9.0f} (engine {vs['hf_padded']:.2f}x)")
    parts.append(f"| max|Δ| {r['max_abs_diff_vs_hf']:.2e} (reward std {r['hf_reward_std']:.2f})")
    goal = GOALS.get(r["dtype"]) if r["device"] == "cpu" else None
    if goal is not None:
        ok = vs["hf_one_by_one"] >= goal
        parts.append(f"| goal >= {goal:.1f}x HF 1-by-1: {'met' if ok else 'MISSED'}")
    if "mfu" in r:
        parts.append(f"| MFU engine {100 * r['mfu']['engine']:.1f} % HF {100 * r['mfu']['hf_one_by_one']:.1f} %")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tooling.bench_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--preset", default="cpu-nemotron,cpu-llama", help=f"comma list of {', '.join(PRESETS)}")
    p.add_argument("--dtype", default=None, help="comma list (default: float32,bfloat16 on cpu, bfloat16 on cuda)")
    p.add_argument(
        "--seq-lens", default=None, help="64,128 or start:stop:step (default cpu 64:1024:64, cuda 128:4096:256)"
    )
    p.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: cores available)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant after a warm-up; best is kept")
    p.add_argument("--no-padded", action="store_true", help="skip the padded HF batch")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak for MFU (default on cuda: H100 SXM dense bf16, {H100_BF16_DENSE_TFLOPS:g}; cpu: no MFU)",
    )
    p.add_argument("--json", help="write the results (a list, one per preset × dtype) to this file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    threads = a.threads or len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(a, dev, threads)
    finally:
        torch.set_num_threads(before)


def _run(a: argparse.Namespace, dev: torch.device, threads: int) -> int:
    dtypes = [parse_dtype(d) for d in (a.dtype or ("float32,bfloat16" if dev.type == "cpu" else "bfloat16")).split(",")]
    lengths = parse_seq_lens(a.seq_lens or DEFAULT_SEQ_LENS.get(dev.type, DEFAULT_SEQ_LENS["cuda"]))
    peak = a.peak_tflops or (H100_BF16_DENSE_TFLOPS if dev.type == "cuda" else None)
    results = []
    print(f"torch {torch.__version__}, {threads} threads, {len(lengths)} sequences of {min(lengths)}..{max(lengths)}")
    for name in a.preset.split(","):
        if name not in PRESETS:
            print(f"error: unknown preset {name!r} (one of {', '.join(PRESETS)})", file=sys.stderr)
            return 2
        shape = PRESETS[name] if a.layers is None else replace(PRESETS[name], layers=a.layers)
        for dtype in dtypes:
            r = bench_one(name, shape, a.device, dtype, lengths, a.repeats, not a.no_padded, peak, a.seed)
            print(format_result(r), flush=True)
            results.append(r)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
