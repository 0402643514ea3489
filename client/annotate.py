"""Resumable annotation of a NeMo (or OpenAI `messages`) conversation jsonl file.

Every turn to score (client.conversations: NeMo assistant turns with a non-null `label`, every OpenAI assistant
message) is scored on its prefix and gets a new `name:value,...` label. Output lines keep the input order. A turn
the server rejects (too long, ...) keeps the record: its label is null with `label_error` saying why, and the
errors file gets `{"line": N, "turn": T, "error": reason}`; the record's other turns keep their scores. A line that
cannot be read at all (bad JSON, not a record) goes to the errors file as `{"line": N, "error": reason}` instead.
Labels scored on a conversation shortened by `--truncate` carry `label_truncated: true`. A record's turns are
sent one after another, shortest prefix first, so the server's prefix cache reuses each earlier turn
(client.ordering); up to `window` records are in flight at once.

Input safety: the input is only ever read. OUT and the errors file are written beside their final paths
(`OUT.part`, `ERRORS.part`) and renamed over them when the job completes; a path that is (or links to) the input
is refused before anything is opened for writing.

Crash safety: output and error lines are appended in batches, each with one write() of whole lines, then
fsynced; only then is the checkpoint (`OUT.ckpt`: next input line and byte offset, output and errors byte
offsets, counts) replaced atomically. A rerun truncates the .part files back to the checkpoint's offsets and
continues from its line, so a job killed at any instant (SIGKILL included) resumes without partial lines or
duplicates, and its output is byte-identical to an uninterrupted run (the server is deterministic).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from client.api import RequestRejected, Score
from client.conversations import (
    RecordError,
    TurnLabel,
    apply_labels,
    format_label,
    label_values,
    parse_json,
    scoring_requests,
    skipped_turns,
)
from client.ordering import in_turn
from client.safe_paths import OutputPathError, check_outputs, fsync_dir, part_path, replace_from_part
from client.summary import fold, merge

CHECKPOINT_SUFFIX = ".ckpt"
ERRORS_SUFFIX = ".errors.jsonl"
CHECKPOINT_VERSION = 2
STATUS_INTERVAL_S = 1.0

Scorer = Callable[[Mapping[str, Any]], Awaitable[Score]]
# per-turn counts: scored (label written), skipped (assistant turn with a null label), failed (rejected by the
# server), truncated (scored on a conversation --truncate shortened; also counted as scored)
TURN_COUNTS = ("scored", "skipped", "failed", "truncated")


class AnnotateError(RuntimeError):
    """The job cannot start or go on (checkpoint mismatch, foreign output file, ...)."""


@dataclass(frozen=True)
class AnnotateOptions:
    attributes: tuple[str, ...]  # label names, in order
    steerlm: bool = False  # clamp to [0, 4] and round, as NeMo-Aligner does for SteerLM training
    truncate: bool = False  # ask the server to drop the oldest turns of an over-long prefix
    window: int = 256  # lines in flight (the reorder buffer's size)
    batch_lines: int = 256  # commit at least every this many lines ...
    batch_seconds: float = 1.0  # ... or this often

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {"attributes": list(self.attributes), "steerlm": self.steerlm, "truncate": self.truncate}


@dataclass
class Checkpoint:
    input: str
    input_size: int
    options: dict[str, Any]
    lines_done: int = 0  # input lines fully handled (written to OUT or the errors file, or blank)
    input_offset: int = 0  # byte offset of input line lines_done + 1
    out_offset: int = 0
    err_offset: int = 0
    ok: int = 0  # records written to OUT
    errors: int = 0  # lines that could not be read (not written to OUT)
    turns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TURN_COUNTS, 0))
    stats: dict[str, list[float]] = field(default_factory=dict)  # name → [count, sum, min, max] of written values
    done: bool = False
    version: int = CHECKPOINT_VERSION

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("version") != CHECKPOINT_VERSION:
                raise AnnotateError(f"{path}: checkpoint version {data.get('version')!r} is not supported")
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise AnnotateError(f"{path}: unreadable checkpoint ({e}); rerun with --restart to start over") from e

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(asdict(self), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


@dataclass
class Summary:
    lines: int = 0  # input lines handled in total (this run and earlier ones)
    ok: int = 0  # records written
    errors: int = 0  # unreadable lines
    turns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TURN_COUNTS, 0))
    stats: dict[str, list[float]] = field(default_factory=dict)
    this_run: int = 0
    seconds: float = 0.0
    conversations_per_second: float = 0.0
    already_done: bool = False
    out: str = ""
    errors_file: str = ""


@dataclass
class LineResult:
    out: bytes = b""
    err: bytes = b""
    unreadable: bool = False
    turns: dict[str, int] = field(default_factory=dict)
    values: list[dict[str, float]] = field(default_factory=list)  # the written label values, per scored turn


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def error_line(line_no: int, reason: str, turn: int | None = None) -> bytes:
    entry: dict[str, Any] = {"line": line_no} if turn is None else {"line": line_no, "turn": turn}
    entry["error"] = reason
    return (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")


def cli_wording(reason: str) -> str:
    """The server's advice in the CLI's terms (the server speaks of the request field `truncate`)."""
    return reason.replace("set truncate=true", "use --truncate")


async def annotate_line(line_no: int, raw: bytes, scorer: Scorer, options: AnnotateOptions) -> LineResult:
    """One input line → its output line (and error lines for rejected turns), or its error line when it cannot be
    read. The line's turns are scored one after another, shortest prefix first. ServerFailure (and other
    failures) propagate."""
    if not raw.strip():
        return LineResult()
    try:
        record = parse_json(raw)
        requests = scoring_requests(record)
        skipped = skipped_turns(record)
    except RecordError as e:
        return LineResult(err=error_line(line_no, str(e)), unreadable=True)
    # shortest prefix first, each after the previous has finished: the server's prefix cache reuses the blocks
    # the previous turn stored (client.ordering); other lines run concurrently
    results = await in_turn(scorer, [conv for _, conv in requests])
    labels: dict[int, TurnLabel] = {}
    errors: list[bytes] = []
    counts = dict.fromkeys(TURN_COUNTS, 0)
    counts["skipped"] = skipped
    values: list[dict[str, float]] = []
    for (turn, _), result in zip(requests, results, strict=True):
        try:
            if isinstance(result, RequestRejected):
                raise RecordError(cli_wording(str(result)))
            label = format_label(result.scores, options.attributes, steerlm=options.steerlm)
        except RecordError as e:
            labels[turn] = TurnLabel(None, error=str(e))
            errors.append(error_line(line_no, str(e), turn))
            counts["failed"] += 1
            continue
        labels[turn] = TurnLabel(label, truncated=result.truncated)
        values.append(label_values(result.scores, options.attributes, steerlm=options.steerlm))
        counts["scored"] += 1
        counts["truncated"] += int(result.truncated)
    out = json.dumps(apply_labels(record, labels), ensure_ascii=False) + "\n"
    return LineResult(out=out.encode("utf-8"), err=b"".join(errors), turns=counts, values=values)


def _lines(f: IO[bytes], first_line: int) -> Iterator[tuple[int, bytes, int]]:
    """(line number, raw line, byte offset after it) from the file's current position."""
    line_no = first_line
    offset = f.tell()
    while raw := f.readline():
        offset += len(raw)
        yield line_no, raw, offset
        line_no += 1


class _Writer:
    """Appends whole-line batches to OUT and the errors file, fsyncs, then moves the checkpoint forward."""

    def __init__(self, out_path: Path, err_path: Path, ckpt_path: Path, ckpt: Checkpoint) -> None:
        self.err_path = err_path
        self.ckpt_path = ckpt_path
        self.ckpt = ckpt
        self.out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.out_fd, ckpt.out_offset)
        os.lseek(self.out_fd, ckpt.out_offset, os.SEEK_SET)
        self.err_fd: int | None = None
        if err_path.exists():
            self._open_errors()
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.lines = 0
        self.ok = 0
        self.errors = 0
        self.turns = dict.fromkeys(TURN_COUNTS, 0)
        self.stats: dict[str, list[float]] = {}
        self.input_offset = ckpt.input_offset

    def _open_errors(self) -> int:
        if self.err_fd is None:
            self.err_fd = os.open(self.err_path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self.err_fd, self.ckpt.err_offset)
            os.lseek(self.err_fd, self.ckpt.err_offset, os.SEEK_SET)
        return self.err_fd

    def add(self, result: LineResult, input_offset: int) -> None:
        if result.out:
            self.out.append(result.out)
            self.ok += 1
        if result.err:
            self.err.append(result.err)
        self.errors += int(result.unreadable)
        for k, n in result.turns.items():
            self.turns[k] += n
        for values in result.values:
            fold(self.stats, values)
        self.lines += 1
        self.input_offset = input_offset

    @property
    def pending(self) -> int:
        return self.lines

    def commit(self, done: bool = False) -> None:
        if not self.lines and not done:
            return
        out, err = b"".join(self.out), b"".join(self.err)
        if out:
            _write_all(self.out_fd, out)  # one write() of whole lines (looping only on a short write)
        os.fsync(self.out_fd)
        if err:
            fd = self._open_errors()
            _write_all(fd, err)
            os.fsync(fd)
        c = self.ckpt
        c.lines_done += self.lines
        c.input_offset = self.input_offset
        c.out_offset += len(out)
        c.err_offset += len(err)
        c.ok += self.ok
        c.errors += self.errors
        for k, n in self.turns.items():
            c.turns[k] = c.turns.get(k, 0) + n
        merge(c.stats, self.stats)
        c.done = done
        c.save(self.ckpt_path)
        self.out, self.err = [], []
        self.lines = self.ok = self.errors = 0
        self.turns = dict.fromkeys(TURN_COUNTS, 0)
        self.stats = {}

    def close(self) -> None:
        os.close(self.out_fd)
        if self.err_fd is not None:
            os.close(self.err_fd)


def paths(out: str | os.PathLike[str], errors: str | os.PathLike[str] | None = None) -> tuple[Path, Path, Path]:
    """(OUT, errors file, checkpoint file) for an output path."""
    out_path = Path(out)
    err_path = Path(errors) if errors is not None else out_path.with_name(out_path.name + ERRORS_SUFFIX)
    return out_path, err_path, out_path.with_name(out_path.name + CHECKPOINT_SUFFIX)


def check_paths(in_path: Path, out_path: Path, err_path: Path, ckpt_path: Path) -> None:
    """Refuse (AnnotateError) any written path that is the input or another written path, or a missing folder."""
    outputs = {
        "output": out_path,
        "errors file": err_path,
        "checkpoint": ckpt_path,
        "partial output": part_path(out_path),
        "partial errors file": part_path(err_path),
        "checkpoint being written": ckpt_path.with_name(ckpt_path.name + ".tmp"),
    }
    try:
        check_outputs({"input": in_path}, outputs)
    except OutputPathError as e:
        raise AnnotateError(str(e)) from None
    if not in_path.is_file():
        raise AnnotateError(f"input {in_path} is not a readable file")


def _start(
    in_path: Path, out_path: Path, err_path: Path, ckpt_path: Path, options: AnnotateOptions, restart: bool
) -> Checkpoint:
    check_paths(in_path, out_path, err_path, ckpt_path)
    fresh = Checkpoint(input=str(in_path.resolve()), input_size=in_path.stat().st_size, options=options.fingerprint())
    ckpt = None if restart else Checkpoint.load(ckpt_path)
    if ckpt is None:
        if not restart and out_path.exists() and out_path.stat().st_size > 0:
            raise AnnotateError(
                f"{out_path} exists and has no checkpoint ({ckpt_path.name}): not overwriting it; "
                "rerun with --restart to replace it (it stays as it is until the new run completes)"
            )
        for p in (part_path(out_path), part_path(err_path)):  # an earlier unfinished run's partial files
            if p.exists():
                p.unlink()
        fresh.save(ckpt_path)
        return fresh
    if ckpt.input != fresh.input:
        raise AnnotateError(
            f"{ckpt_path} belongs to a run on {ckpt.input}, not {fresh.input}; rerun with --restart to start over"
        )
    if ckpt.input_size != fresh.input_size:
        state = "finished" if ckpt.done else "started"
        raise AnnotateError(
            f"the input {fresh.input} is {fresh.input_size} bytes, but it was {ckpt.input_size} bytes when the run "
            f"recorded in {ckpt_path} {state}: it changed since; rerun with --restart to annotate it again"
        )
    if ckpt.options != fresh.options:
        raise AnnotateError(
            f"{ckpt_path} was written with options {ckpt.options}, this run has {fresh.options}; "
            "use the same options to resume, or --restart"
        )
    if ckpt.done:
        return ckpt
    for p, offset in ((part_path(out_path), ckpt.out_offset), (part_path(err_path), ckpt.err_offset)):
        size = p.stat().st_size if p.exists() else 0
        if size < offset:
            raise AnnotateError(
                f"{p} is {size} bytes but the checkpoint recorded {offset}: it was changed since; "
                "rerun with --restart to start over"
            )
    return ckpt


def _publish(out_path: Path, err_path: Path, ckpt: Checkpoint) -> None:
    """Rename the finished .part files over OUT and the errors file (idempotent: safe to repeat after a crash).
    A run without error lines removes an errors file left by an earlier run of the same output."""
    if part_path(out_path).exists():
        replace_from_part(out_path)
    if ckpt.err_offset > 0:
        if part_path(err_path).exists():
            replace_from_part(err_path)
    else:
        for p in (err_path, part_path(err_path)):
            if p.exists():
                p.unlink()


def _progress(total: int | None, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="conv",
        desc="annotate",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _show_status(bar: Any, text: str | None, shown: str | None, progress: bool) -> str | None:
    """Put the client's retry state on the progress line (or stderr without one); returns what is shown."""
    if text == shown:
        return shown
    if progress:
        bar.set_description_str(f"annotate [{text}]" if text else "annotate")
    elif text and not shown:
        print(f"annotate: {text}", file=sys.stderr, flush=True)
    elif shown and not text:
        print("annotate: server back, continuing", file=sys.stderr, flush=True)
    return text


async def annotate_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    scorer: Scorer,
    options: AnnotateOptions,
    *,
    errors_path: str | os.PathLike[str] | None = None,
    restart: bool = False,
    progress: bool = True,
    on_commit: Callable[[Checkpoint], None] | None = None,
    status: Callable[[], str | None] | None = None,
) -> Summary:
    """Annotate IN into OUT, resuming from OUT's checkpoint when there is one. See the module docstring."""
    src = Path(in_path)
    out, err, ckpt_path = paths(out_path, errors_path)
    ckpt = _start(src, out, err, ckpt_path, options, restart)
    summary = Summary(out=str(out), errors_file=str(err))
    if ckpt.done:
        _publish(out, err, ckpt)
        summary.lines, summary.ok, summary.errors, summary.already_done = ckpt.lines_done, ckpt.ok, ckpt.errors, True
        summary.turns, summary.stats = dict(ckpt.turns), dict(ckpt.stats)
        return summary
    writer = _Writer(part_path(out), part_path(err), ckpt_path, ckpt)
    bar = _progress(count_lines(src) if progress else None, ckpt.lines_done, progress)
    started = time.monotonic()
    handled = 0
    shown: str | None = None
    queue: deque[tuple[asyncio.Task[LineResult], int]] = deque()
    try:
        with open(src, "rb") as f:
            f.seek(ckpt.input_offset)
            lines = _lines(f, ckpt.lines_done + 1)
            last_commit = time.monotonic()
            exhausted = False
            while True:
                while not exhausted and len(queue) < options.window:
                    item = next(lines, None)
                    if item is None:
                        exhausted = True
                        break
                    line_no, raw, end = item
                    queue.append((asyncio.ensure_future(annotate_line(line_no, raw, scorer, options)), end))
                if not queue:
                    break
                task, end = queue[0]
                while not task.done():  # in input order: the deque is the reorder buffer
                    await asyncio.wait({task}, timeout=STATUS_INTERVAL_S)
                    if status is not None:
                        shown = _show_status(bar, status(), shown, progress)
                result = task.result()
                queue.popleft()
                writer.add(result, end)
                handled += 1
                bar.update(1)
                if result.err:
                    bar.set_postfix(errors=ckpt.errors + writer.errors, refresh=False)
                now = time.monotonic()
                if writer.pending >= options.batch_lines or now - last_commit >= options.batch_seconds:
                    writer.commit()
                    last_commit = now
                    if on_commit is not None:
                        on_commit(ckpt)
        writer.commit(done=True)
        _publish(out, err, ckpt)
        if on_commit is not None:
            on_commit(ckpt)
    except BaseException:
        for task, _ in queue:
            task.cancel()
        await asyncio.gather(*(t for t, _ in queue), return_exceptions=True)
        writer.commit()  # the lines completed in order before the failure are kept
        raise
    finally:
        writer.close()
        bar.close()
    summary.seconds = time.monotonic() - started
    summary.lines, summary.ok, summary.errors = ckpt.lines_done, ckpt.ok, ckpt.errors
    summary.turns, summary.stats = dict(ckpt.turns), dict(ckpt.stats)
    summary.this_run = handled
    summary.conversations_per_second = handled / summary.seconds if summary.seconds > 0 else 0.0
    return summary
