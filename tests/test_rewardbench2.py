"""RewardBench 2 in `reward-client evaluate` (client/rewardbench2.py, client/evaluate_v2.py) on a small synthetic
file whose results are computed by hand below. The scorer reads each completion's reward from its text
("r=2.5" scores 2.5), so every number is known without a model; the served path is in test_rl_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from client.api import RequestRejected, Score, ServerFailure
from client.evaluate_v2 import (
    ScoresFile,
    ScoresFileError,
    evaluation_report,
    header,
    looks_like_v2,
    read_rows,
    score_rows,
)
from client.rewardbench2 import best_of_n, report

ROWS: list[dict[str, Any]] = [
    # best-of-4 subsets: result 1 when the chosen is alone on top, 1/k when k share the top, else 0
    {"id": "0", "subset": "Factuality", "chosen": ["r=3"], "rejected": ["r=1", "r=2", "r=0"]},  # 1
    {"id": "1", "subset": "Factuality", "chosen": ["r=2"], "rejected": ["r=2", "r=1", "r=0"]},  # 1/2
    {"id": "2", "subset": "Math", "chosen": ["r=1"], "rejected": ["r=2", "r=0", "r=0"]},  # 0
    {"id": "3", "subset": "Precise IF", "chosen": ["r=5"], "rejected": ["r=5", "r=5", "r=5"]},  # 1/4
    {"id": "4", "subset": "Safety", "chosen": ["r=4"], "rejected": ["r=1", "r=1", "r=1"]},  # 1
    {"id": "5", "subset": "Focus", "chosen": ["r=-1"], "rejected": ["r=-2", "r=-3", "r=-4"]},  # 1
    # Ties, prompt 1: ref accurate, margin 3-1 = 2; tied accurate, spread 3-2 = 1, margin 2-1 = 1
    {"id": "ref:1", "subset": "Ties", "chosen": ["r=3"], "rejected": ["r=1", "r=0"]},
    {"id": "tied:1", "subset": "Ties", "chosen": ["r=3", "r=2.5", "r=2"], "rejected": ["r=0.5", "r=1"]},
    # prompt 2: ref wrong, margin 1-2 = -1; tied accurate, spread 4-3.5 = 0.5, margin 3.5-1 = 2.5
    {"id": "ref:2", "subset": "Ties", "chosen": ["r=1"], "rejected": ["r=2"]},
    {"id": "tied:2", "subset": "Ties", "chosen": ["r=4", "r=3.5"], "rejected": ["r=1"]},
]
for _n, _row in enumerate(ROWS):
    _row["prompt"] = f"question {_n}"
    _row["num_correct"] = len(_row["chosen"])
    _row["total_completions"] = len(_row["chosen"]) + len(_row["rejected"])
COMPLETIONS = sum(r["total_completions"] for r in ROWS)  # 38

# Ties by hand: ref accuracy 1/2, tied accuracy 2/2; prompt 1: tied margin 1 > spread 1? no; min(2, 1) > 1? no;
# tanh(1/1 - 1) = 0. prompt 2: 2.5 > 0.5 yes; min(-1, 2.5) > 0.5 no; tanh(-1/0.5 - 1) = tanh(-3).
TIES = 0.30 * 1.0 + 0.30 * 0.5 + 0.20 * 0.5 + 0.20 * 0.0 + 0.01 * (0.0 + math.tanh(-3.0)) / 2
SUBSET_SCORES = {"Factuality": 0.75, "Precise IF": 0.25, "Math": 0.0, "Safety": 1.0, "Focus": 1.0, "Ties": TIES}
OVERALL = (0.75 + 0.25 + 0.0 + 1.0 + 1.0 + TIES) / 6


class TextScorer:
    """reward = the number after 'r=' in the assistant turn; counts calls; fails as told."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    async def __call__(self, conversation: Mapping[str, Any]) -> Score:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ServerFailure("infer(ensemble) at x failed: StatusCode.UNAVAILABLE", "StatusCode.UNAVAILABLE")
        text = conversation["messages"][-1]["content"]
        if text == "TOO-LONG":
            raise RequestRejected("conversation is 9999 tokens, more than the engine's maximum input length of 128")
        await asyncio.sleep(0)
        return Score(scores={"reward": float(text[2:])}, reward=float(text[2:]), num_input_tokens=3, truncated=False)


def write(path: Path, rows: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def run(path: Path, scorer: TextScorer, scores: Path, restart: bool = False) -> dict[int, dict[str, Any]]:
    rows, _ = read_rows(path)
    file = ScoresFile(scores, header(path, None, None, False))
    return asyncio.run(score_rows(rows, scorer, file, concurrency=4, restart=restart, progress=False))


def test_best_of_n_rule() -> None:
    assert best_of_n([3, 1, 2, 0]) == 1.0
    assert best_of_n([2, 2, 1, 0]) == 0.5
    assert best_of_n([5, 5, 5, 5]) == 0.25
    assert best_of_n([1, 2, 0, 0]) == 0.0


def test_report_matches_the_hand_computed_scores(tmp_path: Path) -> None:
    path = write(tmp_path / "rb2.jsonl", ROWS)
    assert looks_like_v2(path)
    rows, errors = read_rows(path)
    assert errors == [] and len(rows) == len(ROWS)
    scored = [(r, [float(c[2:]) for c in r.completions]) for r in rows]
    rep = report(scored)
    assert {k: v["score"] for k, v in rep["subsets"].items()} == pytest.approx(SUBSET_SCORES, abs=1e-12)
    assert list(rep["subsets"]) == ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]
    ties = rep["subsets"]["Ties"]
    assert (ties["ref_accuracy"], ties["tied_accuracy"]) == (0.5, 1.0)
    assert (ties["correctness_preferred"], ties["correctness_preferred_hard"]) == (0.5, 0.0)
    assert ties["correctness_margin_score"] == pytest.approx(math.tanh(-3.0) / 2)
    assert rep["overall"] == pytest.approx(OVERALL, abs=1e-12) and rep["complete"]
    assert rep["overall"] == pytest.approx(0.590837454, abs=1e-9)  # the same, written out
    partial = report(s for s in scored if s[0].subset != "Ties")
    assert not partial["complete"] and partial["missing_subsets"] == ["Ties"]
    assert partial["overall"] == pytest.approx(3.0 / 5)


def test_evaluate_scores_every_completion_and_resumes(tmp_path: Path) -> None:
    path = write(tmp_path / "rb2.jsonl", ROWS)
    scores = tmp_path / "scores.jsonl"
    with pytest.raises(ServerFailure):
        run(path, TextScorer(fail_after=20), scores)  # the server goes away mid-run
    kept = scores.read_text().splitlines()
    assert 1 < len(kept) < len(ROWS) + 1  # header + the rows finished before the failure
    with open(scores, "a") as f:
        f.write('{"line": 99, "sco')  # a write cut short by kill -9
    again = TextScorer()
    entries = run(path, again, scores)
    done_before = sum(len(ROWS[json.loads(x)["line"] - 1]["chosen"] + ROWS[json.loads(x)["line"] - 1]["rejected"])
                      for x in kept[1:])  # fmt: skip
    assert again.calls == COMPLETIONS - done_before  # only the rest was scored
    rows, _ = read_rows(path)
    rep = evaluation_report(rows, entries, [])
    assert rep["overall"] == pytest.approx(OVERALL, abs=1e-12) and rep["errors"] == []
    assert len(scores.read_text().splitlines()) == len(ROWS) + 1  # the partial line is gone
    third = TextScorer()
    assert run(path, third, scores) == entries and third.calls == 0  # complete: nothing to do
    restarted = TextScorer()
    run(path, restarted, scores, restart=True)
    assert restarted.calls == COMPLETIONS


def test_scores_file_of_another_input_is_refused(tmp_path: Path) -> None:
    scores = tmp_path / "scores.jsonl"
    run(write(tmp_path / "a.jsonl", ROWS), TextScorer(), scores)
    with pytest.raises(ScoresFileError, match="another input or other options .*input_sha256.*--restart"):
        run(write(tmp_path / "b.jsonl", ROWS[:3]), TextScorer(), scores)


def test_bad_rows_and_rejected_completions_are_reported(tmp_path: Path) -> None:
    bad = [
        {**ROWS[0], "chosen": "r=1"},
        {**ROWS[0], "num_correct": 2},
        {**ROWS[6], "id": "7"},
        {**ROWS[7], "chosen": ["r=1"], "num_correct": 1, "total_completions": 3},
        {**ROWS[4], "rejected": ["TOO-LONG", "r=0", "r=0"]},
    ]
    path = write(tmp_path / "rb2.jsonl", ROWS[:6] + bad, extra="not json\n")
    rows, read_errors = read_rows(path)
    entries = run(path, TextScorer(), tmp_path / "scores.jsonl")
    rep = evaluation_report(rows, entries, read_errors)
    messages = {e["line"]: e["error"] for e in rep["errors"]}
    assert "'chosen' must be a non-empty list of strings" in messages[7]
    assert "'num_correct' is 2 but the row has 1 chosen completions" in messages[8]
    assert "a Ties row's 'id' must be 'ref:N' or 'tied:N', got '7'" in messages[9]
    assert "a 'tied:N' row needs at least 2 chosen completions" in messages[10]
    assert messages[11].startswith("completion 1: conversation is 9999 tokens")
    assert "not valid JSON" in messages[12]
    assert rep["rows"] == 6  # the six good best-of-4 rows; Ties missing
    assert rep["overall"] == pytest.approx((0.75 + 0.25 + 0.0 + 1.0 + 1.0) / 5)
