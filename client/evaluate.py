"""RewardBench-format evaluation: read pairs, score chosen and rejected, aggregate with `client.rewardbench`.

Pairs file: one JSON object a line with `prompt` (the user turn), `chosen`, `rejected` (assistant responses) and
optionally `subset`; `chosen` / `rejected` may also be whole OpenAI message lists (then `prompt` is not used);
`id` is optional. Pairs without a `subset` are plain preference pairs: they form the subset "all". When no
RewardBench subset is present, the report has one section "all" and its overall score is the accuracy over all
pairs. String sides get the `--system` prompt when one is given (else the model's default). A pair that cannot be
read or scored is reported as an error and left out of the accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.api import Score, ServerFailure, bounded_map
from client.conversations import RecordError, openai_prompt_and_response, parse_json, read_records
from client.ordering import group
from client.rewardbench import is_correct, report
from client.summary import fold, stats_json, stats_table

ScoreFn = Callable[[Mapping[str, Any]], Awaitable[Score]]
PLAIN_SUBSET = "all"  # the subset (and section) of pairs that name none


@dataclass(frozen=True)
class Pair:
    line: int
    subset: str
    chosen: dict[str, Any]
    rejected: dict[str, Any]
    id: Any = None


@dataclass(frozen=True)
class PairOutcome:
    pair: Pair
    chosen: float
    rejected: float
    chosen_scores: Mapping[str, float] = field(default_factory=dict)  # the trained attributes of each side
    rejected_scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.chosen - self.rejected

    @property
    def correct(self) -> bool:
        return is_correct(self.chosen, self.rejected)


def _side(record: Mapping[str, Any], key: str, system: str | None) -> dict[str, Any]:
    value = record.get(key)
    if isinstance(value, list):
        return {"messages": value}
    if not isinstance(value, str):
        raise RecordError(f"'{key}' must be a string (the response) or an array of messages")
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise RecordError("'prompt' must be a string")
    return openai_prompt_and_response(prompt, value, system)


def parse_pair(line: int, raw: str | bytes, system: str | None = None) -> Pair:
    """One pairs-file line → Pair; string sides become (system?, user: prompt, assistant: side)."""
    record = parse_json(raw)
    if not isinstance(record, dict):
        raise RecordError("a pair must be a JSON object")
    subset = record.get("subset", PLAIN_SUBSET)
    if not isinstance(subset, str) or not subset:
        raise RecordError("'subset' must be a non-empty string when given")
    return Pair(line, subset, _side(record, "chosen", system), _side(record, "rejected", system), record.get("id"))


def read_pairs(path: str | Path, system: str | None = None) -> tuple[list[Pair], list[dict[str, Any]]]:
    """(pairs, errors) from a jsonl file; blank lines are skipped; `system` applies to string sides."""
    return read_records(path, lambda n, raw: parse_pair(n, raw, system))


async def score_pairs(
    pairs: list[Pair], score: ScoreFn, concurrency: int, progress: Callable[[], None] | None = None
) -> tuple[list[PairOutcome], list[dict[str, Any]]]:
    """(outcomes, errors): both sides of every pair scored, at most `concurrency` pairs pending; `progress` is
    called once per side scored. A pair's chosen side is sent first and its rejected side once that has finished,
    so it reuses the prompt in the server's prefix cache (client.ordering); pairs run concurrently."""

    async def scored(conversation: Mapping[str, Any]) -> Score:
        try:
            return await score(conversation)
        finally:
            if progress is not None:
                progress()

    async def both(pair: Pair) -> list[Score | Exception]:
        return await group(scored, [pair.chosen, pair.rejected], limit=1)

    results: list[list[Score | Exception]] = [[] for _ in pairs]
    async for k, result in bounded_map(both, pairs, limit=concurrency):
        assert not isinstance(result, Exception)  # `group` returns the sides' errors in its list
        for side in result:
            if isinstance(side, ServerFailure):
                raise side
        results[k] = result
    outcomes, errors = [], []
    for pair, (chosen, rejected) in zip(pairs, results, strict=True):
        sides = (("chosen", chosen), ("rejected", rejected))
        failed = [f"{name}: {r}" for name, r in sides if isinstance(r, Exception)]
        if failed:
            errors.append({"line": pair.line, "error": failed[0]})
            continue
        assert isinstance(chosen, Score) and isinstance(rejected, Score)
        outcomes.append(PairOutcome(pair, chosen.reward, rejected.reward, chosen.trained, rejected.trained))
    return outcomes, errors


def evaluation_report(outcomes: list[PairOutcome], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The report (client.rewardbench), with one section "all" when no RewardBench subset is present (overall =
    accuracy over all pairs), and `rewards`: n/mean/min/max of each side's reward and attributes and the margin."""
    out = report((o.pair.subset, o.correct) for o in outcomes)
    if not out["sections"] and out["pairs"]:
        out["sections"] = {PLAIN_SUBSET: out["accuracy"]}
        for r in out["subsets"].values():
            r["section"] = PLAIN_SUBSET
        out["unmapped_subsets"] = []
        out["overall"] = out["accuracy"]
    out["errors"] = sorted(errors, key=lambda e: e["line"])
    out["rewards"] = stats_json(reward_stats(outcomes))
    return out


def reward_stats(outcomes: list[PairOutcome]) -> dict[str, list[float]]:
    """Per row (chosen / rejected reward and attributes, margin): [count, sum, min, max]."""
    stats: dict[str, list[float]] = {}
    for o in outcomes:
        fold(stats, {"chosen reward": o.chosen, "rejected reward": o.rejected, "margin": o.margin})
    for side in ("chosen", "rejected"):
        for o in outcomes:
            fold(stats, {f"{side} {n}": v for n, v in getattr(o, f"{side}_scores").items()})
    return stats


def pair_rows(outcomes: list[PairOutcome], errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per pair, in file order, for `--output`: rewards, margin and verdict, or the error."""
    rows: list[dict[str, Any]] = [
        {
            "line": o.pair.line,
            "id": o.pair.id,
            "subset": o.pair.subset,
            "chosen": o.chosen,
            "rejected": o.rejected,
            "margin": o.margin,
            "correct": o.correct,
        }
        for o in outcomes
    ]
    rows += [{"line": e["line"], "error": e["error"]} for e in errors]
    return sorted(rows, key=lambda r: r["line"])


def format_report(rep: Mapping[str, Any]) -> str:
    """A text table: sections, subsets (percent), overall."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    lines = [f"{'section / subset':<28} {'accuracy':>8} {'correct':>8} {'pairs':>6}"]
    for section, score in rep["sections"].items():
        lines.append(f"{section:<28} {pct(score):>8}")
        for subset, r in rep["subsets"].items():
            if r["section"] == section:
                lines.append(f"  {subset:<26} {pct(r['accuracy']):>8} {r['correct']:>8} {r['total']:>6}")
    for subset in rep["unmapped_subsets"]:
        r = rep["subsets"][subset]
        lines.append(f"  {subset + ' (no section)':<26} {pct(r['accuracy']):>8} {r['correct']:>8} {r['total']:>6}")
    overall = "Overall (all pairs)" if list(rep["sections"]) == [PLAIN_SUBSET] else "Overall (mean of sections)"
    lines.append(f"{overall:<28} {pct(rep['overall']):>8}")
    lines.append(f"{'pairs scored':<28} {rep['pairs']:>8}")
    if rep["errors"]:
        lines.append(f"{'pairs failed':<28} {len(rep['errors']):>8}")
        lines += [f"  line {e['line']}: {e['error']}" for e in rep["errors"]]
    rewards = rep.get("rewards") or {}
    if rewards:
        lines.append("")
        lines.append(stats_table({k: [v["n"], v["mean"] * v["n"], v["min"], v["max"]] for k, v in rewards.items()},
                                 "scores"))  # fmt: skip
    return "\n".join(lines)


def dumps(rep: Mapping[str, Any]) -> str:
    return json.dumps(rep, indent=2, ensure_ascii=False)
