"""`reward-client annotate` throughput with the engine's prefix cache on and off, through two real tritonservers.

    python -m tooling.bench_annotate                    # builds tooling.bench_prefix's checkpoint on first use
    python -m tooling.bench_annotate --conversations 24 --repeats 3 --concurrency 4

The same checkpoint (tooling.bench_prefix: 22 M parameters, sequence length 1024, float32) is rendered twice, with
the PyTorch engine's prefix cache at its default budget and with `torch_prefix_cache_bytes=0`, and both are
served at once. Each repetition writes a new file of 4-exchange NeMo conversations (every assistant turn labelled,
random words, so nothing is cached from an earlier repetition) and annotates it with the client library's
annotate job (what `reward-client annotate` runs: a conversation's turns one after another, shortest first,
conversations concurrently) against the cache-off server, then the cache-on one. Reported: conversations/s of
each (best over the repetitions), their ratio (issue 28's target: at least 1.8), tokens sent and computed (the engine's
metrics), and the largest difference between the two runs' labels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from build_engine.repository import RenderOptions, render_repository
from client.annotate import AnnotateOptions, annotate_file
from client.api import RewardClient, Score
from reward_triton.ops.server import ServerProcess
from tooling.bench_prefix import DEFAULT_CHECKPOINT, fixture

TARGET = 1.8
MAX_TOKENS = 900  # of a conversation's text: with the template it stays under the fixture's 1024
WORDS = ("the model reads every turn of a conversation and writes a score for each assistant answer while the "
         "server keeps blocks of keys and values for prefixes it has seen before so later turns compute less "
         "time memory token batch cache replica prompt answer question reason because").split()  # fmt: skip


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_conversations(path: Path, rng: random.Random, n: int, exchanges: int, tokenizer: Path) -> int:
    """n NeMo records of `exchanges` user/assistant exchanges, every assistant turn labelled, each at most
    MAX_TOKENS tokens of text (drawn again when longer); returns the tokens of their text."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            while True:
                turns = []
                for _ in range(exchanges):
                    # ~3.5 tokens a word with the fixture's 384-piece tokenizer: ~90-token user and ~118-token
                    # assistant turns, ~834 tokens over 4 exchanges as issue 28 measured
                    turns.append({"from": "User", "value": sentence(rng, rng.randint(20, 32))})
                    turns.append({"from": "Assistant", "value": sentence(rng, rng.randint(28, 40)), "label": ""})
                size = sum(len(sp.encode(t["value"])) for t in turns)
                if size <= MAX_TOKENS:
                    break
            total += size
            f.write(json.dumps({"system": "Be helpful.", "conversations": turns, "mask": "User"}) + "\n")
    return total


def engine_tokens(server: ServerProcess) -> dict[str, float]:
    """The engine's token counters from the server's metrics endpoint (reward_triton/serving/cache_metrics.py)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    found = re.findall(r'^reward_engine_(tokens_\w+)\{model="tensorrt_llm"\} (\S+)$', text, re.MULTILINE)
    return {name: float(value) for name, value in found}


def largest_difference(a: Path, b: Path) -> float:
    """The largest difference between the label values of two annotate outputs of the same input."""

    def values(path: Path) -> list[float]:
        out = []
        for line in path.read_text().splitlines():
            for turn in json.loads(line)["conversations"]:
                if turn.get("label"):
                    out += [float(item.split(":")[1]) for item in turn["label"].split(",")]
        return out

    va, vb = values(a), values(b)
    assert len(va) == len(vb)
    return max((abs(x - y) for x, y in zip(va, vb, strict=True)), default=0.0)


async def annotate_once(url: str, src: Path, out: Path, concurrency: int) -> tuple[float, int]:
    """(conversations/s, tokens sent) of one annotate job."""
    tokens = 0
    async with RewardClient(url, concurrency=concurrency) as client:
        meta = await client.metadata()

        async def score(conversation: Any) -> Score:
            nonlocal tokens
            result = await client.score(conversation)
            tokens += result.num_input_tokens
            return result

        window = max(64, 8 * concurrency)
        options = AnnotateOptions(attributes=meta.trained_attributes, window=window, batch_lines=window)
        summary = await annotate_file(src, out, score, options, restart=True, progress=False)
    if summary.turns["failed"]:
        raise SystemExit(f"{summary.turns['failed']} turns failed (see {summary.errors_file})")
    return summary.conversations_per_second, tokens


def bench(checkpoint: Path, conversations: int, exchanges: int, repeats: int, concurrency: int) -> dict[str, Any]:
    ckpt = fixture(checkpoint)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    tokens: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        servers: dict[str, ServerProcess] = {}
        for name, budget in (("off", 0), ("on", RenderOptions.torch_prefix_cache_bytes)):
            options = RenderOptions(torch_threads=1, torch_prefix_cache_bytes=budget)
            repo = render_repository(ckpt, output=root / f"repository-{name}", options=options)
            server = ServerProcess(repository=repo, log_path=root / f"tritonserver-{name}.log")
            servers[name] = stack.enter_context(server)
        rng = random.Random(28)
        for r in range(repeats):
            src = root / f"conversations-{r}.jsonl"
            size = write_conversations(src, rng, conversations, exchanges, ckpt / "tokenizer.model")
            print(
                f"repeat {r + 1}: {conversations} conversations, {size / conversations:.0f} tokens each",
                file=sys.stderr,
            )
            for name in ("off", "on"):
                server = servers[name]
                before = engine_tokens(server)
                rate, _ = asyncio.run(annotate_once(server.grpc_url, src, root / f"out-{name}-{r}.jsonl", concurrency))
                after = engine_tokens(server)
                runs[name].append(rate)
                tokens[name] = {k: after[k] - before.get(k, 0.0) for k in after}
                print(f"repeat {r + 1}: cache {name}: {rate:.2f} conv/s, engine tokens {tokens[name]}", file=sys.stderr)
            diff = largest_difference(root / f"out-off-{r}.jsonl", root / f"out-on-{r}.jsonl")
            print(f"repeat {r + 1}: largest label difference cache on vs off: {diff:.3g}", file=sys.stderr)
    best = {name: max(rates) for name, rates in runs.items()}
    return {
        "conversations": conversations,
        "exchanges": exchanges,
        "concurrency": concurrency,
        "runs_conv_per_s": runs,
        "best_conv_per_s": best,
        "engine_tokens_last_run": tokens,
        "ratio": best["on"] / best["off"],
        "target": TARGET,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tooling.bench_annotate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="converted checkpoint (built if absent)")
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--exchanges", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args(argv)
    r = bench(a.checkpoint, a.conversations, a.exchanges, a.repeats, a.concurrency)
    print(
        f"annotate {r['conversations']} conversations x {r['exchanges']} exchanges, concurrency {r['concurrency']}: "
        f"cache off {r['best_conv_per_s']['off']:.2f} conv/s, cache on {r['best_conv_per_s']['on']:.2f} conv/s: "
        f"{r['ratio']:.2f}x (target >= {TARGET}x)"
    )
    for name in ("off", "on"):
        t = r["engine_tokens_last_run"][name]
        print(f"cache {name}: tokens sent {t.get('tokens_sent', 0):.0f}, computed {t.get('tokens_computed', 0):.0f}")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
