"""RewardBench-format evaluation: read pairs, score chosen and rejected, aggregate with `client.rewardbench`.

Pairs file: one JSON object a line with `prompt` (the user turn), `chosen`, `rejected` (assistant responses) and
`subset`; `chosen` / `rejected` may also be whole OpenAI message lists (then `prompt` is not used); `id` is
optional. String sides get the `--system` prompt when one is given (else the model's default). A pair that
cannot be read or scored is reported as an error and left out of the accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import RewardClientError, Score, ServerFailure, bounded_map
from client.conversations import RecordError, openai_prompt_and_response, parse_json
from client.rewardbench import is_correct, report

ScoreFn = Callable[[Mapping[str, Any]], Awaitable[Score]]


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
    subset = record.get("subset")
    if not isinstance(subset, str) or not subset:
        raise RecordError("'subset' must be a non-empty string")
    return Pair(line, subset, _side(record, "chosen", system), _side(record, "rejected", system), record.get("id"))


def read_pairs(path: str | Path, system: str | None = None) -> tuple[list[Pair], list[dict[str, Any]]]:
    """(pairs, errors) from a jsonl file; blank lines are skipped; `system` applies to string sides."""
    pairs: list[Pair] = []
    errors: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                pairs.append(parse_pair(n, raw, system))
            except RecordError as e:
                errors.append({"line": n, "error": str(e)})
    return pairs, errors


async def score_pairs(
    pairs: list[Pair], score: ScoreFn, concurrency: int
) -> tuple[list[PairOutcome], list[dict[str, Any]]]:
    """(outcomes, errors): both sides of every pair scored, at most `concurrency` requests pending."""
    conversations = [side for p in pairs for side in (p.chosen, p.rejected)]
    rewards: list[float | None] = [None] * len(conversations)
    failures: dict[int, str] = {}
    async for i, result in bounded_map(score, conversations, limit=concurrency):
        if isinstance(result, ServerFailure):
            raise result
        if isinstance(result, RewardClientError):
            failures.setdefault(i // 2, f"{'chosen' if i % 2 == 0 else 'rejected'}: {result}")
        else:
            assert isinstance(result, Score)
            rewards[i] = result.reward
    outcomes, errors = [], []
    for k, pair in enumerate(pairs):
        if k in failures:
            errors.append({"line": pair.line, "error": failures[k]})
            continue
        chosen, rejected = rewards[2 * k], rewards[2 * k + 1]
        assert chosen is not None and rejected is not None
        outcomes.append(PairOutcome(pair, chosen, rejected))
    return outcomes, errors


def evaluation_report(outcomes: list[PairOutcome], errors: list[dict[str, Any]]) -> dict[str, Any]:
    out = report((o.pair.subset, o.correct) for o in outcomes)
    out["errors"] = sorted(errors, key=lambda e: e["line"])
    return out


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
    lines.append(f"{'Overall (mean of sections)':<28} {pct(rep['overall']):>8}")
    lines.append(f"{'pairs scored':<28} {rep['pairs']:>8}")
    if rep["errors"]:
        lines.append(f"{'pairs failed':<28} {len(rep['errors']):>8}")
        lines += [f"  line {e['line']}: {e['error']}" for e in rep["errors"]]
    return "\n".join(lines)


def dumps(rep: Mapping[str, Any]) -> str:
    return json.dumps(rep, indent=2, ensure_ascii=False)
