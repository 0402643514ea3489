"""The order the client sends requests in (client/ordering.py), seen through a CallLog around the fake scorer:
a conversation's turn prefixes go one after another, shortest first, while conversations overlap; a prompt's
candidates go one first, then the rest together, while prompts overlap."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from client_fakes import TRAINED, CallLog, FakeScorer, nemo_record

from client import conversations as cv
from client.annotate import AnnotateOptions, annotate_file
from client.evaluate import parse_pair, score_pairs
from client.evaluate_v2 import ScoresFile, header, read_rows, score_rows
from client.rank import rank_responses

TURNS = 4


def first_user_text(conversation: dict[str, Any]) -> str:
    if "messages" in conversation:
        return next(m["content"] for m in conversation["messages"] if m["role"] == "user")
    return conversation["conversations"][0]["value"]


def assert_one_after_another(log: CallLog, group: str) -> None:
    calls = log.of(group)
    for before, after in zip(calls, calls[1:], strict=False):
        assert after.started > before.ended, f"{group}: a turn started before the previous one finished"
    assert all(group not in c.running_at_start for c in calls)


def test_annotate_sends_a_conversations_turns_in_turn_shortest_first(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    records = [nemo_record(i, turns=TURNS) for i in range(1, 25)]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    log = CallLog(FakeScorer(delay=0.004), first_user_text)
    options = AnnotateOptions(attributes=TRAINED, window=8, batch_lines=4, batch_seconds=0.0)
    summary = asyncio.run(annotate_file(src, tmp_path / "out.jsonl", log, options, progress=False))

    assert summary.ok == len(records)
    for i, record in enumerate(records, start=1):
        group = record["conversations"][0]["value"]
        # the oracle: one request per labelled assistant turn t, on the 2t + 2 turns up to it, in turn order
        labelled = [t for t in range(TURNS) if record["conversations"][2 * t + 1]["label"] is not None]
        assert [c.size for c in log.of(group)] == [2 * t + 2 for t in labelled], f"record {i}"
        assert_one_after_another(log, group)
    assert log.most_groups_at_once() >= 4  # conversations still run side by side (window 8)


def test_rank_sends_one_candidate_then_the_rest_together() -> None:
    log = CallLog(FakeScorer(delay=0.004), first_user_text)
    responses = [f"answer {i}" for i in range(8)]
    ranked = asyncio.run(rank_responses("p", responses, log, concurrency=4))

    assert sorted(r.index for r in ranked) == list(range(8))
    first, rest = log.calls[0], log.calls[1:]
    assert len(rest) == 7 and all(c.started > first.ended for c in rest)
    assert max(len(c.running_at_start) for c in rest) == 3  # the rest overlap, at most `concurrency` at once


def test_evaluate_pairs_send_chosen_then_rejected_and_pairs_overlap() -> None:
    log = CallLog(FakeScorer(delay=0.004), first_user_text)
    pairs = [
        parse_pair(n, json.dumps({"prompt": f"q{n}", "chosen": f"good {n}", "rejected": f"bad {n}"}))
        for n in range(1, 11)
    ]
    outcomes, errors = asyncio.run(score_pairs(pairs, log, concurrency=4))

    assert len(outcomes) == 10 and not errors
    for n in range(1, 11):
        assert len(log.of(f"q{n}")) == 2
        assert_one_after_another(log, f"q{n}")
    assert log.most_groups_at_once() >= 3


def test_evaluate_pairs_chosen_side_goes_first() -> None:
    sent: list[str] = []
    scorer = FakeScorer()

    async def score(conversation: dict[str, Any]) -> Any:
        sent.append(conversation["messages"][-1]["content"])
        return await scorer(conversation)

    pairs = [parse_pair(1, json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}))]
    asyncio.run(score_pairs(pairs, score, concurrency=2))
    assert sent == ["good", "bad"]


def test_rewardbench2_rows_send_one_completion_then_the_rest(tmp_path: Path) -> None:
    rows_path = tmp_path / "rb2.jsonl"
    rows = [
        {"id": str(n), "subset": "Math", "prompt": f"q{n}", "chosen": [f"c{n}"],
         "rejected": [f"r{n}.{k}" for k in range(3)], "num_correct": 1, "total_completions": 4}
        for n in range(6)
    ]  # fmt: skip
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parsed, _ = read_rows(rows_path)
    log = CallLog(FakeScorer(delay=0.004), first_user_text)
    scores = ScoresFile(tmp_path / "scores.jsonl", header(rows_path, None, None, False))
    entries = asyncio.run(score_rows(parsed, log, scores, concurrency=3, progress=False))

    assert len(entries) == 6 and all("scores" in e for e in entries.values())
    for n in range(6):
        first, *rest = log.of(f"q{n}")
        assert len(rest) == 3 and all(c.started > first.ended for c in rest)
        assert any(f"q{n}" in c.running_at_start for c in rest)  # the rest run together
    assert log.most_groups_at_once() >= 2


def test_in_turn_keeps_going_after_a_rejected_turn() -> None:
    from client.api import RequestRejected
    from client.ordering import in_turn

    async def score(n: int) -> int:
        if n == 2:
            raise RequestRejected("too long")
        return n * 10

    results = asyncio.run(in_turn(score, [1, 2, 3]))
    assert results[0] == 10 and isinstance(results[1], RequestRejected) and results[2] == 30


def test_prefix_conversations_grow_in_turn_order() -> None:
    record = nemo_record(3, turns=TURNS)
    sizes = [len(c["conversations"]) for _, c in cv.scoring_requests(record)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
