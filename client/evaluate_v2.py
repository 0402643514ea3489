"""`reward-client evaluate` on a RewardBench 2 file: score every completion, resumably, then report
(`client.rewardbench2`).

Scores go to a jsonl file (`--scores`, default INPUT.rb2-scores.jsonl): a header line naming the input (its
SHA-256) and the options that change scores (system prompt, weights), then one line per finished row,
`{"line": n, "id": ..., "scores": [...]}` or `{"line": n, "id": ..., "error": "..."}` (a completion the server
rejected, e.g. too long). Rerunning the same command reads that file, skips the rows already there and scores the
rest; a partial last line (a killed run) is cut off first. `--restart` starts over. A server failure (unreachable
after the retries) stops the run with everything finished kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import RewardClient, RewardClientError, Score, ServerFailure, bounded_map
from client.conversations import RecordError, openai_prompt_and_response, parse_json, read_records
from client.ordering import group
from client.replicas import ReplicaPool
from client.rewardbench2 import SUBSETS, Row, RowError, parse_row, report

ScoreFn = Callable[[Mapping[str, Any]], Awaitable[Score]]
FORMAT = "reward-client rewardbench2 scores v1"
SYNC_EVERY = 64  # rows between fsyncs of the scores file


class ScoresFileError(RecordError):
    """The scores file does not belong to this input and these options."""


def looks_like_v2(path: str | Path) -> bool:
    """True when the first non-blank line is a RewardBench 2 row (`chosen` a list of strings)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    record = parse_json(raw)
                except RecordError:
                    return False
                chosen = record.get("chosen") if isinstance(record, dict) else None
                return isinstance(chosen, list) and bool(chosen) and all(isinstance(c, str) for c in chosen)
    return False


def read_rows(path: str | Path) -> tuple[list[Row], list[dict[str, Any]]]:
    return read_records(path, lambda n, raw: parse_row(n, parse_json(raw)), (RowError,))


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ScoresFile:
    """The resumable record of finished rows."""

    path: Path
    header: dict[str, Any]

    def load(self, restart: bool) -> dict[int, dict[str, Any]]:
        """Finished rows by input line; creates the file (with its header) when absent or on restart."""
        if restart or not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.header) + "\n")
            return {}
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a killed run may have left a partial last line
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        lines = complete.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if header != self.header:
            raise ScoresFileError(
                f"{self.path} holds scores of another input or other options ({_differs(header, self.header)}); "
                "use --restart to start over, or --scores to write elsewhere"
            )
        done: dict[int, dict[str, Any]] = {}
        for text in lines[1:]:
            entry = json.loads(text)
            done[int(entry["line"])] = entry
        return done


def _differs(found: Any, want: dict[str, Any]) -> str:
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        return "not a scores file of this tool"
    keys = [k for k in want if found.get(k) != want[k]]
    return "different " + ", ".join(keys)


async def score_rows(
    rows: list[Row],
    score: ScoreFn,
    scores_file: ScoresFile,
    *,
    concurrency: int,
    restart: bool = False,
    system: str | None = None,
    progress: bool = True,
) -> dict[int, dict[str, Any]]:
    """Every row's entry (scores or error) by line: the finished ones from the file, the others scored now. A row's
    first completion is sent alone and the others once it has finished, so they reuse the prompt in the server's
    prefix cache (client.ordering); rows run concurrently, at most `concurrency` pending."""
    done = scores_file.load(restart)
    todo = [r for r in rows if r.line not in done]
    total = sum(len(r.completions) for r in rows)
    bar = _bar(total, total - sum(len(r.completions) for r in todo), progress)

    async def scored(conversation: dict[str, Any]) -> Score:
        try:
            return await score(conversation)
        finally:
            bar.update(1)

    async def row_scores(row: Row) -> list[Score | Exception]:
        conversations = [openai_prompt_and_response(row.prompt, c, system) for c in row.completions]
        return await group(scored, conversations, limit=len(conversations))

    written = 0
    with open(scores_file.path, "a", encoding="utf-8") as out:
        try:
            async for k, results in bounded_map(row_scores, todo, limit=concurrency):
                row = todo[k]
                assert not isinstance(results, Exception)  # `group` returns the completions' errors in its list
                values: list[float] = []
                entry: dict[str, Any] = {"line": row.line, "id": row.id}
                for i, result in enumerate(results):
                    if isinstance(result, ServerFailure):
                        raise result
                    if isinstance(result, RewardClientError):
                        entry.setdefault("error", f"completion {i}: {result}")
                    else:
                        assert isinstance(result, Score)
                        values.append(result.reward)
                if "error" not in entry:
                    entry["scores"] = values
                out.write(json.dumps(entry) + "\n")
                done[row.line] = entry
                written += 1
                if written % SYNC_EVERY == 0:
                    out.flush()
                    os.fsync(out.fileno())
        finally:
            out.flush()
            os.fsync(out.fileno())
            bar.close()
    return done


def _bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="completion", disable=not enabled, dynamic_ncols=True)


def evaluation_report(
    rows: list[Row], entries: Mapping[int, Mapping[str, Any]], read_errors: list[dict[str, Any]]
) -> dict[str, Any]:
    scored = [(r, entries[r.line]["scores"]) for r in rows if "scores" in entries.get(r.line, {})]
    out = report(scored)
    errors = read_errors + [
        {"line": r.line, "error": entries[r.line]["error"]} for r in rows if "error" in entries.get(r.line, {})
    ]
    out["errors"] = sorted(errors, key=lambda e: e["line"])
    return out


def format_report(rep: Mapping[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    lines = [f"{'subset':<14} {'score':>7} {'rows':>6}"]
    for name, s in rep["subsets"].items():
        lines.append(f"{name:<14} {pct(s['score']):>7} {s['rows']:>6}")
        if "ref_accuracy" in s:
            for part in ("ref_accuracy", "tied_accuracy", "correctness_preferred", "correctness_preferred_hard"):
                lines.append(f"  {part:<26} {pct(s[part]):>7}")
    label = "Overall" if rep["complete"] else f"Overall ({len(SUBSETS) - len(rep['missing_subsets'])} of 6 subsets)"
    lines.append(f"{label:<14} {pct(rep['overall']):>7} {rep['rows']:>6}")
    if rep["missing_subsets"]:
        lines.append(f"missing subsets: {', '.join(rep['missing_subsets'])}")
    if rep["errors"]:
        lines.append(f"rows failed: {len(rep['errors'])}")
        lines += [f"  line {e['line']}: {e['error']}" for e in rep["errors"]]
    return "\n".join(lines)


def header(path: str | Path, system: str | None, weights: Any, truncate: bool) -> dict[str, Any]:
    return {"format": FORMAT, "input_sha256": sha256(path), "system": system, "weights": weights, "truncate": truncate}


async def run(args: Any, client: RewardClient | ReplicaPool) -> int:
    """`reward-client evaluate` on a RewardBench 2 file (args: pairs, scores, restart, no_progress, system,
    weights, truncate, concurrency, json); the exit status (1 when rows failed)."""
    rows, read_errors = read_rows(args.pairs)
    path = Path(args.scores) if args.scores else Path(f"{args.pairs}.rb2-scores.jsonl")
    scores_file = ScoresFile(path, header(args.pairs, args.system, args.weights, args.truncate))
    async with client:
        entries = await score_rows(
            rows,
            lambda c: client.score(c, truncate=args.truncate),
            scores_file,
            concurrency=args.concurrency,
            restart=args.restart,
            system=args.system,
            progress=not args.no_progress,
        )
    rep = evaluation_report(rows, entries, read_errors)
    rep["scores_file"] = str(path)
    print(json.dumps(rep, indent=2, ensure_ascii=False) if args.json else format_report(rep))
    return 1 if rep["errors"] else 0
