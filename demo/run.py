"""`make demo`: start tritonserver on the rendered repository, score `demo/samples.jsonl`, print a table, stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from client.api import RewardClient, Score
from reward_triton.ops.server import ServerProcess

HERE = Path(__file__).resolve().parent


def table(names: list[str], scores: list[Score]) -> str:
    attrs = list(scores[0].trained)
    width = max(len(n) for n in names) + 2
    head = "".ljust(width) + "".join(a[:11].rjust(12) for a in attrs) + "reward".rjust(10) + "tokens".rjust(8)
    rows = [head, "-" * len(head)]
    for name, s in zip(names, scores, strict=True):
        cells = "".join(f"{v:12.2f}" for v in s.trained.values())
        rows.append(name.ljust(width) + cells + f"{s.reward:10.2f}" + f"{s.num_input_tokens:8d}")
    return "\n".join(rows)


async def score_all(url: str, conversations: list[dict]) -> list[Score | Exception]:
    async with RewardClient(url, concurrency=4) as client:
        return await client.score_many(conversations, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--samples", default=str(HERE / "samples.jsonl"))
    a = p.parse_args(argv)
    samples = [json.loads(line) for line in Path(a.samples).read_text().splitlines() if line.strip()]
    log = Path(tempfile.gettempdir()) / "reward-triton-demo-server.log"
    print(f"starting tritonserver on {a.repository} (log: {log}) ...", flush=True)
    with ServerProcess(Path(a.repository), log) as server:
        print(f"serving: gRPC {server.grpc_url}, HTTP {server.http_url}", flush=True)
        scores = asyncio.run(score_all(server.grpc_url, [{"messages": s["messages"]} for s in samples]))
    print("server stopped.")
    failed = [(s["name"], r) for s, r in zip(samples, scores, strict=True) if isinstance(r, Exception)]
    for name, error in failed:
        print(f"error: sample '{name}': {error}", file=sys.stderr)
    good = [(s["name"], r) for s, r in zip(samples, scores, strict=True) if isinstance(r, Score)]
    if good:
        print(table([n for n, _ in good], [r for _, r in good]))
    return 1 if failed else 0


if __name__ == "__main__":
    from reward_triton.ops.signals import run_stoppable

    sys.exit(run_stoppable(main, "demo"))
