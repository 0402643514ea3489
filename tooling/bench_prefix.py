"""Prefix cache benchmark: the same work with the engine's prefix cache off and on, interleaved in one run.

    python -m tooling.bench_prefix                      # builds its fixture on first use
    python -m tooling.bench_prefix --checkpoint DIR --dtype float32,bfloat16 --repeats 3 --json out.json

The checkpoint is `tooling.bench_fixture --seq-length 1024` (hidden 512, 8 layers, GQA 16/4 heads: 22 M
parameters, random weights) converted to float32; built into --checkpoint's folder when it is not there. Work, as
measured here on the engine in-process (`TorchEngine.logits`), random token ids:

- turn prefixes: 6 conversations of 4 exchanges (~834 tokens), scored after every assistant turn, one request
  after another, shortest first (what `reward-client annotate` sends); against scoring the 6 whole conversations once.
- best-of-8: 8 candidates of 10-40 tokens after one ~700-token prompt, one request after another; against one.
- GRPO: a `reward_model` request of 16 prompts (~500 tokens) × 8 responses (~50), as the reward model sends it:
  rows in batches of at most --max-batch, the first row of each prompt group first (`first_wave`) when the cache is on.

Every repetition draws new tokens (so a repetition starts with nothing of its own cached) and runs each workload
cache-off then cache-on on the same tokens: contention on a shared machine hits both alike. Reported: the best
time of each over --repeats, the ratios docs/prefix_cache.md sets targets for, tokens sent / computed (engine
statistics), and the largest difference between the cache-on and cache-off logits of the same sequences.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from reward_triton.engine.model import TorchEngine
from reward_triton.engine.prefix_cache import DEFAULT_BLOCK_TOKENS, DEFAULT_BUDGET_BYTES
from reward_triton.serving.reward_model import first_wave

Work = Callable[[TorchEngine], list[torch.Tensor]]
TARGETS = {"turns": 1.4, "best_of_8": 2.5, "grpo_speedup": 3.0}
DEFAULT_CHECKPOINT = Path("build/bench-prefix/checkpoint")


def fixture(checkpoint: Path) -> Path:
    """The benchmark checkpoint, built (NeMo fixture, then a float32 conversion) when absent."""
    if (checkpoint / "config.json").is_file():
        return checkpoint
    from build_engine import convert
    from tooling import bench_fixture

    nemo = checkpoint.parent / "nemo"
    if not nemo.exists():
        bench_fixture.main(["--seq-length", "1024", "--out", str(nemo)])
    return convert.convert(nemo, checkpoint, dtype="float32", progress=False)


# ---- workloads: each returns the logits of every sequence it scored --------------------------------------------
def conversations(rng: random.Random, vocab: int, n: int = 6, exchanges: int = 4) -> list[list[list[int]]]:
    """n conversations as their turns: user ~90 tokens, assistant ~118 (834 tokens over 4 exchanges on average)."""
    out = []
    for _ in range(n):
        turns = []
        for _ in range(exchanges):
            turns.append([rng.randrange(vocab) for _ in range(rng.randint(60, 120))])
            turns.append([rng.randrange(vocab) for _ in range(rng.randint(80, 156))])
        out.append(turns)
    return out


def one_by_one(seqs: Sequence[Sequence[int]]) -> Work:
    return lambda engine: [engine.logits([s])[0] for s in seqs]


def turn_prefixes(convs: list[list[list[int]]]) -> list[list[int]]:
    """Each conversation up to each assistant turn, shortest first."""
    return [sum(turns[: k + 1], []) for turns in convs for k in range(1, len(turns), 2)]


def grpo(rows: list[list[int]], max_batch: int) -> Work:
    def run(engine: TorchEngine) -> list[torch.Tensor]:
        lead = first_wave(rows) if engine.cache is not None else [True] * len(rows)
        out: dict[int, torch.Tensor] = {}
        for wave in ([i for i, x in enumerate(lead) if x], [i for i, x in enumerate(lead) if not x]):
            for start in range(0, len(wave), max_batch):
                part = wave[start : start + max_batch]
                out.update(zip(part, engine.logits([rows[i] for i in part]), strict=True))
        return [out[i] for i in range(len(rows))]

    return run


def workloads(rng: random.Random, vocab: int, max_batch: int) -> dict[str, Work]:
    def tokens(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    def best_of(n: int) -> list[list[int]]:
        prompt = tokens(rng.randint(680, 720))
        return [prompt + tokens(rng.randint(10, 40)) for _ in range(n)]

    prompts = [tokens(rng.randint(450, 550)) for _ in range(16)]
    rows = [p + tokens(rng.randint(30, 70)) for p in prompts for _ in range(8)]
    rng.shuffle(rows)
    # the denominators (whole conversations, one candidate) are other tokens: scored once, nothing cached
    return {
        "turn_prefixes": one_by_one(turn_prefixes(conversations(rng, vocab))),
        "whole_conversations": one_by_one([sum(turns, []) for turns in conversations(rng, vocab)]),
        "best_of_8": one_by_one(best_of(8)),
        "one_candidate": one_by_one(best_of(1)),
        "grpo_16x8": grpo(rows, max_batch),
    }


# ---- measurement -------------------------------------------------------------------------------------------------
def timed(engine: TorchEngine, work: Work) -> tuple[float, list[torch.Tensor], dict[str, int]]:
    before = engine.stats()
    start = time.perf_counter()
    out = work(engine)
    seconds = time.perf_counter() - start
    after = engine.stats()
    return seconds, out, {k: after[k] - before[k] for k in ("tokens_sent", "tokens_cached", "tokens_computed")}


def bench(checkpoint: Path, dtype: str, repeats: int, max_batch: int, budget: int, block: int) -> dict[str, object]:
    off = TorchEngine.from_checkpoint(checkpoint, dtype=dtype)
    on = TorchEngine(off.cfg, off.w, off.device, off.dtype, prefix_cache_bytes=budget, prefix_block_tokens=block)
    names = list(workloads(random.Random(0), off.cfg.vocab_size, max_batch))
    seconds: dict[str, dict[str, list[float]]] = {n: {"off": [], "on": []} for n in names}
    tokens: dict[str, dict[str, dict[str, int]]] = {}
    max_diff = dict.fromkeys(names, 0.0)
    one_by_one(turn_prefixes(conversations(random.Random(99), off.cfg.vocab_size, 1)))(off)  # warm-up
    for r in range(repeats):
        for name, work in workloads(random.Random(r + 1), off.cfg.vocab_size, max_batch).items():
            t_off, cold, n_off = timed(off, work)
            t_on, warm, n_on = timed(on, work)
            seconds[name]["off"].append(t_off)
            seconds[name]["on"].append(t_on)
            tokens[name] = {"off": n_off, "on": n_on}
            max_diff[name] = max(max_diff[name], float((torch.stack(warm) - torch.stack(cold)).abs().max()))
    best = {name: {mode: min(times) for mode, times in by.items()} for name, by in seconds.items()}
    ratios = {
        # the figures: prefixes against whole conversations and best-of-8 against one candidate, both
        # denominators with the cache off (scored once, nothing to share; their cache-on time is printed too)
        "turns": {m: best["turn_prefixes"][m] / best["whole_conversations"]["off"] for m in ("off", "on")},
        "best_of_8": {m: best["best_of_8"][m] / best["one_candidate"]["off"] for m in ("off", "on")},
        "grpo_speedup": best["grpo_16x8"]["off"] / best["grpo_16x8"]["on"],
    }
    return {
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "block_tokens": block,
        "budget_bytes": budget,
        "seconds": best,
        "tokens": tokens,
        "ratios": ratios,
        "max_abs_logit_diff_on_vs_off": max_diff,
        "cache": on.stats(),
    }


def report(r: dict[str, object]) -> str:
    best, tokens, ratios, diffs = r["seconds"], r["tokens"], r["ratios"], r["max_abs_logit_diff_on_vs_off"]
    assert isinstance(best, dict) and isinstance(tokens, dict) and isinstance(ratios, dict) and isinstance(diffs, dict)
    lines = [
        f"dtype {r['dtype']}, {r['threads']} thread(s), blocks of {r['block_tokens']} tokens, "
        f"budget {r['budget_bytes'] / 2**30:.2f} GiB",
        f"{'workload':<22}{'sent':>8}{'computed on':>13}{'cached on':>11}{'off s':>9}{'on s':>9}{'on/off':>8}",
    ]
    for name, t in best.items():
        n = tokens[name]["on"]
        lines.append(
            f"{name:<22}{n['tokens_sent']:>8}{n['tokens_computed']:>13}{n['tokens_cached']:>11}"
            f"{t['off']:>9.3f}{t['on']:>9.3f}{t['on'] / t['off']:>8.2f}"
        )
    turns, best8, grpo_x = ratios["turns"], ratios["best_of_8"], ratios["grpo_speedup"]
    lines += [
        f"turn prefixes / whole conversations: off {turns['off']:.2f}x, on {turns['on']:.2f}x "
        f"(target <= {TARGETS['turns']}x)",
        f"best-of-8 / one candidate:           off {best8['off']:.2f}x, on {best8['on']:.2f}x "
        f"(target <= {TARGETS['best_of_8']}x)",
        f"GRPO 16x8 speed-up with the cache:   {grpo_x:.2f}x (target >= {TARGETS['grpo_speedup']}x)",
        "max |logits on - off|: " + ", ".join(f"{name} {diff:.3g}" for name, diff in diffs.items()),
        f"cache: {r['cache']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tooling.bench_prefix", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="converted checkpoint (built if absent)")
    p.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per engine batch in the GRPO workload")
    p.add_argument("--budget-bytes", type=int, default=DEFAULT_BUDGET_BYTES)
    p.add_argument("--block-tokens", type=int, default=DEFAULT_BLOCK_TOKENS)
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    checkpoint = fixture(a.checkpoint)
    results = []
    for dtype in a.dtype.split(","):
        results.append(bench(checkpoint, dtype, a.repeats, a.max_batch, a.budget_bytes, a.block_tokens))
        print(report(results[-1]), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
