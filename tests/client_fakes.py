"""Test helpers for the client: a deterministic fake scorer and conversation files (no server needed).

Also runnable as a script (`python tests/client_fakes.py IN OUT [delay [batch_lines]]`) to annotate with the
fake scorer in a subprocess, so a test can SIGKILL it mid-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMES = ("quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence", "complexity",
         "verbosity")  # fmt: skip
TRAINED = NAMES[4:]
TOO_LONG = "TOO-LONG"  # a turn value the fake server rejects


def fake_scores(conversation: Mapping[str, Any]) -> dict[str, float]:
    """Deterministic float32-exact scores derived from the conversation's JSON."""
    digest = hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).digest()
    return {n: (digest[i] - 128) / 32.0 for i, n in enumerate(NAMES)}


class FakeScorer:
    """Async scorer with random latency (so completions come back out of order)."""

    def __init__(self, delay: float = 0.002, fail_after: int | None = None, seed: int = 0) -> None:
        self.delay = delay
        self.fail_after = fail_after
        self.calls = 0
        self.rng = random.Random(seed)

    async def __call__(self, conversation: Mapping[str, Any]) -> Any:
        from client.api import RequestRejected, Score

        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("fake transport failure")
        await asyncio.sleep(self.rng.uniform(0, self.delay))
        text = json.dumps(conversation)
        if TOO_LONG in text:
            raise RequestRejected(
                "conversation is 9999 tokens, more than the engine's maximum input length of 512",
                "context_length_exceeded",
            )
        scores = fake_scores(conversation)
        return Score(scores=scores, reward=sum(scores.values()), num_input_tokens=len(text) // 4, truncated=False,
                     trained_attributes=TRAINED)  # fmt: skip


@dataclass
class Call:
    """One scoring call as a CallLog saw it: who sent it, how long its conversation was, what else was running."""

    group: str  # the conversation or prompt it belongs to (CallLog's `group_of`)
    size: int  # turns or messages in the conversation
    started: int  # position among all call starts and ends
    ended: int = -1
    running_at_start: tuple[str, ...] = ()  # groups of the calls in flight when it started


class CallLog:
    """Wraps a scorer and records each call's group, size, start and end (one counter for all events), so a
    test can check which calls overlapped."""

    def __init__(self, scorer: Any, group_of: Any) -> None:
        self.scorer = scorer
        self.group_of = group_of
        self.calls: list[Call] = []
        self.running: list[Call] = []
        self.events = 0

    async def __call__(self, conversation: Mapping[str, Any]) -> Any:
        turns = conversation.get("conversations") or conversation.get("messages") or []
        call = Call(
            self.group_of(conversation), len(turns), self.events, running_at_start=tuple(c.group for c in self.running)
        )
        self.events += 1
        self.calls.append(call)
        self.running.append(call)
        try:
            return await self.scorer(conversation)
        finally:
            self.running.remove(call)
            call.ended = self.events
            self.events += 1

    def of(self, group: str) -> list[Call]:
        """The group's calls in the order they started."""
        return [c for c in self.calls if c.group == group]

    def most_groups_at_once(self) -> int:
        return max((len(set(c.running_at_start) | {c.group}) for c in self.calls), default=0)


def nemo_record(i: int, turns: int = 2, system: str | None = "Be brief.") -> dict[str, Any]:
    conv = []
    for t in range(turns):
        conv.append({"from": "User", "value": f"{i} + {t}?"})
        conv.append({"from": "Assistant", "value": f"{i + t}", "label": None if t == 0 else ""})
    record: dict[str, Any] = {"conversations": conv, "mask": "User"}
    if system is not None:
        record["system"] = system
    if i % 3 == 0:  # every third record labels its first assistant turn too
        conv[1]["label"] = "helpfulness:4"
    return record


def write_conversations(path: Path, n: int, bad: dict[int, str] | None = None, long_value: str = TOO_LONG) -> list[int]:
    """n NeMo lines (1-3 exchanges); `bad` maps 1-based line numbers to a kind of bad line: 'json' (not JSON),
    'shape' (no conversations), 'long' (last turn replaced by `long_value`), 'sender' (a turn from "Robot")."""
    bad = bad or {}
    with open(path, "w", encoding="utf-8") as f:
        for line_no in range(1, n + 1):
            kind = bad.get(line_no)
            record = nemo_record(line_no, turns=1 + line_no % 3)
            if kind == "json":
                f.write('{"conversations": [ not json\n')
                continue
            if kind == "shape":
                f.write(json.dumps({"messages": "nope"}) + "\n")
                continue
            if kind == "long":
                record["conversations"][-1]["value"] = long_value
            if kind == "sender":
                record["conversations"][0]["from"] = "Robot"
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return sorted(bad)


async def _run(src: str, dst: str, delay: float, batch_lines: int) -> None:
    from client.annotate import AnnotateOptions, annotate_file

    options = AnnotateOptions(attributes=TRAINED, window=16, batch_lines=batch_lines, batch_seconds=0.5)
    await annotate_file(src, dst, FakeScorer(delay=delay), options, progress=False)


if __name__ == "__main__":
    args = sys.argv[1:] + ["0.002", "256"][len(sys.argv) - 3 :]
    asyncio.run(_run(args[0], args[1], float(args[2]), int(args[3])))
