"""Client unit tests without a server: conversations, labels, RewardBench aggregation, retries, the annotate job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from client_fakes import TOO_LONG, TRAINED, FakeScorer, fake_scores, nemo_record, write_conversations

from client import conversations as cv
from client import rewardbench as rb
from client.annotate import AnnotateError, AnnotateOptions, Checkpoint, annotate_file, paths
from client.api import ModelMetadata, RequestRejected, RetryPolicy, RewardClient, ServerFailure, f32
from client.rank import order
from client.safe_paths import part_path

HERE = Path(__file__).parent


# ---- conversations and labels ----
def test_prefixes_cover_labelled_assistant_turns_only():
    record = {
        "system": "S",
        "mask": "User",
        "conversations": [
            {"from": "User", "value": "u0"},
            {"from": "Assistant", "value": "a0", "label": None},
            {"from": "User", "value": "u1"},
            {"from": "Assistant", "value": "a1", "label": "x"},
            {"from": "User", "value": "u2", "label": "ignored: user turn"},
            {"from": "Assistant", "value": "a2", "label": ""},
        ],
    }
    reqs = cv.scoring_requests(record)
    assert [i for i, _ in reqs] == [3, 5]
    assert reqs[0][1] == {
        "system": "S",
        "conversations": [
            {"from": "User", "value": "u0"},
            {"from": "Assistant", "value": "a0"},
            {"from": "User", "value": "u1"},
            {"from": "Assistant", "value": "a1"},
        ],
        "mask": "User",
    }
    assert len(reqs[1][1]["conversations"]) == 6 and "label" not in reqs[1][1]["conversations"][4]
    no_system = cv.prefix_conversation({"conversations": record["conversations"]}, 1)
    assert "system" not in no_system and no_system["mask"] == "User"


@pytest.mark.parametrize(
    "record, message",
    [
        ([1], "JSON object"),
        ({"messages": {}}, "'messages' must be an array"),
        ({"turns": []}, "needs 'messages'"),
        ({"conversations": {}}, "array"),
        ({"conversations": [{"from": "User"}]}, "conversations[0].value"),
        ({"conversations": [], "mask": 3}, "'mask'"),
    ],
)
def test_bad_records_say_why(record, message):
    with pytest.raises(cv.RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cv.scoring_requests(record)


def test_labels_raw_and_steerlm():
    scores = {"a": 0.349609375, "b": -0.357421875, "c": 2.5, "d": 3.5, "e": 7.25, "f": 0.1}
    assert cv.format_label(scores, ["a", "b", "f"]) == "a:0.349609375,b:-0.357421875,f:0.1"
    # clamp to [0, 4] then round half to even, as NeMo-Aligner does
    assert cv.format_label(scores, ["a", "b", "c", "d", "e"], steerlm=True) == "a:0,b:0,c:2,d:4,e:4"
    assert cv.parse_label("a:0.349609375,b:-1.0") == {"a": 0.349609375, "b": -1.0}
    with pytest.raises(cv.RecordError, match="no score for z"):
        cv.format_label(scores, ["z"])


def test_float32_values_keep_their_shortest_text():
    import numpy as np

    x = f32(np.float32(0.3))
    assert repr(x) == "0.3" and np.float32(x) == np.float32(0.3)
    assert f32(np.float32(2.984375)) == 2.984375


def test_metadata_from_config_parameters():
    config = {
        "parameters": {
            "attribute_names": {"string_value": json.dumps(["a", "b", "c"])},
            "trained_attributes": {"string_value": json.dumps(["b", "c"])},
            "scalar_weights": {"string_value": json.dumps([0, 0.5, -1])},
        }
    }
    meta = ModelMetadata.from_config(config)
    assert meta.attribute_names == ("a", "b", "c") and meta.trained_attributes == ("b", "c")
    assert meta.scalar_weights == (0.0, 0.5, -1.0)
    with pytest.raises(ServerFailure, match="attribute_names"):
        ModelMetadata.from_config({"parameters": {}})


def test_rank_order_is_by_reward_then_given_order():
    assert order([0.5, 2.0, -1.0, 2.0]) == [1, 3, 0, 2]


# ---- RewardBench aggregation, by hand ----
def test_rewardbench_sections_weighted_by_example_counts():
    outcomes = (
        [("alpacaeval-easy", True)] * 3 + [("alpacaeval-easy", False)]  # 3/4
        + [("mt-bench-easy", True), ("mt-bench-easy", False)]  # 1/2
        + [("llmbar-natural", False)] * 2  # 0/2
        + [("math-prm", True)] + [("hep-go", True), ("hep-go", False)]  # 1/1, 1/2
        + [("my-own-set", True)]  # no section
    )  # fmt: skip
    rep = rb.report(outcomes)
    chat = (0.75 * 100 + 0.5 * 28) / (100 + 28)
    reasoning = (1.0 * 984 + 0.5 * 164) / (984 + 164)
    assert rep["sections"] == pytest.approx({"Chat": chat, "Chat Hard": 0.0, "Reasoning": reasoning})
    assert "Safety" not in rep["sections"]
    assert rep["overall"] == pytest.approx((chat + 0.0 + reasoning) / 3)
    assert rep["subsets"]["alpacaeval-easy"] == {"accuracy": 0.75, "correct": 3, "total": 4, "section": "Chat"}
    assert rep["unmapped_subsets"] == ["my-own-set"]
    assert rep["pairs"] == 12 and rep["accuracy"] == pytest.approx(7 / 12)


def test_rewardbench_ties_are_wrong_and_table_is_complete():
    assert rb.is_correct(1.0, 0.5) and not rb.is_correct(0.5, 0.5) and not rb.is_correct(0.1, 0.5)
    assert sum(len(s) for s in rb.SECTIONS.values()) == len(rb.EXAMPLE_COUNTS) == 23
    assert set(rb.SECTION_OF) == set(rb.EXAMPLE_COUNTS)
    assert rb.overall_score({}) is None


# ---- retries ----
class _Status(Exception):
    def __init__(self, status: str, message: str = "m") -> None:
        super().__init__(message)
        self._s, self._m = status, message

    def status(self) -> str:
        return self._s

    def message(self) -> str:
        return self._m


def test_retries_unavailable_then_succeeds_and_never_retries_invalid_arg(monkeypatch):
    import tritonclient.utils

    monkeypatch.setattr(tritonclient.utils, "InferenceServerException", _Status)
    client = RewardClient(retry=RetryPolicy(attempts=3, base_delay=0.0))
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _Status("StatusCode.UNAVAILABLE")
        return "ok"

    async def rejected():
        calls.append(1)
        raise _Status("StatusCode.INVALID_ARGUMENT", "conversation is 9000 tokens")

    async def down():
        raise _Status("StatusCode.DEADLINE_EXCEEDED")

    async def run():
        assert await client._call("infer", flaky) == "ok" and len(calls) == 3
        calls.clear()
        with pytest.raises(RequestRejected, match="9000 tokens"):
            await client._call("infer", rejected)
        assert len(calls) == 1
        with pytest.raises(ServerFailure, match="after 3 tries") as e:
            await client._call("infer", down)
        assert e.value.status == "StatusCode.DEADLINE_EXCEEDED"

    asyncio.run(run())


def test_dead_stub_is_retried_for_max_wait_and_other_internal_errors_are_not(monkeypatch):
    import tritonclient.utils

    monkeypatch.setattr(tritonclient.utils, "InferenceServerException", _Status)
    client = RewardClient(retry=RetryPolicy(max_wait=0.5, base_delay=0.01, max_delay=0.05))
    calls: list[float] = []
    seen: list[str | None] = []

    async def healing():  # the supervisor restarts the server: INTERNAL "not healthy", then UNAVAILABLE, then fine
        calls.append(time.monotonic())
        seen.append(client.retry_status())
        if len(calls) == 1:
            raise _Status("StatusCode.INTERNAL", "Stub process 'preprocessing_0_0' is not healthy.")
        if len(calls) < 4:
            raise _Status("StatusCode.UNAVAILABLE", "failed to connect to all addresses")
        return "ok"

    async def bug():
        calls.append(time.monotonic())
        raise _Status("StatusCode.INTERNAL", "internal error: KeyError: 'x'")

    async def down():
        calls.append(time.monotonic())
        raise _Status("StatusCode.UNAVAILABLE", "failed to connect to all addresses")

    async def run():
        assert await client._call("infer", healing) == "ok" and len(calls) == 4
        assert seen[0] is None and client.retry_status() is None
        calls.clear()
        with pytest.raises(ServerFailure, match="KeyError"):
            await client._call("infer", bug)
        assert len(calls) == 1  # a server fault is not retried
        calls.clear()
        task = asyncio.ensure_future(client._call("infer", down))
        await asyncio.sleep(0.1)
        assert (client.retry_status() or "").startswith("server unavailable, retrying")
        with pytest.raises(ServerFailure, match="UNAVAILABLE"):
            await task
        assert 0.3 < calls[-1] - calls[0] <= 0.5 and len(calls) > 5  # kept trying for max_wait, then gave up

    asyncio.run(run())


# ---- the annotate job, with a fake scorer ----
OPTS = AnnotateOptions(attributes=TRAINED, window=8, batch_lines=3, batch_seconds=0.0)


def _annotate(src: Path, dst: Path, scorer=None, **kw):
    return asyncio.run(annotate_file(src, dst, scorer or FakeScorer(), kw.pop("options", OPTS), progress=False, **kw))


def test_annotate_labels_in_input_order_and_lists_bad_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    bad = write_conversations(src, 30, {4: "json", 11: "long", 17: "shape"})
    out, err, ckpt = paths(tmp_path / "out.jsonl")
    summary = _annotate(src, out)
    # line 11 is written with its over-long last turn marked; lines 4 and 17 cannot be read
    assert (summary.lines, summary.ok, summary.errors) == (30, 28, 2)
    assert summary.turns["failed"] == 1 and summary.turns["truncated"] == 0
    lines = out.read_text().splitlines()
    originals = [json.loads(x) for i, x in enumerate(src.read_text().splitlines(), 1) if i not in (4, 17)]
    assert len(lines) == 28
    scored = skipped = 0
    for raw, original in zip(lines, originals, strict=True):
        record = json.loads(raw)
        for i, (turn, before) in enumerate(zip(record["conversations"], original["conversations"], strict=True)):
            if before.get("label") is None:
                assert turn.get("label") == before.get("label")
                skipped += before["from"] == "Assistant"
                continue
            if TOO_LONG in before["value"]:
                assert turn["label"] is None and "tokens" in turn["label_error"]
                continue
            prefix = cv.prefix_conversation(original, i)
            assert cv.parse_label(turn["label"]) == {n: fake_scores(prefix)[n] for n in TRAINED}
            assert "label_error" not in turn and "label_truncated" not in turn
            scored += 1
    assert (summary.turns["scored"], summary.turns["skipped"]) == (scored, skipped)
    errors = [json.loads(x) for x in err.read_text().splitlines()]
    assert [e["line"] for e in errors] == bad
    assert "not valid JSON" in errors[0]["error"] and "tokens" in errors[1]["error"]
    assert errors[1]["turn"] == len(originals[9]["conversations"]) - 1 and "turn" not in errors[0]
    assert json.loads(ckpt.read_text())["done"] is True
    assert not part_path(out).exists() and not part_path(err).exists()
    again = _annotate(src, out)  # a rerun of a finished job changes nothing
    assert again.already_done and out.read_text().splitlines() == lines


POISON_LINES = [  # (raw line, what its error says)
    (b"[" * 5000, "nested too deeply"),
    (b'{"conversations": [], "n": ' + b"9" * 5000 + b"}", "4300 digits"),
    (b'{"conversations": [{"from": "User", "value": "\\ud800"}, {"from": "Assistant", "value": "a", "label": 1}]}',
     "U+D800"),
    (b"\xff\xfe not utf-8", "not valid UTF-8"),
]  # fmt: skip


def test_annotate_poison_lines_go_to_the_errors_file_and_the_job_goes_on(tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 6, {})
    lines = src.read_bytes().splitlines(keepends=True)
    for k, (raw, _) in enumerate(POISON_LINES):
        lines.insert(1 + 2 * k, raw + b"\n")
    src.write_bytes(b"".join(lines))
    out, err, _ = paths(tmp_path / "out.jsonl")
    summary = _annotate(src, out)
    assert (summary.lines, summary.ok, summary.errors) == (10, 6, 4)
    errors = [json.loads(x) for x in err.read_text().splitlines()]
    assert [e["line"] for e in errors] == [2, 4, 6, 8]
    for e, (_, needle) in zip(errors, POISON_LINES, strict=True):
        assert needle in e["error"], e


def test_annotate_resumes_after_a_failure_and_a_torn_write(tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 40, {7: "json", 25: "long"})
    whole = tmp_path / "whole.jsonl"
    _annotate(src, whole)

    out, err, ckpt = paths(tmp_path / "out.jsonl")
    with pytest.raises(RuntimeError, match="fake transport failure"):
        _annotate(src, out, FakeScorer(fail_after=30))
    state = Checkpoint.load(ckpt)
    assert state is not None and 0 < state.lines_done < 40 and not state.done
    with open(out, "ab") as f:  # as if killed during a write after the last checkpoint
        f.write(b'{"conversations": [{"from": "Us')
    with open(err, "ab") as f:
        f.write(b'{"line": 99')
    summary = _annotate(src, out)
    assert summary.this_run == 40 - state.lines_done
    assert out.read_bytes() == whole.read_bytes()
    assert err.read_bytes() == paths(whole)[1].read_bytes()


def test_annotate_refuses_foreign_output_and_changed_options(tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 5)
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(AnnotateError, match="--restart"):
        _annotate(src, out)
    assert out.read_text() == "precious\n"
    _annotate(src, out, restart=True)
    with pytest.raises(AnnotateError, match="options"):
        _annotate(src, out, options=AnnotateOptions(attributes=TRAINED, steerlm=True))


def test_annotate_survives_sigkill_of_the_process(tmp_path):
    """A real SIGKILL of a subprocess annotating with the fake scorer; the rerun equals an uninterrupted run."""
    src = tmp_path / "in.jsonl"
    write_conversations(src, 400, {50: "json", 321: "long"})
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    script = [sys.executable, str(HERE / "client_fakes.py"), str(src)]
    subprocess.run([*script, str(whole), "0", "1000"], check=True, timeout=120)
    proc = subprocess.Popen([*script, str(out), "0.02", "8"])
    deadline = time.monotonic() + 60
    partial = part_path(out)  # OUT is written beside, as OUT.part, until the job completes
    while time.monotonic() < deadline and (not partial.exists() or partial.read_bytes().count(b"\n") < 60):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    killed_at = partial.read_bytes().count(b"\n")
    assert 60 <= killed_at < 398, killed_at  # the kill landed mid-run
    subprocess.run([*script, str(out), "0", "64"], check=True, timeout=120)
    assert out.read_bytes() == whole.read_bytes()
    assert paths(out)[1].read_bytes() == paths(whole)[1].read_bytes()
    assert [json.loads(x)["line"] for x in paths(out)[1].read_text().splitlines()] == [50, 321]


def test_nemo_record_helper_marks_turns():
    rec = nemo_record(3, turns=2)
    assert [i for i, _ in cv.scoring_requests(rec)] == [1, 3]


# ---- evaluate / rank with a fake scorer; the CLI without a server ----
def test_pairs_string_and_message_sides(tmp_path):
    from client.evaluate import read_pairs

    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    lines = [
        {"prompt": "q", "chosen": "good", "rejected": "bad", "subset": "hep-go", "id": 7},
        {"chosen": msgs, "rejected": msgs, "subset": "donotanswer"},
        {"prompt": "q", "chosen": "good", "rejected": 3, "subset": "hep-go"},
        {"prompt": "q", "chosen": "good", "rejected": "bad"},  # a plain pair: subset "all"
        {"prompt": "q", "chosen": "good", "rejected": "bad", "subset": 3},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\nnot json\n")
    pairs, errors = read_pairs(path, system="S")
    assert pairs[0].chosen == cv.openai_prompt_and_response("q", "good", "S") and pairs[0].id == 7
    assert pairs[1].rejected == {"messages": msgs} and pairs[1].line == 2
    assert pairs[2].subset == "all" and pairs[2].line == 4
    assert [(e["line"], e["error"].split()[0]) for e in errors] == [(3, "'rejected'"), (5, "'subset'"), (7, "not")]


def test_score_pairs_and_rank_with_fake_scorer():
    from client.evaluate import evaluation_report, parse_pair, score_pairs
    from client.rank import rank_responses

    scorer = FakeScorer()
    pairs = [
        parse_pair(1, json.dumps({"prompt": "p", "chosen": "x", "rejected": "x", "subset": "hep-go"})),  # tie
        parse_pair(2, json.dumps({"prompt": "p", "chosen": "TOO-LONG", "rejected": "y", "subset": "hep-go"})),
    ]
    outcomes, errors = asyncio.run(score_pairs(pairs, scorer, concurrency=3))
    assert [o.correct for o in outcomes] == [False] and errors == [{"line": 2, "error": errors[0]["error"]}]
    assert errors[0]["error"].startswith("chosen: conversation is 9999 tokens")
    rep = evaluation_report(outcomes, errors)
    assert rep["sections"] == {"Reasoning": 0.0} and rep["errors"][0]["line"] == 2

    responses = [f"r{i}" for i in range(6)]
    ranked = asyncio.run(rank_responses("p", responses, scorer, concurrency=2))
    rewards = [r.score.reward for r in ranked]
    assert rewards == sorted(rewards, reverse=True) and sorted(r.index for r in ranked) == list(range(6))


@pytest.mark.parametrize("command", ["score", "annotate", "rank", "evaluate", "info"])
def test_cli_help_has_examples(command, capsys):
    from client.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--url" in out and "--concurrency" in out and "examples:" in out and "reward-client annotate" in out


def test_cli_reports_an_unreachable_server_with_exit_2(capsys):
    import socket

    from client.cli import main

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--url", f"127.0.0.1:{port}", "--retries", "2", "info"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "after 2 tries" in err
    assert main(["score", "neither json nor a file"]) == 2


# ---- annotate never destroys its input; NeMo-Aligner's and OpenAI's record forms ----
def _same_file_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    src = tmp_path / "in.jsonl"
    (tmp_path / "link.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    (tmp_path / "sub").mkdir()
    return [
        ([str(src), str(src)], "output"),
        ([str(src), str(src), "--restart"], "output"),
        ([str(src), str(tmp_path / "link.jsonl"), "--restart"], "output"),
        ([str(src), str(tmp_path / "hard.jsonl"), "--restart"], "output"),
        ([str(src), str(tmp_path / "sub" / ".." / "in.jsonl"), "--restart"], "output"),
        ([str(src), str(tmp_path / "o.jsonl"), "--errors", str(src), "--restart"], "errors file"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_annotate_refuses_to_write_over_its_input(tmp_path, capsys, case):
    """Same path, symlink, hard link, `..` detour, --errors on the input: refused before connecting, input intact,
    the message names the resolved path."""
    from client.cli import main

    src = tmp_path / "in.jsonl"
    write_conversations(src, 3)
    before = src.read_bytes()
    args, label = _same_file_cases(tmp_path)[case]
    assert main(["--url", "127.0.0.1:1", "annotate", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{label} " in err and "same file as input" in err and str(src.resolve()) in err, err
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.jsonl", "in.jsonl", "link.jsonl", "sub"]


def test_annotate_refuses_an_input_that_is_the_partial_output_and_a_missing_folder(tmp_path, capsys):
    from client.cli import main

    src = tmp_path / "o.jsonl.part"
    write_conversations(src, 3)
    with pytest.raises(AnnotateError, match="partial output .* is the same file as input"):
        _annotate(src, tmp_path / "o.jsonl")
    assert main(["--url", "127.0.0.1:1", "annotate", str(src), str(tmp_path / "nope" / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"folder {tmp_path / 'nope'} does not exist" in err and ".tmp" not in err, err


def test_annotate_restart_keeps_the_old_output_until_the_new_one_is_complete(tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 40)
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(RuntimeError, match="fake transport failure"):
        _annotate(src, out, FakeScorer(fail_after=20), restart=True)
    assert out.read_text() == "precious\n" and part_path(out).exists()
    _annotate(src, out)  # resumes the restarted run
    assert len(out.read_text().splitlines()) == 40 and not part_path(out).exists()


def test_annotate_input_changed_after_finishing_names_sizes_not_the_same_path_twice(tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 4)
    out = tmp_path / "out.jsonl"
    _annotate(src, out)
    size = src.stat().st_size
    with open(src, "a") as f:
        f.write(json.dumps(nemo_record(9)) + "\n")
    with pytest.raises(AnnotateError) as e:
        _annotate(src, out)
    message = str(e.value)
    assert message.count(str(src.resolve())) == 1 and f"{size} bytes" in message and "finished" in message


LENIENT = [  # NeMo-Aligner: every speaker but the mask is the assistant; any non-null label is scored
    {"mask": "Human", "conversations": [{"from": "Human", "value": "hi"}, {"from": "Bot", "value": "yo", "label": 0}]},
    {"mask": "user", "system": "S",
     "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a", "label": {"x": 1}},
                       {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2", "label": None}]},
    {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                  {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"},
                  {"role": "assistant", "content": "a2", "name": "bot"}], "name": "sample"},
]  # fmt: skip


def test_annotate_accepts_nemo_aligner_speakers_and_openai_messages(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in LENIENT))
    out = tmp_path / "out.jsonl"
    summary = _annotate(src, out)
    assert (summary.ok, summary.errors) == (3, 0)
    assert summary.turns == {"scored": 4, "skipped": 1, "failed": 0, "truncated": 0}
    records = [json.loads(x) for x in out.read_text().splitlines()]
    # requests go out in the canonical NeMo speakers the server templates; OpenAI prefixes keep role/content only
    expect = [
        (0, 1, {"conversations": [{"from": "User", "value": "hi"}, {"from": "Assistant", "value": "yo"}],
                "mask": "User"}),
        (1, 1, {"system": "S", "mask": "User",
                "conversations": [{"from": "User", "value": "q"}, {"from": "Assistant", "value": "a"}]}),
        (2, 2, {"messages": LENIENT[2]["messages"][:3]}),
        (2, 4, {"messages": [*LENIENT[2]["messages"][:4], {"role": "assistant", "content": "a2"}]}),
    ]  # fmt: skip
    for k, turn, prefix in expect:
        key = "messages" if "messages" in records[k] else "conversations"
        label = records[k][key][turn]["label"]
        assert cv.parse_label(label) == {n: fake_scores(prefix)[n] for n in TRAINED}
    assert records[1]["conversations"][3]["label"] is None and "label_error" not in records[1]["conversations"][3]
    assert records[2]["messages"][0] == LENIENT[2]["messages"][0] and records[2]["name"] == "sample"
    assert records[0]["conversations"][1]["from"] == "Bot"  # the record's own speakers are kept


def test_annotate_marks_truncated_labels_and_counts_nothing_scored(tmp_path, capsys):
    from client.api import Score
    from client.cli import annotate_report

    async def truncating(conversation):
        scores = fake_scores(conversation)
        return Score(scores=scores, reward=0.0, num_input_tokens=1, truncated=True, trained_attributes=TRAINED)

    src = tmp_path / "in.jsonl"
    write_conversations(src, 3)
    out = tmp_path / "out.jsonl"
    summary = _annotate(src, out, truncating)
    turns = [t for line in out.read_text().splitlines() for t in json.loads(line)["conversations"]]
    labelled = [t for t in turns if t.get("label") is not None]
    assert labelled and all(t["label_truncated"] is True for t in labelled)
    assert summary.turns["truncated"] == summary.turns["scored"] == len(labelled)
    text, status = annotate_report(summary, str(out))
    assert status == 0 and f"{len(labelled)} scored ({len(labelled)} of them truncated)" in text

    empty = tmp_path / "none.jsonl"
    empty.write_text(
        json.dumps({"conversations": [{"from": "User", "value": "q"}, {"from": "Assistant", "value": "a"}]}) + "\n"
    )
    summary = _annotate(empty, tmp_path / "none-out.jsonl")
    text, status = annotate_report(summary, "none-out.jsonl")
    assert status == 1 and "nothing was scored" in text and "0 scored" in text and "1 skipped" in text


def test_annotate_value_table_is_mean_min_max_of_the_written_labels(tmp_path):
    from client.cli import annotate_report

    src = tmp_path / "in.jsonl"
    write_conversations(src, 12)
    out = tmp_path / "out.jsonl"
    summary = _annotate(src, out, options=AnnotateOptions(attributes=TRAINED, steerlm=True, batch_lines=2))
    written = [cv.parse_label(t["label"]) for line in out.read_text().splitlines()
               for t in json.loads(line)["conversations"] if t.get("label") is not None]  # fmt: skip
    for name in TRAINED:
        values = [w[name] for w in written]
        count, total, low, high = summary.stats[name]
        assert (count, low, high) == (len(values), min(values), max(values))
        assert total / count == pytest.approx(sum(values) / len(values))
    text, _ = annotate_report(summary, str(out))
    assert "mean" in text and all(name in text for name in TRAINED)


# ---- with no server: say so at once, and stop cleanly on Ctrl-C ----
def _dead_port() -> int:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_says_it_is_waiting_within_a_second_of_the_first_failed_connection():
    port = _dead_port()
    said: list[tuple[float, str]] = []

    async def run() -> float:
        client = RewardClient(
            f"127.0.0.1:{port}", retry=RetryPolicy(max_wait=3.0), notify=lambda t: said.append((time.monotonic(), t))
        )
        started = time.monotonic()
        async with client:
            with pytest.raises(ServerFailure, match="UNAVAILABLE"):
                await client.metadata()
        return started

    started = asyncio.run(run())
    assert len(said) == 1, said
    when, text = said[0]
    assert when - started < 1.0, when - started
    assert text.startswith(f"waiting for 127.0.0.1:{port} (UNAVAILABLE") and "(Ctrl-C to stop)" in text


@pytest.mark.parametrize("command", ["score", "annotate", "rank", "evaluate", "info"])
def test_every_command_says_waiting_then_stops_on_ctrl_c_without_traceback(tmp_path, command):
    reward_client = Path(sys.executable).with_name("reward-client")
    src = tmp_path / "in.jsonl"
    write_conversations(src, 2)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    args = {
        "score": ['{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'],
        "annotate": [str(src), str(tmp_path / "out.jsonl"), "--no-progress"],
        "rank": ["p", "a", "b"],
        "evaluate": [str(pairs)],
        "info": [],
    }[command]
    port = _dead_port()
    proc = subprocess.Popen(
        [str(reward_client), "--url", f"127.0.0.1:{port}", "--retry-for", "120", command, *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the first thing the command says
    assert line.startswith(f"reward-client {command}: waiting for 127.0.0.1:{port}") and "Ctrl-C to stop" in line
    assert proc.poll() is None  # still waiting, as it said
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(30) == 130, rest
    assert "Traceback" not in rest and "interrupted" in rest, rest
