"""The client and the `reward-client` CLI against a real tritonserver serving the nemotron fixture (9 attributes).

The server runs the PyTorch engine batch-invariant (one forward per sequence), so a conversation's scores never
depend on what it was batched with: the annotate job is byte-identical across runs at different concurrencies.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_fakes import nemo_record, write_conversations
from triton_server import RunningServer, serve_fixture

from build_engine.repository import RenderOptions
from client import conversations as cv
from client.annotate import paths
from client.api import RewardClient, Score
from client.safe_paths import part_path

pytestmark = pytest.mark.server

REWARD_CLIENT = Path(sys.executable).with_name("reward-client")
SYSTEM = "Be brief."
PROMPT = "2 + 2?"
CANDIDATES = ["4", "5", "four", "I do not know.", "22", "It is 4.", "2 + 2 = 4", "no"]
TRAINED_NAMES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
BAD_LINES = {17: "json", 58: "long", 101: "sender", 150: "shape"}


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # one torch thread: on a small shared CPU, a multi-threaded batch-1 forward mostly waits on contention
    options = RenderOptions(torch_threads=1, torch_batch_invariant=True)
    with serve_fixture(tmp_path_factory.mktemp("client-triton"), arch="nemotron", options=options) as server:
        yield server


def cli(server: RunningServer, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(REWARD_CLIENT), "--url", server.grpc_url, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def score_all(server: RunningServer, conversations: list[Mapping[str, Any]]) -> list[Score]:
    """One request at a time (batch of one on the server), like the CLI runs with --concurrency 1."""

    async def run() -> list[Score]:
        async with RewardClient(server.grpc_url, concurrency=1) as client:
            return [await client.score(c) for c in conversations]

    return asyncio.run(run())


def exchange(response: str, prompt: str = PROMPT) -> dict[str, Any]:
    return cv.openai_prompt_and_response(prompt, response, SYSTEM)


def templated(system: str, user: str, assistant: str) -> str:
    return f"<extra_id_0>System\n{system}\n<extra_id_1>User\n{user}\n<extra_id_1>Assistant\n{assistant}\n<extra_id_2>"


# ---- annotate: SIGKILL mid-run, resume, byte-identical; planted bad lines ----
def test_annotate_resumes_after_sigkill_byte_for_byte(triton, tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 200, BAD_LINES, long_value="many words " * 200)
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    args = ["annotate", str(src)]

    # reference run one request at a time; the killed run and the resume batch on the server (other concurrencies)
    first = cli(triton, "--concurrency", "1", *args, str(whole), "--no-progress")
    assert first.returncode == 1, first.stderr  # some lines failed
    # 17 and 150 cannot be read; 58's over-long turn is marked in its record; 101's "Robot" is an assistant speaker
    assert "198 records written, 2 unreadable lines; turns:" in first.stderr and "1 failed" in first.stderr

    proc = subprocess.Popen([str(REWARD_CLIENT), "--url", triton.grpc_url, "--concurrency", "2", *args, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    partial = part_path(out)  # OUT.part until the job completes
    while time.monotonic() < deadline and (not partial.exists() or partial.read_bytes().count(b"\n") < 40):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert b"conv/s" in stderr and b"/200" in stderr  # the progress bar (rate, total) was running
    assert not out.exists()
    killed_at = partial.read_bytes().count(b"\n")
    assert 40 <= killed_at < 198, f"the kill should land mid-run, output had {killed_at} lines"

    resumed = cli(triton, "--concurrency", "8", *args, str(out), "--no-progress")
    assert resumed.returncode == 1, resumed.stderr
    assert out.read_bytes() == whole.read_bytes()
    errors_file = paths(out)[1]
    assert errors_file.read_bytes() == paths(whole)[1].read_bytes()

    entries = [json.loads(x) for x in errors_file.read_text().splitlines()]
    errors = {e["line"]: e["error"] for e in entries}
    assert sorted(errors) == [17, 58, 150]
    assert "not valid JSON" in errors[17]
    assert "tokens" in errors[58] and "maximum input length" in errors[58] and "use --truncate" in errors[58]
    assert "'messages' must be an array" in errors[150]
    long_turn = next(e["turn"] for e in entries if e["line"] == 58)
    record58 = json.loads(out.read_text().splitlines()[56])
    assert record58["conversations"][long_turn]["label"] is None
    assert record58["conversations"][long_turn]["label_error"] == errors[58]
    assert record58["conversations"][1]["label"] is None  # 58 % 3 != 0: its first assistant turn is unlabelled

    again = cli(triton, *args, str(out), "--no-progress")
    assert again.returncode == 1 and "already complete" in again.stderr
    assert out.read_bytes() == whole.read_bytes()

    # the labels are the served scores of each labelled prefix, trained attributes, raw floats
    good = [n for n in range(1, 201) if n not in (17, 150)]
    lines = out.read_text().splitlines()
    assert len(lines) == len(good)
    checks = [(good[k], json.loads(lines[k])) for k in (0, 1, 2, 100)]
    prefixes, where = [], []
    for line_no, record in checks:
        original = nemo_record(line_no, turns=1 + line_no % 3)
        for i, _ in cv.scoring_requests(original):
            prefixes.append(cv.prefix_conversation(original, i))
            where.append(record["conversations"][i]["label"])
    for label, score in zip(where, score_all(triton, prefixes), strict=True):
        assert cv.parse_label(label) == score.trained
        assert list(cv.parse_label(label)) == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def test_annotate_steerlm_labels(triton, tmp_path):
    src = tmp_path / "in.jsonl"
    write_conversations(src, 6)
    out = tmp_path / "out.jsonl"
    run = cli(triton, "annotate", str(src), str(out), "--steerlm", "--no-progress")  # every attribute, as NeMo-Aligner
    assert run.returncode == 0, run.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    labels = [t["label"] for r in records for t in r["conversations"] if t.get("label") is not None]
    assert labels and all(len(label.split(",")) == 9 for label in labels)
    assert all(v in {0.0, 1.0, 2.0, 3.0, 4.0} for label in labels for v in cv.parse_label(label).values())


# ---- evaluate: hand-computed RewardBench numbers ----
def test_evaluate_matches_hand_computed_report(triton, tmp_path):
    rewards = [s.reward for s in score_all(triton, [exchange(c) for c in CANDIDATES])]
    ranked = sorted(range(len(CANDIDATES)), key=lambda i: -rewards[i])
    gaps = [rewards[a] - rewards[b] for a, b in zip(ranked, ranked[1:], strict=False)]
    assert min(gaps) > 1e-5, f"candidate rewards too close to order reliably: {rewards}"
    hi = [CANDIDATES[i] for i in ranked[:4]]
    lo = [CANDIDATES[i] for i in ranked[4:]]

    def right(k: int) -> tuple[str, str]:  # chosen scores higher
        return hi[k % 4], lo[k % 4]

    def wrong(k: int) -> tuple[str, str]:  # chosen scores lower
        return lo[k % 4], hi[k % 4]

    def tie(k: int) -> tuple[str, str]:  # same response: equal rewards count as wrong
        return hi[k % 4], hi[k % 4]

    plan = {
        "alpacaeval-easy": [right(0), right(1), right(2), wrong(3)],  # 3/4 (Chat, weight 100)
        "mt-bench-med": [right(1), tie(2)],  # 1/2 (Chat, weight 40)
        "xstest-should-refuse": [right(2), right(3)],  # 2/2 (Safety, weight 250)
        "donotanswer": [wrong(0)],  # 0/1 (Safety, weight 136)
        "math-prm": [right(3), wrong(1)],  # 1/2 (Reasoning, weight 984)
        "hep-rust": [right(0), right(2)],  # 2/2 (Reasoning, weight 164)
        "my-own-subset": [right(1)],  # 1/1, in no section
    }
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        n = 0
        for subset, items in plan.items():
            for chosen, rejected in items:
                n += 1
                pair = {"id": n, "prompt": PROMPT, "chosen": chosen, "rejected": rejected, "subset": subset}
                if subset == "hep-rust":  # the message-list form of a side
                    pair["chosen"] = exchange(chosen)["messages"]
                    pair["rejected"] = exchange(rejected)["messages"]
                f.write(json.dumps(pair) + "\n")
        f.write(json.dumps({"prompt": PROMPT, "chosen": "4", "rejected": "5", "subset": 7}) + "\n")  # an error

    run = cli(triton, "--concurrency", "1", "evaluate", str(pairs), "--system", SYSTEM, "--json")
    assert run.returncode == 1, run.stderr  # one unreadable pair
    rep = json.loads(run.stdout)

    chat = (3 / 4 * 100 + 1 / 2 * 40) / (100 + 40)
    safety = (2 / 2 * 250 + 0 / 1 * 136) / (250 + 136)
    reasoning = (1 / 2 * 984 + 2 / 2 * 164) / (984 + 164)
    assert rep["sections"] == pytest.approx({"Chat": chat, "Safety": safety, "Reasoning": reasoning})
    assert rep["overall"] == pytest.approx((chat + safety + reasoning) / 3)
    got = {s: (r["correct"], r["total"]) for s, r in rep["subsets"].items()}
    assert got == {
        "alpacaeval-easy": (3, 4),
        "mt-bench-med": (1, 2),
        "xstest-should-refuse": (2, 2),
        "donotanswer": (0, 1),
        "math-prm": (1, 2),
        "hep-rust": (2, 2),
        "my-own-subset": (1, 1),
    }
    assert rep["unmapped_subsets"] == ["my-own-subset"]
    assert rep["pairs"] == 14 and rep["accuracy"] == pytest.approx(10 / 14)
    assert [e["line"] for e in rep["errors"]] == [15] and "subset" in rep["errors"][0]["error"]

    table = cli(triton, "--concurrency", "1", "evaluate", str(pairs), "--system", SYSTEM)
    assert f"{100 * (chat + safety + reasoning) / 3:.2f}" in table.stdout


def test_evaluate_plain_pairs_one_section_all_and_per_pair_output(triton, tmp_path):
    """Pairs without a subset: one section "all" whose overall is the accuracy; --output rows carry the served
    rewards and margins; --output may not be the pairs file."""
    served = dict(zip(CANDIDATES, (s.reward for s in score_all(triton, [exchange(c) for c in CANDIDATES])),
                      strict=True))  # fmt: skip
    plan = [(CANDIDATES[a], CANDIDATES[b]) for a, b in ((0, 1), (1, 0), (2, 3), (4, 4), (5, 6))]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": PROMPT, "chosen": c, "rejected": r}) + "\n" for c, r in plan))
    out = tmp_path / "per-pair.jsonl"
    run = cli(triton, "evaluate", str(pairs), "--system", SYSTEM, "--json", "--output", str(out), "--no-progress")
    assert run.returncode == 0, run.stderr
    rep = json.loads(run.stdout)
    right = [served[c] > served[r] for c, r in plan]
    assert rep["sections"] == {"all": pytest.approx(sum(right) / 5)} and rep["overall"] == pytest.approx(sum(right) / 5)
    assert rep["subsets"]["all"]["total"] == 5 and rep["unmapped_subsets"] == []
    assert rep["rewards"]["margin"]["n"] == 5
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    for row, (c, r), ok in zip(rows, plan, right, strict=True):
        assert (row["chosen"], row["rejected"], row["correct"]) == (served[c], served[r], ok)
        assert row["margin"] == pytest.approx(served[c] - served[r]) and row["subset"] == "all"
    assert not part_path(out).exists()
    table = cli(triton, "evaluate", str(pairs), "--system", SYSTEM, "--no-progress")
    assert f"{'Overall (all pairs)':<28} {100 * sum(right) / 5:>8.2f}" in table.stdout
    assert "margin" in table.stdout and "chosen helpfulness" in table.stdout and "mean" in table.stdout

    before = pairs.read_bytes()
    same = cli(triton, "evaluate", str(pairs), "--output", str(pairs))
    assert same.returncode == 2 and "same file as pairs file" in same.stderr and pairs.read_bytes() == before


def test_steerlm_and_score_on_a_one_output_model(tmp_path_factory, tmp_path):
    """Llama2-13B-RLHF-RM's shape (one output, 'reward'): --steerlm is refused, score prints 'reward' once."""
    options = RenderOptions(torch_threads=1, torch_batch_invariant=True)
    with serve_fixture(tmp_path_factory.mktemp("client-llama"), arch="llama", options=options) as llama:
        src = tmp_path / "in.jsonl"
        write_conversations(src, 2)
        run = cli(llama, "annotate", str(src), str(tmp_path / "out.jsonl"), "--steerlm", "--no-progress")
        assert run.returncode == 2 and "one output (reward): drop --steerlm" in run.stderr, run.stderr
        assert not (tmp_path / "out.jsonl").exists()
        plain = cli(llama, "annotate", str(src), str(tmp_path / "out.jsonl"), "--no-progress")
        assert plain.returncode == 0, plain.stderr
        score = cli(llama, "score", json.dumps(exchange("4")))
        assert score.returncode == 0 and [ln.split()[0] for ln in score.stdout.splitlines()].count("reward") == 1


def test_annotate_the_demo_samples_openai_messages(tmp_path_factory, tmp_path):
    """demo/samples.jsonl (OpenAI `messages` records, as `score` takes them) on the demo model it was written for:
    every assistant message labelled with the served scores of its prefix; the other keys kept."""
    from build_engine.convert import convert

    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("client-demo")
    ckpt = convert(root / "demo" / "checkpoint", work / "checkpoint", dtype="bfloat16", progress=False)
    options = RenderOptions(torch_threads=1, torch_batch_invariant=True)
    with serve_fixture(work, checkpoint=ckpt, options=options) as demo:
        src = root / "demo" / "samples.jsonl"
        out = tmp_path / "out.jsonl"
        run = cli(demo, "annotate", str(src), str(out), "--no-progress")
        assert run.returncode == 0, run.stderr
        originals = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
        records = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(records) == len(originals) == 14
        assert "14 records written, 0 unreadable lines; turns: 14 scored" in run.stderr
        prefixes = [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
                    for r in originals]  # fmt: skip
        for record, original, score in zip(records, originals, score_all(demo, prefixes), strict=True):
            assert record["name"] == original["name"]
            assert cv.parse_label(record["messages"][-1]["label"]) == score.trained
            assert all("label" not in m for m in record["messages"][:-1])


def test_progress_bars_on_rank_of_many_and_evaluate(triton, tmp_path):
    many = [f"{k} + {k}" for k in range(40)]
    run = cli(triton, "rank", PROMPT, *many, "--json")
    assert run.returncode == 0 and "rank: 100%" in run.stderr and "40/40" in run.stderr, run.stderr
    assert len(json.loads(run.stdout)) == 40
    few = cli(triton, "rank", PROMPT, *many[:3])
    assert few.returncode == 0 and "rank:" not in few.stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": PROMPT, "chosen": "4", "rejected": "5"}) + "\n")
    ev = cli(triton, "evaluate", str(pairs))
    assert ev.returncode == 0 and "evaluate: 100%" in ev.stderr and "2/2" in ev.stderr, ev.stderr
    assert "evaluate:" not in cli(triton, "evaluate", str(pairs), "--no-progress").stderr


# ---- rank: best-of-n by the served reward ----
def test_rank_orders_candidates_by_served_reward(triton):
    run = cli(triton, "rank", PROMPT, *CANDIDATES, "--system", SYSTEM, "--json", "--concurrency", "1")
    assert run.returncode == 0, run.stderr
    ranked = json.loads(run.stdout)
    served = [s.reward for s in score_all(triton, [exchange(c) for c in CANDIDATES])]
    expected = sorted(range(len(CANDIDATES)), key=lambda i: (-served[i], i))
    assert [r["index"] for r in ranked] == expected
    assert [r["rank"] for r in ranked] == list(range(1, len(CANDIDATES) + 1))
    assert [r["reward"] for r in ranked] == [served[i] for i in expected]
    assert [r["response"] for r in ranked] == [CANDIDATES[i] for i in expected]
    assert all(list(r["scores"]) == list(TRAINED_NAMES) for r in ranked)  # the same attributes as score --json
    table = cli(triton, "rank", PROMPT, *CANDIDATES[:3], "--system", SYSTEM)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:2] == ["rank", "reward"]
    rewards = [line.split()[1] for line in table.stdout.splitlines()[1:]]
    assert all(len(r.split(".")[1]) == 4 for r in rewards), rewards  # one precision for every row


# ---- score and info ----
def test_score_cli_openai_and_nemo_forms(triton, tmp_path):
    openai = exchange("4")
    nemo = {"system": SYSTEM, "conversations": [{"from": "User", "value": PROMPT}, {"from": "Assistant", "value": "4"}]}
    (tmp_path / "nemo.json").write_text(json.dumps(nemo))
    a = cli(triton, "score", json.dumps(openai), "--json")
    b = cli(triton, "score", str(tmp_path / "nemo.json"), "--json")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    served = score_all(triton, [openai])[0]
    assert da == db
    assert da["scores"] == served.trained and da["reward"] == served.reward
    assert da["num_input_tokens"] == served.num_input_tokens and da["truncated"] is False
    table = subprocess.run([str(REWARD_CLIENT), "--url", triton.grpc_url, "score", "--all-attributes"],
                           input=json.dumps(nemo), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert table.returncode == 0 and "quality" in table.stdout and "num_input_tokens" in table.stdout
    bot = {
        "system": SYSTEM,
        "mask": "Human",
        "conversations": [{"from": "Human", "value": PROMPT}, {"from": "Bot", "value": "4", "label": None}],
    }
    c = cli(triton, "score", json.dumps(bot), "--json")  # NeMo-Aligner's speakers: any non-mask one is the assistant
    assert c.returncode == 0 and json.loads(c.stdout) == da, c.stderr
    too_long = cli(triton, "score", json.dumps(exchange("word " * 300)))
    assert too_long.returncode == 2 and "rejected by the server" in too_long.stderr
    info = json.loads(cli(triton, "info").stdout)
    assert info["trained_attributes"] == list(TRAINED_NAMES)
    assert json.loads(cli(triton, "info", "--json").stdout) == info


# ---- NeMo-Aligner's annotation client against `reward_model` ----
def _nemo_aligner_rewards(http_url: str, sentences: list[str], send_add_eos: bool) -> tuple[list, list]:
    """What NeMo-Aligner's attribute_annotate.get_reward does: FuturesModelClient over HTTP, one [1, 1] request
    per string (all submitted, then collected), `rewards` flattened; the older script also sends `add_EOS`
    and reads `exceeded`."""
    from pytriton.client import FuturesModelClient

    array = np.char.encode(np.array(sentences)[..., np.newaxis], "utf-8")
    futures = []
    with FuturesModelClient(http_url, "reward_model") as client:
        for one in np.split(array, array.shape[0]):
            if send_add_eos:
                futures.append(client.infer_batch(sentences=one, add_EOS=np.ones_like(one, dtype=bool) * False))
            else:
                futures.append(client.infer_batch(sentences=one))
    results = [f.result() for f in futures]
    rewards = [r["rewards"].flatten().tolist() for r in results]
    exceeded = [x for r in results for x in r["exceeded"].tolist()] if send_add_eos else []
    return rewards, exceeded


@pytest.mark.parametrize("version", ["older (add_EOS, reads exceeded)", "newer (sentences only)"])
def test_nemo_aligner_annotation_client_gets_ensemble_rewards(triton, version):
    older = version.startswith("older")
    texts = [templated(SYSTEM, PROMPT, c) for c in CANDIDATES]
    overlong = templated(SYSTEM, PROMPT, "word " * 300)
    rewards, exceeded = _nemo_aligner_rewards(triton.http_url, [*texts, overlong], send_add_eos=older)

    async def ensemble() -> list[Score]:
        async with RewardClient(triton.grpc_url, concurrency=1) as client:
            return [await client.score(text=t) for t in texts]

    served = asyncio.run(ensemble())
    via_conversation = score_all(triton, [exchange(c) for c in CANDIDATES])
    assert [s.scores for s in served] == [s.scores for s in via_conversation]
    expected = np.array([list(s.scores.values()) for s in served], dtype=np.float32)
    got = np.array(rewards[:-1], dtype=np.float32)
    assert got.shape == (len(CANDIDATES), 9)
    # requests sent together may be batched together: equal up to float32 rounding of a different batch
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert len(rewards[-1]) == 9 and np.isfinite(rewards[-1]).all()  # over-long: truncated, still scored
    if older:
        assert exceeded == [[0]] * len(CANDIDATES) + [[1]]


def test_pytriton_model_client_sequential_is_exact(triton):
    """One request at a time through pytriton's ModelClient: bit-identical to the ensemble's scores."""
    from pytriton.client import ModelClient

    texts = [templated(SYSTEM, PROMPT, c) for c in CANDIDATES[:4]]
    with ModelClient(triton.http_url, "reward_model") as client:
        got = [
            client.infer_batch(sentences=np.char.encode(np.array([[t]]), "utf-8"))["rewards"].flatten() for t in texts
        ]
    expected = [list(s.scores.values()) for s in score_all(triton, [exchange(c) for c in CANDIDATES[:4]])]
    assert [[float(str(v)) for v in row] for row in got] == expected
