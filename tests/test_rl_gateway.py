"""The RL protocols of the gateway against a real tritonserver: OpenRLHF's `/get_reward`, vLLM's `/pooling`,
per-request weights (gateway and `reward-client --weights`).

One tritonserver (Nemotron fixture, 9 outputs / 5 trained, batch-invariant PyTorch engine) and `reward-openai`
subprocesses on free ports. Requests are sent as OpenRLHF and vLLM clients send them: a plain HTTP POST of JSON.
Oracle: the ensemble itself over gRPC (`RewardClient`) on the same conversation as OpenAI messages, or on the raw
templated text (`text` input) — the gateway must return its float32 values exactly.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_openai_api import NEMOTRON_NAME, Gateway, _options, run_gateway
from triton_server import RunningServer, make_client, serve_fixture

from client.api import ModelMetadata, RequestRejected, RewardClient, Score, f32
from gateway import chat_formats as cf

pytestmark = pytest.mark.server
REWARD_CLIENT = Path(sys.executable).with_name("reward-client")
API_KEY = "sk-rl-41c2"

# short conversations: the fixture's maximum input length is 128 tokens
CONVERSATIONS: list[list[dict[str, str]]] = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    [
        {"role": "system", "content": "You answer maths questions."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."},
    ],
]
# how each policy's decoded sequence looks around the conversation (BOS, left padding, EOS, right padding)
AROUND = {
    "chatml": ("<|endoftext|><|endoftext|>", "<|endoftext|><|endoftext|>"),
    "llama3": ("", "<|end_of_text|><|finetune_right_pad_id|>"),
    "llama2": ("", "</s>"),
    "gemma": ("<pad>", "<eos><pad>"),
    "steerlm": ("", ""),
}
MANY_TURNS = [{"role": "system", "content": "S"}]
for _i in range(40):  # over the fixture's 128 tokens, but each exchange is short: truncation can drop old ones
    MANY_TURNS += [
        {"role": "user", "content": f"question {_i} about the model"},
        {"role": "assistant", "content": f"answer {_i} is helpful"},
    ]
LONG = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": " ".join(f"word{i}" for i in range(200))},
    {"role": "assistant", "content": "ok"},
]


def read_back(fmt: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation a policy's text holds: Gemma's template puts the system prompt into the first user turn."""
    if fmt != "gemma" or messages[0]["role"] != "system":
        return messages
    return [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}, *messages[2:]]


def policy_query(messages: list[dict[str, str]], fmt: str) -> str:
    left, right = AROUND[fmt]
    return left + cf.render(messages, fmt) + right  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def nemotron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve_fixture(tmp_path_factory.mktemp("rl-nemotron"), arch="nemotron", options=_options()) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(nemotron: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("rl-gw") / "reward-openai.log"
    with run_gateway(nemotron.grpc_url, log, "--served-model-name", NEMOTRON_NAME, "--max-rows", "8") as gw:
        yield gw


@pytest.fixture(scope="module")
def flag_gateway(nemotron: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Start options instead of request fields: what an OpenRLHF user (who cannot add fields) would set."""
    log = tmp_path_factory.mktemp("rl-gw-flag") / "reward-openai.log"
    args = ("--on-error", "flag", "--invalid-reward", "-5", "--chat-format", "chatml", "--weights", "1,0,0,0,-1",
            "--scores-as", "reward")  # fmt: skip
    with run_gateway(nemotron.grpc_url, log, *args, env={"REWARD_API_KEY": API_KEY}) as gw:
        yield gw


def oracle(
    server: RunningServer, items: list[Any], text: bool = False, truncate: bool = False
) -> tuple[list[Score], ModelMetadata]:
    """The ensemble's own scores of conversations (OpenAI messages) or of templated texts."""

    async def run() -> tuple[list[Score], ModelMetadata]:
        async with RewardClient(server.grpc_url, concurrency=4) as c:
            scores = [await (c.score(text=x) if text else c.score({"messages": x}, truncate=truncate)) for x in items]
            return scores, await c.metadata()

    return asyncio.run(run())


def post(gw: Gateway, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """A plain HTTP POST of JSON, as OpenRLHF's trainer (requests.post(url, json=...)) sends it."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{gw.root}{path}", content=content, headers=headers, timeout=120)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return dict(body["error"])


def trained(score: Score) -> list[float]:
    return list(score.trained.values())


# ---- /get_reward ----------------------------------------------------------------------------------------------
# Gemma has no system turn, so its conversations get the model's default system prompt, which alone fills the
# fixture's 128 tokens: it has its own test below
WITH_SYSTEM = tuple(f for f in cf.FORMATS if f != "gemma")


@pytest.mark.parametrize("fmt", WITH_SYSTEM)
def test_get_reward_in_each_chat_format_equals_the_ensemble(
    nemotron: RunningServer, gateway: Gateway, fmt: str
) -> None:
    queries = [policy_query(m, fmt) for m in CONVERSATIONS]
    r = post(gateway, "/get_reward", {"query": queries, "prompts": ["p"] * len(queries), "labels": [None] * 3})
    assert r.status_code == 200, r.text
    body = r.json()
    expected, meta = oracle(nemotron, [read_back(fmt, m) for m in CONVERSATIONS])
    assert body["attributes"] == list(meta.trained_attributes) == ["helpfulness", "correctness", "coherence",
                                                                   "complexity", "verbosity"]  # fmt: skip
    assert body["rewards"] == [s.reward for s in expected]  # float32 values, bit for bit
    assert body["scores"] == body["attribute_scores"] == [trained(s) for s in expected]
    assert body["valid"] == [True] * 3 and body["errors"] == []
    assert body["extra_logs"] == {"invalid_query": [0.0] * 3}
    assert len(set(body["rewards"])) == 3  # three different conversations, three different rewards
    if fmt == "steerlm":  # this model's own template: also the ensemble's score of the very same text
        texts, _ = oracle(nemotron, queries, text=True)
        assert body["rewards"] == [s.reward for s in texts]


def test_gemma_reads_back_the_conversation_its_template_wrote(nemotron: RunningServer, gateway: Gateway) -> None:
    """Gemma folds the system prompt into the first user turn; read back, the reward model adds its default system
    prompt, which is over the fixture's 128 tokens: the gateway's per-row message must be the ensemble's own for the
    read-back conversation (the same token count), row for row."""
    queries = [policy_query(m, "gemma") for m in CONVERSATIONS]
    body = post(gateway, "/get_reward", {"query": queries, "on_error": "flag"}).json()
    assert body["valid"] == [False] * 3
    for row, messages in zip(body["errors"], CONVERSATIONS, strict=True):
        with pytest.raises(RequestRejected) as e:
            oracle(nemotron, [read_back("gemma", messages)])
        assert row["code"] == "context_length_exceeded" and row["message"] == str(e.value)


def test_mixed_formats_in_one_batch_are_detected_per_query(nemotron: RunningServer, gateway: Gateway) -> None:
    queries = [policy_query(CONVERSATIONS[i % 3], fmt) for i, fmt in enumerate(WITH_SYSTEM)]
    r = post(gateway, "/get_reward", {"query": queries})
    expected, _ = oracle(nemotron, [CONVERSATIONS[i % 3] for i in range(len(WITH_SYSTEM))])
    assert r.status_code == 200 and r.json()["rewards"] == [s.reward for s in expected], r.text


def test_rows_are_scored_concurrently(nemotron: RunningServer, gateway: Gateway) -> None:
    """Sent one after the other, 8 rows would take 8 engine executions; in flight together, Triton batches them."""
    client = make_client(nemotron)

    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("tensorrt_llm", as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    queries = [policy_query(CONVERSATIONS[i % 3], "chatml") for i in range(8)]
    before = counts()
    assert post(gateway, "/get_reward", {"query": queries}).status_code == 200
    after = counts()
    assert after[0] - before[0] == 8 and after[1] - before[1] < 8, (before, after)


def test_forced_chat_format_refuses_other_formats(gateway: Gateway) -> None:
    queries = [policy_query(CONVERSATIONS[0], "chatml"), policy_query(CONVERSATIONS[0], "llama3")]
    assert post(gateway, "/get_reward", {"query": queries[:1], "chat_format": "chatml"}).status_code == 200
    error = error_of(post(gateway, "/get_reward", {"query": queries, "chat_format": "chatml"}), 400)
    assert error["param"] == "query[1]" and error["code"] == "unparseable_query"
    assert "'<|im_start|>'" in error["message"] and error["rows"][0]["index"] == 1


def test_malformed_bodies_are_answered_as_documented(gateway: Gateway) -> None:
    good = policy_query(CONVERSATIONS[0], "chatml")
    cases: list[tuple[Any, str, str | None, str | None]] = [
        (b"{not json", "not valid JSON", None, None),
        ([good], "must be a JSON object", None, None),
        ({"prompts": ["x"]}, "query: Field required", "query", None),
        ({"query": good}, "query: Input should be a valid list", "query", None),
        ({"query": [good, 7]}, "query[1]: Input should be a valid string", "query", None),
        ({"query": [good] * 9}, "query has 9 rows, more than this gateway's limit of 8", "query", "too_many_rows"),
        ({"query": [good], "on_error": "ignore"}, "on_error", "on_error", None),
        ({"query": [good], "chat_format": "phi3"}, "chat_format", "chat_format", None),
        ({"query": [good], "scores_as": "both"}, "scores_as", "scores_as", None),
    ]
    for body, fragment, param, code in cases:
        error = error_of(post(gateway, "/get_reward", body), 400)
        assert fragment in error["message"] and error["param"] == param and error["code"] == code, (body, error)
        assert error["type"] == "invalid_request_error"
    assert post(gateway, "/get_reward", {"query": []}).json()["rewards"] == []


def test_bad_rows_fail_the_batch_naming_every_row(gateway: Gateway) -> None:
    good = policy_query(CONVERSATIONS[0], "llama3")
    queries = [good, "plain text, no template", good, policy_query(LONG, "llama3"), "<|im_start|>user\nhi<|im_end|>"]
    error = error_of(post(gateway, "/get_reward", {"query": queries}), 400)
    assert error["param"] == "query[1]" and error["code"] == "unparseable_query"
    assert error["message"].startswith("3 of 5 queries cannot be scored; query[1]: no known chat format")
    rows = {row["index"]: row for row in error["rows"]}
    assert sorted(rows) == [1, 3, 4]
    assert rows[3]["code"] == "context_length_exceeded" and "128 tokens" in rows[3]["message"]
    assert rows[4]["code"] == "unparseable_query" and "no assistant turn" in rows[4]["message"]


def test_flag_mode_gives_per_row_flags(nemotron: RunningServer, gateway: Gateway) -> None:
    good = [policy_query(m, "chatml") for m in CONVERSATIONS[:2]]
    queries = [good[0], "not a conversation", policy_query(LONG, "chatml"), good[1]]
    r = post(gateway, "/get_reward", {"query": queries, "on_error": "flag", "invalid_reward": -10})
    assert r.status_code == 200, r.text
    body = r.json()
    expected, _ = oracle(nemotron, CONVERSATIONS[:2])
    assert body["rewards"] == [expected[0].reward, -10.0, -10.0, expected[1].reward]
    assert body["scores"] == [trained(expected[0]), None, None, trained(expected[1])]
    assert body["valid"] == [True, False, False, True]
    assert body["extra_logs"]["invalid_query"] == [0.0, 1.0, 1.0, 0.0]
    assert [(e["index"], e["code"]) for e in body["errors"]] == [
        (1, "unparseable_query"),
        (2, "context_length_exceeded"),
    ]
    # truncate: an over-long row drops its oldest exchanges, as the ensemble's own truncate does; a row whose last
    # exchange alone is too long (LONG) stays flagged
    queries = [policy_query(MANY_TURNS, "llama3"), policy_query(LONG, "llama3")]
    assert post(gateway, "/get_reward", {"query": queries[:1]}).json()["error"]["code"] == "context_length_exceeded"
    body = post(gateway, "/get_reward", {"query": queries, "on_error": "flag", "truncate": True}).json()
    (cut,), _ = oracle(nemotron, [MANY_TURNS], truncate=True)
    assert cut.truncated and body["valid"] == [True, False]
    assert body["rewards"][0] == cut.reward and body["scores"][0] == trained(cut)


def test_start_options_flag_force_format_weights_and_key(nemotron: RunningServer, flag_gateway: Gateway) -> None:
    queries = [policy_query(CONVERSATIONS[0], "chatml"), policy_query(CONVERSATIONS[0], "llama3")]
    error = error_of(post(flag_gateway, "/get_reward", {"query": queries}), 401)  # started with a key
    assert error["code"] == "invalid_api_key"
    error_of(post(flag_gateway, "/pooling", {"input": "x"}), 401)
    r = post(flag_gateway, "/get_reward", {"query": queries}, {"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    body = r.json()
    (expected,), _ = oracle(nemotron, CONVERSATIONS[:1])
    # --weights 1,0,0,0,-1: helpfulness - verbosity, in float32
    want = f32(np.float32(expected.scores["helpfulness"]) - np.float32(expected.scores["verbosity"]))
    assert body["rewards"] == [want, -5.0] and body["valid"] == [True, False]  # llama3 refused: --chat-format chatml
    assert "chatml" in body["errors"][0]["message"]
    assert body["scores"] == [want, -5.0]  # --scores-as reward: OpenRLHF's serve_rm shape
    assert body["attribute_scores"] == [trained(expected), None]
    r = post(
        flag_gateway,
        "/get_reward",
        {"query": queries[:1], "scores_as": "attributes"},
        {"Authorization": f"Bearer {API_KEY}"},
    )
    assert r.json()["scores"] == [trained(expected)]


def test_one_output_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Llama2-13B-RLHF-RM's shape: one output `reward`; scores are [reward]; weights take one value."""
    root = tmp_path_factory.mktemp("rl-llama")
    with serve_fixture(root, arch="llama", options=_options()) as llama:
        with run_gateway(llama.grpc_url, root / "reward-openai.log") as gw:
            queries = [policy_query(m, "llama2") for m in CONVERSATIONS]
            body = post(gw, "/get_reward", {"query": queries}).json()
            expected, meta = oracle(llama, CONVERSATIONS)
            assert meta.attribute_names == ("reward",) and body["attributes"] == ["reward"]
            assert body["rewards"] == [s.reward for s in expected]
            assert body["scores"] == [[s.reward] for s in expected]
            doubled = post(gw, "/get_reward", {"query": queries, "weights": [2]}).json()["rewards"]
            assert doubled == [f32(np.float32(2) * np.float32(s.reward)) for s in expected]
            error = error_of(post(gw, "/get_reward", {"query": queries, "weights": [1, 2]}), 400)
            assert "weights has 2 values; this model takes 1 (one per trained attribute: reward)" in error["message"]
            pooled = post(gw, "/pooling", {"messages": CONVERSATIONS[0]}).json()["data"][0]
            assert pooled["data"] == [expected[0].reward] == [pooled["reward"]]


# ---- weights on every endpoint that returns a reward --------------------------------------------------------
def test_request_weights(nemotron: RunningServer, gateway: Gateway) -> None:
    queries = [policy_query(m, "chatml") for m in CONVERSATIONS]
    expected, meta = oracle(nemotron, CONVERSATIONS)
    # the checkpoint's own weights (9 values) reproduce the ensemble's reward
    r = post(gateway, "/get_reward", {"query": queries, "weights": list(meta.scalar_weights)})
    assert r.json()["rewards"] == pytest.approx([s.reward for s in expected], rel=1e-6, abs=1e-6)
    # 5 trained-attribute weights and the object form, against a hand-written float32 dot product
    for weights in ([0.5, 0, 0, 0, 2], {"helpfulness": 0.5, "verbosity": 2}):
        r = post(gateway, "/get_reward", {"query": queries, "weights": weights})
        want = [float(np.float32(0.5) * np.float32(s.scores["helpfulness"]) + np.float32(2) *
                      np.float32(s.scores["verbosity"])) for s in expected]  # fmt: skip
        assert r.json()["rewards"] == pytest.approx(want, rel=1e-6), weights
        assert r.json()["scores"] == [trained(s) for s in expected]  # weights change the reward only
    bad_weights = (
        ([1, 2, 3], "weights has 3 values; this model takes 5"),
        ({"x": 1}, "unknown attribute"),
        ("x", "weights must be a list of numbers or an object"),
        ([1, "a", 0, 0, 0], "weights[1] must be a finite number"),
    )
    for bad, fragment in bad_weights:
        for path, body in (
            ("/get_reward", {"query": queries, "weights": bad}),
            ("/pooling", {"messages": CONVERSATIONS[0], "weights": bad}),
            ("/v1/chat/completions", {"model": NEMOTRON_NAME, "messages": CONVERSATIONS[0], "weights": bad}),
        ):
            error = error_of(post(gateway, path, body), 400)
            assert fragment in error["message"] and error["param"] == "weights", (path, error)
            assert error["code"] == "invalid_weights"
    # chat completions: a last `reward` entry, only when weights are sent
    body = {"model": NEMOTRON_NAME, "messages": CONVERSATIONS[0]}
    plain = post(gateway, "/v1/chat/completions", body).json()["choices"][0]["logprobs"]["content"]
    weighted = post(gateway, "/v1/chat/completions", {**body, "weights": {"correctness": 1}}).json()
    entries = weighted["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in plain] == list(meta.trained_attributes)
    assert entries[:-1] == plain and entries[-1]["token"] == "reward"
    assert entries[-1]["logprob"] == expected[0].scores["correctness"]
    assert weighted["choices"][0]["message"]["content"].endswith(f",reward:{expected[0].scores['correctness']!r}")


def test_reward_client_weights(nemotron: RunningServer) -> None:
    conversation = json.dumps({"messages": CONVERSATIONS[2]})
    (expected,), _ = oracle(nemotron, CONVERSATIONS[2:])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(REWARD_CLIENT), "--url", nemotron.grpc_url, "score", conversation, "--json", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    r = run()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reward"] == expected.reward
    r = run("--weights", "correctness=1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reward"] == expected.scores["correctness"]
    r = run("--weights", "1,2,3")
    assert r.returncode == 2 and "weights has 3 values; this model takes 5" in r.stderr, r.stderr


# ---- /pooling -------------------------------------------------------------------------------------------------
def test_pooling_messages_and_input_equal_the_ensemble(nemotron: RunningServer, gateway: Gateway) -> None:
    expected, meta = oracle(nemotron, CONVERSATIONS)
    r = post(gateway, "/pooling", {"model": NEMOTRON_NAME, "messages": CONVERSATIONS[1]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == NEMOTRON_NAME and body["id"].startswith("pool-")
    assert isinstance(body["created"], int)
    assert body["data"] == [
        {"index": 0, "object": "pooling", "data": trained(expected[1]), "reward": expected[1].reward}
    ]
    n = expected[1].num_input_tokens
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0}

    texts = [cf.render(m, "steerlm") for m in CONVERSATIONS]  # already in this model's template
    by_text, _ = oracle(nemotron, texts, text=True)
    assert [s.reward for s in by_text] == [s.reward for s in expected]  # the template is the model's
    body = post(gateway, "/pooling", {"input": texts}).json()  # model is optional, as in vLLM
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["data"] for d in body["data"]] == [trained(s) for s in by_text]
    assert body["usage"]["prompt_tokens"] == sum(s.num_input_tokens for s in by_text)
    single = post(gateway, "/pooling", {"input": texts[2]}).json()
    assert single["data"][0]["data"] == trained(by_text[2])
    weighted = post(gateway, "/pooling", {"input": texts[0], "weights": {"coherence": 1}}).json()
    assert weighted["data"][0]["reward"] == by_text[0].scores["coherence"]


def test_pooling_errors_in_openai_shape(gateway: Gateway) -> None:
    text = cf.render(CONVERSATIONS[0], "steerlm")
    cases: list[tuple[Any, int, str, str | None]] = [
        ({"model": NEMOTRON_NAME}, 400, "exactly one of 'messages'", None),
        ({"messages": CONVERSATIONS[0], "input": text}, 400, "exactly one of 'messages'", None),
        ({"input": [1, 2, 3]}, 400, "token-id input is not supported", "input"),
        ({"input": [[1, 2], [3]]}, 400, "token-id input is not supported", "input"),
        ({"input": 5}, 400, "input must be a string or a list of strings, got int", "input"),
        ({"input": [text, ["a"]]}, 400, "input[1] must be a string, got list", "input"),
        ({"input": []}, 400, "empty list", "input"),
        ({"input": text, "encoding_format": "base64"}, 400, "encoding_format", "encoding_format"),
        ({"input": [text, cf.render(LONG, "steerlm")]}, 400, "more than the engine's maximum input length", "input[1]"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "assistant", "messages"),
        ({"model": "gpt-4o", "input": text}, 404, "'gpt-4o' does not exist", "model"),
        ({"input": [text] * 9}, 400, "more than this gateway's limit of 8", "input"),
    ]
    for body, status, fragment, param in cases:
        error = error_of(post(gateway, "/pooling", body), status)
        assert fragment in error["message"] and error["param"] == param, (body, error)


# ---- RewardBench 2 through reward-client evaluate --------------------------------------------------------------
def test_reward_client_evaluate_rewardbench2(nemotron: RunningServer, tmp_path: Path) -> None:
    """The CLI on RB2 rows: every completion scored by the server, the report from those scores, resumable."""
    prompts = ["What is 2+2?", "Name a prime."]
    answers = [["4", "5", "22", "four"], ["7", "8", "9", "10"]]
    rows = [
        {"id": str(i), "subset": "Math", "prompt": p, "chosen": a[:1], "rejected": a[1:], "num_correct": 1}
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
    ]
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, a in
                     zip(prompts, answers, strict=True) for c in a]  # fmt: skip
    expected, _ = oracle(nemotron, conversations)
    rewards = [s.reward for s in expected]
    # by hand: a row is right when its chosen (first) reward is strictly the highest of its four
    wins = [float(rewards[4 * i] > max(rewards[4 * i + 1 : 4 * i + 4])) for i in range(2)]

    def evaluate(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(REWARD_CLIENT), "--url", nemotron.grpc_url, "evaluate", str(path), "--json", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    r = evaluate()
    assert r.returncode == 0, r.stderr
    assert "8/8" in r.stderr  # the progress bar counted every completion
    rep = json.loads(r.stdout)
    assert rep["subsets"]["Math"]["score"] == pytest.approx(sum(wins) / 2)
    assert rep["overall"] == pytest.approx(sum(wins) / 2) and rep["missing_subsets"] == [
        "Factuality", "Precise IF", "Safety", "Focus", "Ties"]  # fmt: skip
    saved = [json.loads(x) for x in Path(rep["scores_file"]).read_text().splitlines()[1:]]
    assert sorted(e["line"] for e in saved) == [1, 2]
    assert [v for e in sorted(saved, key=lambda e: e["line"]) for v in e["scores"]] == rewards
    again = evaluate("--no-progress")  # resumed: nothing left to score, same report
    assert again.returncode == 0 and json.loads(again.stdout) == rep and again.stderr == ""
