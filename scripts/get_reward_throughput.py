"""Throughput of OpenRLHF's `/get_reward` against the ensemble called directly, same server, same run.

    python scripts/get_reward_throughput.py --gateway http://localhost:9000 --triton localhost:8001 \\
        [--queries 64] [--rounds 5] [--format chatml] [--concurrency 64]

Builds `--queries` different conversations (a system prompt, a sum question, an answer), writes each in the
policy's chat format for `/get_reward`, and alternates, `--rounds` times:
- gateway: one `POST /get_reward` with all queries (a plain HTTP POST of JSON, as OpenRLHF's trainer sends it);
- direct:  the same conversations as OpenAI messages through `client.api.RewardClient.score_many` over gRPC
  (`--concurrency` in flight, the gateway's default).
Prints the median seconds per batch and queries per second of each, the gateway's overhead, and the largest
difference between the rewards of the two paths.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from client.api import RewardClient, Score
from gateway import chat_formats


def conversations(n: int) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        a, b = 3 + (i * 7) % 90, 5 + (i * 13) % 90
        answer = a + b if i % 3 else a + b + 1  # a third of the answers are near misses
        out.append(
            [
                {"role": "system", "content": "You answer arithmetic questions."},
                {"role": "user", "content": f"What is {a}+{b}?"},
                {"role": "assistant", "content": f"The answer is {answer}."},
            ]
        )
    return out


async def direct(url: str, batch: list[list[dict[str, str]]], concurrency: int) -> tuple[float, list[float]]:
    async with RewardClient(url, concurrency=concurrency) as client:
        await client.metadata()  # the gateway keeps its metadata cached too
        start = time.perf_counter()
        scores = await client.score_many([{"messages": m} for m in batch])
        seconds = time.perf_counter() - start
    return seconds, [s.reward for s in scores if isinstance(s, Score)]


def gateway(http: httpx.Client, url: str, queries: list[str]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    r = http.post(f"{url}/get_reward", json={"query": queries})
    seconds = time.perf_counter() - start
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return seconds, list(body["rewards"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", default="http://localhost:9000", help="reward-openai base URL")
    p.add_argument("--triton", default="localhost:8001", help="Triton gRPC endpoint")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--format", default="chatml", choices=chat_formats.FORMATS, help="the policy's chat format")
    p.add_argument("--concurrency", type=int, default=64, help="gRPC requests in flight on the direct path")
    a = p.parse_args()

    batch = conversations(a.queries)
    queries = [chat_formats.render(m, a.format) + "<|endoftext|>" for m in batch]
    timings: dict[str, list[float]] = {"gateway /get_reward": [], "ensemble direct (gRPC)": []}
    diff = 0.0
    with httpx.Client(timeout=600) as http:
        gateway(http, a.gateway, queries[:2])  # warm-up: connection, metadata
        for _ in range(a.rounds):
            g_seconds, g_rewards = gateway(http, a.gateway, queries)
            d_seconds, d_rewards = asyncio.run(direct(a.triton, batch, a.concurrency))
            timings["gateway /get_reward"].append(g_seconds)
            timings["ensemble direct (gRPC)"].append(d_seconds)
            if len(g_rewards) != len(d_rewards):
                raise SystemExit("the two paths scored different numbers of queries")
            diff = max(diff, max(abs(x - y) for x, y in zip(g_rewards, d_rewards, strict=True)))
    print(f"{a.queries} queries per batch, {a.rounds} rounds, policy format {a.format}")
    # a served engine batches requests dynamically; unless it is batch-invariant (a test option), a bf16 score
    # depends slightly on what it was batched with, so the paths agree up to that
    print(f"  max |reward(gateway) - reward(direct)|: {diff:.3g}")
    medians = {}
    for name, values in timings.items():
        medians[name] = statistics.median(values)
        print(f"  {name:<24} median {medians[name]:.3f} s/batch  {a.queries / medians[name]:8.1f} queries/s")
    g, d = medians.values()
    print(f"  gateway overhead: {g - d:+.3f} s per batch ({(g / d - 1) * 100:+.0f}%)")


if __name__ == "__main__":
    main()
