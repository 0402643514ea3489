"""`reward-client`: score, annotate, rank and evaluate with a reward model served by Triton (gRPC)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.api import DEFAULT_MODEL, DEFAULT_URL, RequestRejected, RetryPolicy, RewardClient, RewardClientError, Score
from client.conversations import RecordError, conversation_form, parse_json, prefix_conversation
from client.replicas import ReplicaPool, connect, split_urls
from client.weights import parse_option as parse_weights

EXIT_OK, EXIT_FAILED_LINES, EXIT_ERROR = 0, 1, 2
# how long a request rides out an unavailable / restarting server: long jobs wait, interactive commands answer soon
LONG_RETRY_S, SHORT_RETRY_S = 600.0, 30.0
RETRY_S = {"annotate": LONG_RETRY_S, "evaluate": LONG_RETRY_S}
RANK_PROGRESS_FROM = 32  # candidates: rank shows a progress bar from this many on

EPILOG = """\
examples:
  reward-client score '{"messages": [{"role": "user", "content": "What is 1+1?"},
                                     {"role": "assistant", "content": "2"}]}'
  reward-client score conversation.json --json          # OpenAI or NeMo form; '-' or no argument reads stdin
  reward-client --url triton:8001 --concurrency 64 annotate helpsteer.jsonl annotated.jsonl
  reward-client --url a:8001,b:8001 annotate helpsteer.jsonl annotated.jsonl   # two replicas
  reward-client annotate in.jsonl out.jsonl --steerlm   # SteerLM labels: clamped to [0, 4] and rounded
  reward-client rank "Write a haiku about rain." "Rain falls..." "I like turtles." --json
  reward-client evaluate rewardbench_pairs.jsonl --json > report.json
  reward-client info                                    # attribute names served by the model

annotate resumes by itself: rerun the same command after an interruption (even kill -9) and it continues
where it stopped; the output equals an uninterrupted run. While the server is down or restarting, requests are
retried (--retry-for, 10 minutes for annotate) and the progress line says "server unavailable, retrying". Lines
that cannot be read, and turns the server rejects, go to OUT.errors.jsonl (line, turn and reason) and the job
goes on; the exit status is 1 when any line or turn failed or nothing was scored, 2 on other errors, 130 when
interrupted. OUT is written as OUT.part and renamed when complete; no output path may be the input.
"""


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("server")
    g.add_argument(
        "--url",
        default=default(DEFAULT_URL),
        help=f"Triton gRPC endpoint host:port (default {DEFAULT_URL}); several replicas comma-separated "
        "(a:8001,b:8001): requests sharing a prompt go to one replica, new ones to the least busy, a replica that "
        "goes away is skipped",
    )
    g.add_argument("--model", default=default(DEFAULT_MODEL), help=f"Triton model name (default {DEFAULT_MODEL})")
    g.add_argument(
        "--concurrency", type=int, default=default(16), help="requests in flight at most, per replica (default 16)"
    )
    g.add_argument("--timeout", type=float, default=default(120.0), help="seconds per request (default 120)")
    g.add_argument(
        "--retry-for",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="keep retrying a request while the server is unavailable or restarting for this long (default "
        f"{LONG_RETRY_S:.0f} for annotate and evaluate, {SHORT_RETRY_S:.0f} for the others)",
    )
    g.add_argument("--retries", type=int, default=default(None), help="at most this many tries per request")
    g.add_argument(
        "--weights",
        default=default(None),
        help="scalar reward = these weights over the attributes instead of the checkpoint's: one per trained "
        "attribute ('0.3,0.74,0.46,0.47,-0.33'), one per model output, or 'name=w,...' / JSON",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reward-client",
        description="Score conversations with a NeMo reward model served by Triton Inference Server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=textwrap.fill(description, 100),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(p, suppress=True)
        return p

    p = add("score", "score one conversation", "Score one conversation (OpenAI or NeMo JSON form).")
    p.add_argument(
        "conversation", nargs="?", default="-", help="JSON text, a file holding it, or '-' for stdin (default)"
    )
    p.add_argument("--text", help="score this already templated text instead of a conversation")
    p.add_argument("--truncate", action="store_true", help="drop the oldest turns when the input is too long")
    p.add_argument("--all-attributes", action="store_true", help="show untrained attributes too")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "annotate",
        "label the assistant turns of a NeMo or OpenAI jsonl file (resumable)",
        "Score every assistant turn that has a non-null 'label' (NeMo form: every speaker but the mask is the "
        "assistant) and every assistant message (OpenAI 'messages' form), each on the conversation up to that turn, "
        "and write the labels as name:value strings into the turn's 'label'. A turn the server rejects gets "
        "label null and 'label_error'; labels of a --truncate'd conversation get 'label_truncated': true. "
        "Resumable; output in input order; the input is never written.",
    )
    p.add_argument("input", help="NeMo or OpenAI conversation jsonl")
    p.add_argument("output", help="annotated jsonl (a checkpoint OUTPUT.ckpt is kept next to it)")
    p.add_argument("--errors", help="errors file (default OUTPUT.errors.jsonl)")
    p.add_argument(
        "--steerlm",
        action="store_true",
        help="NeMo-Aligner's SteerLM labels: every attribute, clamped to [0, 4] and rounded",
    )
    p.add_argument(
        "--all-attributes",
        action="store_true",
        help="label every attribute the model outputs (default: the trained ones)",
    )
    p.add_argument("--truncate", action="store_true", help="drop the oldest turns of prefixes that are too long")
    p.add_argument("--restart", action="store_true", help="ignore the checkpoint and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(
        "rank",
        "sort candidate responses by reward (best-of-n)",
        "Score each response as the assistant's reply to PROMPT; print them best first.",
    )
    p.add_argument("prompt", help="the user turn")
    p.add_argument("responses", nargs="*", help="candidate responses")
    p.add_argument("--responses-file", help='jsonl: one candidate a line, a JSON string or {"response": ...}')
    p.add_argument("--system", help="system prompt (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help=f"no progress bar (shown from {RANK_PROGRESS_FROM} on)")
    p.add_argument("--all-attributes", action="store_true", help="--json: every attribute, untrained ones too")

    p = add(
        "evaluate",
        "accuracy of (chosen, rejected) preference pairs (RewardBench or plain)",
        "Accuracy per subset and per RewardBench section (Chat, Chat Hard, Safety, Reasoning); overall = "
        "mean of sections. Pairs without a subset form one section 'all' whose overall is the accuracy over all "
        "pairs. A pair is right only if reward(chosen) > reward(rejected). A RewardBench 2 file "
        "(chosen/rejected lists) gets best-of-N accuracy per subset, Ties by its own rule, overall = mean of "
        "subsets; resumable (rerun to continue).",
    )
    p.add_argument("pairs", help="jsonl with prompt, chosen, rejected and optionally subset")
    p.add_argument("--system", help="system prompt for string chosen/rejected (default: the model's)")
    p.add_argument("--truncate", action="store_true", help="drop the oldest turns of inputs that are too long")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--output", help="write one JSON line per pair (line, id, subset, chosen, rejected, margin, correct or error)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # RewardBench 2 (client/evaluate_v2.py)
    p.add_argument(
        "--format",
        choices=["auto", "pairs", "rb2"],
        default="auto",
        help="pairs (RewardBench) or rb2 (RewardBench 2 rows: chosen/rejected lists); auto: by the first row",
    )
    p.add_argument("--scores", help="rb2: per-row scores file, what resumes a run (default PAIRS.rb2-scores.jsonl)")
    p.add_argument("--restart", action="store_true", help="rb2: ignore the scores file and start over")

    p = add("info", "show what the served model outputs", "Attribute names, trained attributes, scalar weights (JSON).")
    p.add_argument("--json", action="store_true", help="print JSON (what info always prints)")
    return parser


def _client(args: argparse.Namespace) -> RewardClient | ReplicaPool:
    """A RewardClient for one --url, a ReplicaPool (client.replicas) for several."""
    if args.concurrency < 1:
        raise SystemExit("reward-client: --concurrency must be at least 1")
    try:
        urls = split_urls(args.url)
    except ValueError as e:
        raise SystemExit(f"reward-client: --url: {e}") from None
    return connect(
        urls,
        model=args.model,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retry=RetryPolicy(
            max_wait=args.retry_for if args.retry_for is not None else RETRY_S.get(args.command, SHORT_RETRY_S),
            attempts=None if args.retries is None else max(1, args.retries),
        ),
        notify=lambda text: print(f"reward-client {args.command}: {text}", file=sys.stderr, flush=True),
        weights=None if args.weights is None else parse_weights(args.weights),
    )


def read_conversation(arg: str) -> str:
    """The conversation argument (JSON text, a path, or '-') → validated JSON text."""
    if arg == "-":
        text = sys.stdin.read()
    elif arg.lstrip().startswith("{"):
        text = arg
    elif Path(arg).is_file():
        text = Path(arg).read_text(encoding="utf-8")
    else:
        raise RecordError(f"{arg!r} is neither JSON nor a readable file")
    data = parse_json(text)
    if conversation_form(data) == "nemo" and isinstance(data.get("conversations"), list) and data["conversations"]:
        # NeMo-Aligner's speakers (any non-mask speaker is the assistant) in the canonical form the server templates
        return json.dumps(prefix_conversation(data, len(data["conversations"]) - 1), ensure_ascii=False)
    return text


def score_table(score: Score, all_attributes: bool) -> str:
    values = score.scores if all_attributes else score.trained
    width = max([len(n) for n in values] + [len("num_input_tokens")])
    lines = [f"{n:<{width}}  {v:>12.6g}" for n, v in values.items()]
    if list(values) != ["reward"]:  # a one-output model's only attribute is the reward itself
        lines.append(f"{'reward':<{width}}  {score.reward:>12.6g}")
    lines.append(f"{'num_input_tokens':<{width}}  {score.num_input_tokens:>12}")
    lines.append(f"{'truncated':<{width}}  {'yes' if score.truncated else 'no':>12}")
    return "\n".join(lines)


async def cmd_score(args: argparse.Namespace) -> int:
    conversation = None if args.text is not None else read_conversation(args.conversation)
    async with _client(args) as client:
        score = await client.score(conversation, text=args.text, truncate=args.truncate)
    if args.json:
        d = score.to_dict()
        if not args.all_attributes:
            d["scores"] = score.trained
        print(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        print(score_table(score, args.all_attributes))
    return EXIT_OK


def annotate_report(summary: Any, output: str) -> tuple[str, int]:
    """The end-of-run text (counts, then the value table) and the exit status of an annotate job."""
    from client.summary import stats_table

    t = summary.turns
    head = "already complete" if summary.already_done else f"{summary.this_run} lines this run"
    lines = [
        f"{output}: {head}: {summary.ok} records written, {summary.errors} unreadable lines; turns: "
        f"{t.get('scored', 0)} scored ({t.get('truncated', 0)} of them truncated), {t.get('failed', 0)} failed, "
        f"{t.get('skipped', 0)} skipped (null label)"
    ]
    if not summary.already_done:
        lines[0] += f" in {summary.seconds:.1f}s ({summary.conversations_per_second:.1f} conv/s)"
    table = stats_table(summary.stats, "label")
    if table:
        lines.append(table)
    status = EXIT_OK
    if t.get("failed", 0) or summary.errors:
        lines.append(f"failed lines and turns are listed in {summary.errors_file}")
        status = EXIT_FAILED_LINES
    if not t.get("scored", 0):
        lines.append(
            "warning: nothing was scored: no assistant turn with a non-null 'label' (NeMo form) or assistant message "
            "(OpenAI form) was found or could be scored"
        )
        status = EXIT_FAILED_LINES
    if summary.already_done:
        lines.append("use --restart to redo it")
    return "\n".join(lines), status


async def cmd_annotate(args: argparse.Namespace) -> int:
    from client.annotate import AnnotateError, AnnotateOptions, annotate_file, check_paths, paths

    check_paths(Path(args.input), *paths(args.output, args.errors))  # before connecting
    async with _client(args) as client:
        meta = await client.metadata()
        if args.steerlm and len(meta.attribute_names) < 2:
            raise AnnotateError(
                f"--steerlm writes SteerLM attribute labels (helpfulness:3,...), but model '{meta.model}' has one "
                f"output ({', '.join(meta.attribute_names)}): drop --steerlm to write its raw reward"
            )
        # SteerLM labels name every output, as NeMo-Aligner writes them
        names = meta.attribute_names if args.all_attributes or args.steerlm else meta.trained_attributes
        window = max(64, 8 * args.concurrency * len(split_urls(args.url)))
        options = AnnotateOptions(
            attributes=tuple(names), steerlm=args.steerlm, truncate=args.truncate, window=window, batch_lines=window
        )
        summary = await annotate_file(
            args.input,
            args.output,
            lambda c: client.score(c, truncate=args.truncate),
            options,
            errors_path=args.errors,
            restart=args.restart,
            progress=not args.no_progress,
            status=client.retry_status,
        )
    text, status = annotate_report(summary, args.output)
    print(text, file=sys.stderr)
    return status


def _responses(args: argparse.Namespace) -> list[str]:
    out = list(args.responses)
    if args.responses_file:
        with open(args.responses_file, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                value = parse_json(line)
                if isinstance(value, dict):
                    value = value.get("response")
                if not isinstance(value, str):
                    raise RecordError(f'{args.responses_file}:{n}: expected a JSON string or {{"response": str}}')
                out.append(value)
    if not out:
        raise RecordError("no candidate responses (give them as arguments or with --responses-file)")
    return out


async def cmd_rank(args: argparse.Namespace) -> int:
    from client.rank import rank_responses

    responses = _responses(args)
    async with _client(args) as client:
        await client.metadata()  # connect (and say so while waiting) before the progress bar starts
        show = not args.no_progress and len(responses) >= RANK_PROGRESS_FROM
        with _bar("rank", len(responses), show, "resp") as bar:
            ranked = await rank_responses(
                args.prompt,
                responses,
                lambda c: client.score(c),
                concurrency=args.concurrency,
                system=args.system,
                progress=lambda: bar.update(1),
            )
    if args.json:
        rows = [r.to_dict() for r in ranked]
        if not args.all_attributes:  # the same attributes as `score --json`
            for row, r in zip(rows, ranked, strict=True):
                row["scores"] = r.score.trained
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(f"{'rank':>4} {'reward':>12} {'#':>4}  response")
        for r in ranked:
            text = " ".join(r.response.split())
            text = text if len(text) <= 70 else text[:67] + "..."
            print(f"{r.rank:>4} {r.score.reward:>12.4f} {r.index:>4}  {text}")
    return EXIT_OK


def _bar(desc: str, total: int, enabled: bool, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


async def cmd_evaluate(args: argparse.Namespace) -> int:
    from client import evaluate_v2

    if args.format == "rb2" or (args.format == "auto" and evaluate_v2.looks_like_v2(args.pairs)):
        return await evaluate_v2.run(args, _client(args))
    from client.evaluate import dumps, evaluation_report, format_report, pair_rows, read_pairs, score_pairs
    from client.safe_paths import OutputPathError, check_outputs, part_path, write_text_beside

    if args.output:
        out = Path(args.output)
        try:
            check_outputs({"pairs file": Path(args.pairs)}, {"output": out, "partial output": part_path(out)})
        except OutputPathError as e:
            raise RecordError(str(e)) from None
    pairs, errors = read_pairs(args.pairs, args.system)
    async with _client(args) as client:
        if pairs:
            await client.metadata()  # connect (and say so while waiting) before the progress bar starts
        with _bar("evaluate", 2 * len(pairs), not args.no_progress and bool(pairs), "resp") as bar:
            outcomes, failed = await score_pairs(
                pairs,
                lambda c: client.score(c, truncate=args.truncate),
                concurrency=args.concurrency,
                progress=lambda: bar.update(1),
            )
    rep = evaluation_report(outcomes, errors + failed)
    if args.output:
        rows = pair_rows(outcomes, errors + failed)
        write_text_beside(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(dumps(rep) if args.json else format_report(rep))
    if not rep["pairs"]:
        print("reward-client evaluate: warning: no pair was scored", file=sys.stderr)
        return EXIT_FAILED_LINES
    return EXIT_FAILED_LINES if rep["errors"] else EXIT_OK


async def cmd_info(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        meta = await client.metadata()
    print(
        json.dumps(
            {
                "model": meta.model,
                "attribute_names": list(meta.attribute_names),
                "trained_attributes": list(meta.trained_attributes),
                "scalar_weights": list(meta.scalar_weights),
            },
            indent=2,
        )
    )
    return EXIT_OK


COMMANDS = {"score": cmd_score, "annotate": cmd_annotate, "rank": cmd_rank, "evaluate": cmd_evaluate, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    from client.annotate import AnnotateError, cli_wording

    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except (RewardClientError, RecordError, AnnotateError, OSError) as e:
        kind = "rejected by the server" if isinstance(e, RequestRejected) else "error"
        print(f"reward-client {args.command}: {kind}: {cli_wording(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"reward-client {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "read_conversation", "score_table"]
