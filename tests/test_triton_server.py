"""End to end through a real tritonserver (bundled 2.51, CPU): ensemble == reference engine; batching; bad requests.

One server per fixture architecture, shared by the whole module.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sentencepiece as spm
import torch
from triton_server import (
    RunningServer,
    bytes_input,
    conversation_input,
    fixture_checkpoint,
    infer,
    make_client,
    serve_fixture,
)
from tritonclient.utils import InferenceServerException

from reward_triton.engine.model import TorchEngine
from reward_triton.metadata import DEFAULT_SYSTEM_PROMPT, RewardMetadata

pytestmark = pytest.mark.server
OUTPUTS = ("scores", "reward", "num_input_tokens", "truncated")


class Reference:
    """The reference engine + head math, on token ids from sentencepiece directly."""

    def __init__(self, checkpoint: Path) -> None:
        self.meta = RewardMetadata.load(checkpoint)
        self.engine = TorchEngine.from_checkpoint(checkpoint)
        self.sp = spm.SentencePieceProcessor(model_file=str(checkpoint / "tokenizer.model"))

    def ids(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def scores(self, seqs: list[list[int]]) -> np.ndarray:
        logits = self.engine.logits(seqs)
        k = self.meta.num_attributes
        return (logits[:, :k] + torch.tensor(self.meta.head_bias)).numpy()

    def reward(self, scores: np.ndarray) -> np.ndarray:
        return scores @ np.asarray(self.meta.scalar_weights, dtype=np.float32)


def _start(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Any:
    root = tmp_path_factory.mktemp(f"triton-{arch}")
    return serve_fixture(root, checkpoint=fixture_checkpoint(root, arch))


@pytest.fixture(scope="module")
def nemotron(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with _start(tmp_path_factory, "nemotron") as server:
        yield server


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with _start(tmp_path_factory, "llama") as server:
        yield server


@pytest.fixture(scope="module")
def references() -> dict[Path, Reference]:
    return {}


def _reference(server: RunningServer, cache: dict[Path, Reference]) -> Reference:
    if server.checkpoint not in cache:
        cache[server.checkpoint] = Reference(server.checkpoint)
    return cache[server.checkpoint]


def steerlm(system: str, turns: list[tuple[str, str]]) -> str:
    """The template written out by hand (docs/formats.md), independent of reward_triton.serving.prompt.render."""
    text = f"<extra_id_0>System\n{system}\n"
    for role, content in turns:
        text += f"<extra_id_1>{'User' if role == 'user' else 'Assistant'}\n{content}\n"
    return text + "<extra_id_2>"


def _messages(turns: list[tuple[str, str]], system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": r, "content": c} for r, c in turns]


SINGLE = [("user", "What is 1+1?"), ("assistant", "Ooogo boogu shmugu loogu")]
SHORT = [("user", "What is 1+1?"), ("assistant", "Two")]  # fits the fixture's 128 tokens with the default system
MULTI = [
    ("user", "Hello"),
    ("assistant", "Hi, how can I help?"),
    ("user", "Write python code"),
    ("assistant", "print(42)"),
]


def _check(out: dict[str, np.ndarray], ref: Reference, ids: list[int], atol: float = 1e-5) -> None:
    expected = ref.scores([ids])
    assert out["scores"].shape == (1, ref.meta.num_attributes) and out["scores"].dtype == np.float32
    np.testing.assert_allclose(out["scores"], expected, atol=atol, rtol=0)
    np.testing.assert_allclose(out["reward"].reshape(-1), ref.reward(expected), atol=atol, rtol=0)
    assert out["num_input_tokens"].tolist() == [[len(ids)]]


@pytest.mark.parametrize("arch", ["nemotron", "llama"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_matches_reference(request: pytest.FixtureRequest, references: dict, arch: str, protocol: str) -> None:
    server: RunningServer = request.getfixturevalue(arch)
    ref = _reference(server, references)
    client = make_client(server, protocol)
    # single turn, default system prompt
    out = infer(client, "ensemble", {"conversation": conversation_input(_messages(SHORT))}, OUTPUTS)
    _check(out, ref, ref.ids(steerlm(DEFAULT_SYSTEM_PROMPT, SHORT)))
    assert out["truncated"].tolist() == [[False]]
    # multi-turn, custom system prompt, NeMo form
    nemo = {
        "system": "Be brief.",
        "conversations": [{"from": "User" if r == "user" else "Assistant", "value": c} for r, c in MULTI],
        "mask": "User",
    }
    out = infer(client, "ensemble", {"conversation": bytes_input(json.dumps(nemo))}, OUTPUTS)
    _check(out, ref, ref.ids(steerlm("Be brief.", MULTI)))
    # the same as already templated text
    out = infer(client, "ensemble", {"text": bytes_input(steerlm("Be brief.", MULTI))}, OUTPUTS)
    _check(out, ref, ref.ids(steerlm("Be brief.", MULTI)))
    # the engine model alone, on the same token ids
    ids = ref.ids(steerlm("Be brief.", MULTI))
    engine_out = infer(
        client,
        "tensorrt_llm",
        {
            "input_ids": np.array([ids], dtype=np.int32),
            "input_lengths": np.array([[len(ids)]], dtype=np.int32),
            "request_output_len": np.array([[1]], dtype=np.int32),
            "return_generation_logits": np.array([[True]]),
        },
        ("generation_logits", "output_ids", "sequence_length"),
    )
    logits = engine_out["generation_logits"]
    assert logits.shape[:3] == (1, 1, 1)
    np.testing.assert_allclose(logits[0, 0, 0], ref.engine.logits([ids])[0].numpy(), atol=1e-5, rtol=0)
    # exclude_input_in_output is "true" in the rendered config (as in production): output_ids is the generated
    # position only; a request may ask for the prompt as well
    generated = int(np.argmax(logits[0, 0, 0]))
    assert engine_out["sequence_length"].tolist() == [[1]] and engine_out["output_ids"].tolist() == [[[generated]]]
    with_prompt = infer(
        client,
        "tensorrt_llm",
        {
            "input_ids": np.array([ids], dtype=np.int32),
            "input_lengths": np.array([[len(ids)]], dtype=np.int32),
            "request_output_len": np.array([[1]], dtype=np.int32),
            "exclude_input_in_output": np.array([[False]]),
        },
        ("output_ids", "sequence_length"),
    )
    assert with_prompt["output_ids"].tolist() == [[[*ids, generated]]]
    assert with_prompt["sequence_length"].tolist() == [[len(ids) + 1]]


def test_multi_turn_prefixes_score_each_assistant_turn(nemotron: RunningServer, references: dict) -> None:
    """Per-turn scoring: each assistant turn on its prefix (what a client's annotate sends)."""
    ref = _reference(nemotron, references)
    client = make_client(nemotron)
    for stop in (2, 4):
        out = infer(client, "ensemble", {"conversation": conversation_input(_messages(MULTI[:stop], "S"))}, OUTPUTS)
        _check(out, ref, ref.ids(steerlm("S", MULTI[:stop])))


def test_truncate_drops_oldest_turns(nemotron: RunningServer, references: dict) -> None:
    ref = _reference(nemotron, references)
    client = make_client(nemotron)
    turns = []
    for i in range(12):
        turns += [("user", f"question {i} about the model"), ("assistant", f"answer {i} is helpful")]
    conv = {"conversation": conversation_input(_messages(turns, "S"))}
    with pytest.raises(InferenceServerException) as e:
        infer(client, "ensemble", conv, OUTPUTS)
    n, limit = len(ref.ids(steerlm("S", turns))), ref.meta.max_input_len
    assert "INVALID_ARG" in str(e.value.status()) and f"{n} tokens" in e.value.message()
    assert f"{limit} tokens" in e.value.message()
    out = infer(client, "ensemble", {**conv, "truncate": np.array([[True]])}, OUTPUTS)
    assert out["truncated"].tolist() == [[True]]
    kept = next(turns[k:] for k in range(2, len(turns), 2) if len(ref.ids(steerlm("S", turns[k:]))) <= limit)
    _check(out, ref, ref.ids(steerlm("S", kept)))


def test_concurrent_requests_are_batched(nemotron: RunningServer, references: dict) -> None:
    ref = _reference(nemotron, references)
    client = make_client(nemotron, "grpc")
    before = client.get_inference_statistics("tensorrt_llm").model_stats[0]
    n = 80
    convs = [
        _messages([("user", f"question {i}"), ("assistant", " ".join(["the"] * (1 + 3 * (i % 20))))], "S")
        for i in range(n)
    ]
    results: queue.Queue[tuple[int, Any, Any]] = queue.Queue()

    import tritonclient.grpc as grpcclient

    for i, conv in enumerate(convs):
        t = grpcclient.InferInput("conversation", [1, 1], "BYTES")
        t.set_data_from_numpy(conversation_input(conv))
        client.async_infer(
            "ensemble",
            [t],
            callback=lambda result, error, i=i: results.put((i, result, error)),
            outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS],
        )
    got: dict[int, dict[str, np.ndarray]] = {}
    for _ in range(n):
        i, result, error = results.get(timeout=300)
        assert error is None, f"request {i}: {error.status()} {error.message()}"
        got[i] = {o: result.as_numpy(o) for o in OUTPUTS}
    seqs = [ref.ids(steerlm("S", [(m["role"], m["content"]) for m in conv[1:]])) for conv in convs]
    assert len({len(s) for s in seqs}) >= 9  # different lengths
    expected = ref.scores(seqs)
    for i in range(n):
        assert got[i]["num_input_tokens"].tolist() == [[len(seqs[i])]]
        np.testing.assert_allclose(got[i]["scores"][0], expected[i], atol=1e-5, rtol=0)
    after = client.get_inference_statistics("tensorrt_llm").model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == n
    assert executions < inferences, f"no batching: {executions} executions for {inferences} inferences"


def _bad_requests(ref: Reference) -> list[tuple[str, str, dict[str, np.ndarray], str]]:
    """(case, model, inputs, substring of the error message)."""
    limit = ref.meta.max_input_len
    long_turns = [("user", "q"), ("assistant", "the model is helpful " * 200)]
    ok = _messages(SINGLE, "S")
    return [
        ("invalid JSON", "ensemble", {"conversation": bytes_input('{"messages": [')}, "not valid JSON"),
        ("JSON array", "ensemble", {"conversation": bytes_input("[1, 2]")}, "got array"),
        ("messages not a list", "ensemble", {"conversation": bytes_input('{"messages": "hi"}')}, "must be an array"),
        (
            "content not a string",
            "ensemble",
            {"conversation": conversation_input([{"role": "user", "content": 3}])},
            "content must be a string, got number",
        ),
        ("empty conversation", "ensemble", {"conversation": conversation_input([])}, "conversation is empty"),
        (
            "no assistant turn",
            "ensemble",
            {"conversation": conversation_input(_messages([("user", "q")]))},
            "no assistant turn",
        ),
        (
            "last turn not assistant",
            "ensemble",
            {"conversation": conversation_input(_messages([*SINGLE, ("user", "more?")]))},
            "must end with the assistant turn",
        ),
        (
            "unknown role",
            "ensemble",
            {"conversation": conversation_input([{"role": "tool", "content": "x"}, *ok])},
            "'tool' is not supported",
        ),
        (
            "unknown NeMo sender",
            "ensemble",
            {"conversation": bytes_input(json.dumps({"conversations": [{"from": "Bot", "value": "x"}]}))},
            "'Bot' is not supported",
        ),
        (
            "both inputs",
            "ensemble",
            {"conversation": conversation_input(ok), "text": bytes_input("x")},
            "got 'conversation' and 'text'",
        ),
        ("neither input", "ensemble", {"truncate": np.array([[True]])}, "neither was given"),
        ("non-UTF-8 conversation", "ensemble", {"conversation": bytes_input(b'{"a": "\xff\xfe"}')}, "UTF-8"),
        ("non-UTF-8 text", "ensemble", {"text": bytes_input(b"\xc3\x28 text")}, "UTF-8"),
        ("empty text", "ensemble", {"text": bytes_input("")}, "empty"),
        (
            "over-length",
            "ensemble",
            {"conversation": conversation_input(_messages(long_turns))},
            f"maximum input length of {limit} tokens",
        ),
        (
            "over-length, nothing to drop",
            "ensemble",
            {"conversation": conversation_input(_messages(long_turns)), "truncate": np.array([[True]])},
            "no earlier turns to drop",
        ),
        ("10 MB string", "ensemble", {"text": bytes_input("a" * (10 << 20))}, "more than the request limit"),
        (
            "wrong dtype",
            "ensemble",
            {"conversation": np.array([[1]], dtype=np.int32)},
            "'conversation' data-type is 'INT32'",
        ),
        (
            "wrong shape",
            "ensemble",
            {"conversation": np.array([[b"{}", b"{}"]], dtype=object)},
            "unexpected shape for input 'conversation'",
        ),
        (
            "two conversations in one request",
            "ensemble",
            {"conversation": np.array([[b"{}"], [b"{}"]], dtype=object)},
            "exactly one element",
        ),
        (
            "truncate not BOOL",
            "ensemble",
            {"text": bytes_input("x"), "truncate": np.array([[1]], dtype=np.int32)},
            "'truncate' data-type is 'INT32'",
        ),
        (
            "system message not first",
            "ensemble",
            {"conversation": conversation_input([*ok[:1], {"role": "system", "content": "s"}, *ok[1:]])},
            "only the first message",
        ),
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_requests_get_invalid_arg(nemotron: RunningServer, references: dict, protocol: str) -> None:
    ref = _reference(nemotron, references)
    client = make_client(nemotron, protocol)
    cases = _bad_requests(ref)
    assert len(cases) >= 15, len(cases)
    failures = []
    for case, model, inputs, needle in cases:
        try:
            infer(client, model, inputs)
        except InferenceServerException as e:
            status = str(e.status())
            invalid = "INVALID_ARG" in status if protocol == "grpc" else status == "400"
            if not invalid or needle not in e.message():
                failures.append(f"{case}: status {status}, message {e.message()!r} (wanted {needle!r})")
        else:
            failures.append(f"{case}: no error")
    assert not failures, "\n".join(failures)
    # still healthy and right afterwards
    out = infer(client, "ensemble", {"conversation": conversation_input(_messages(SINGLE, "S"))}, OUTPUTS)
    _check(out, ref, ref.ids(steerlm("S", SINGLE)))


def test_engine_refuses_what_the_cpp_backend_refuses(nemotron: RunningServer, references: dict) -> None:
    """The `tensorrt_llm` model answers as NVIDIA's C++ backend does (reward_triton/serving/trtllm_contract.py): the
    same refusals, with its messages and status (INTERNAL); and it stays healthy afterwards."""
    ref = _reference(nemotron, references)
    client = make_client(nemotron)
    ids = ref.ids(steerlm("S", SINGLE))
    limit = ref.meta.max_input_len

    def engine(seq: list[int], rows: int = 1, out_len: int = 1, **extra: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "input_ids": np.array([seq] * rows, dtype=np.int32),
            "input_lengths": np.array([[len(seq)]] * rows, dtype=np.int32),
            "request_output_len": np.array([[out_len]] * rows, dtype=np.int32),
            "return_generation_logits": np.array([[True]] * rows),
            **extra,
        }

    every = ("output_ids", "sequence_length", "generation_logits")
    cases = [
        ("logits only", engine(ids), ("generation_logits",), "output_ids tensor must be present in list of output"),
        ("no sequence_length", engine(ids), ("output_ids", "generation_logits"), "sequence_length tensor must be"),
        ("two rows", engine(ids, rows=2), every, "Batch size > 1 requires the tensorrt_llm backend to be using"),
        ("output length 0", engine(ids, out_len=0), every, "must be > 0"),
        ("too long", engine([5] * (limit + 1)), every, f"exceeds the engine's maximum input length ({limit})"),
        ("token id out of range", engine([*ids[:-1], 10**6]), every, "input_ids must be in"),
        ("context logits", engine(ids, return_context_logits=np.array([[True]])), every, "--gather_context_logits"),
    ]
    failures = []
    for case, inputs, outputs, needle in cases:
        try:
            infer(client, "tensorrt_llm", inputs, outputs)
        except InferenceServerException as e:
            if "INTERNAL" not in str(e.status()) or needle not in e.message():
                failures.append(f"{case}: status {e.status()}, message {e.message()!r} (wanted {needle!r})")
        else:
            failures.append(f"{case}: no error")
    assert not failures, "\n".join(failures)
    # request_output_len is a required input of both renderings: Triton itself refuses a request without it
    without = {k: v for k, v in engine(ids).items() if k != "request_output_len"}
    with pytest.raises(InferenceServerException, match="request_output_len"):
        infer(client, "tensorrt_llm", without, every)
    # generation logits come back only when asked for, as from the C++ backend
    plain = infer(client, "tensorrt_llm", {k: v for k, v in engine(ids).items() if k != "return_generation_logits"})
    assert set(plain) == {"output_ids", "sequence_length"}
    out = infer(client, "ensemble", {"conversation": conversation_input(_messages(SINGLE, "S"))}, OUTPUTS)
    _check(out, ref, ids)


def test_reward_model_truncates_like_nemo_aligner(nemotron: RunningServer, references: dict) -> None:
    ref = _reference(nemotron, references)
    client = make_client(nemotron)
    text = steerlm("S", SINGLE)
    out = infer(client, "reward_model", {"sentences": bytes_input(text)}, ("rewards", "exceeded"))
    np.testing.assert_allclose(out["rewards"], ref.scores([ref.ids(text)]), atol=1e-5, rtol=0)
    assert out["exceeded"].tolist() == [[0]]
    # older NeMo-Aligner annotation scripts also send add_EOS (False there); True appends the EOS token
    for add_eos, extra in ((False, []), (True, [ref.sp.eos_id()])):
        out = infer(
            client,
            "reward_model",
            {"sentences": bytes_input(text), "add_EOS": np.array([[add_eos]])},
            ("rewards", "exceeded"),
        )
        np.testing.assert_allclose(out["rewards"], ref.scores([ref.ids(text) + extra]), atol=1e-5, rtol=0)
    long = steerlm("S", [("user", "q"), ("assistant", "the model is helpful " * 100)])
    out = infer(client, "reward_model", {"sentences": bytes_input(long)}, ("rewards", "exceeded"))
    assert out["exceeded"].tolist() == [[1]]
    head = ref.ids(long)[: ref.meta.max_input_len]
    np.testing.assert_allclose(out["rewards"], ref.scores([head]), atol=1e-5, rtol=0)


def test_ensemble_parameters_tell_clients_the_attributes(nemotron: RunningServer) -> None:
    meta = RewardMetadata.load(nemotron.checkpoint)
    for protocol in ("grpc", "http"):
        client = make_client(nemotron, protocol)
        if protocol == "grpc":
            params = {k: v.string_value for k, v in client.get_model_config("ensemble").config.parameters.items()}
        else:
            params = {k: v["string_value"] for k, v in client.get_model_config("ensemble")["parameters"].items()}
        assert tuple(json.loads(params["attribute_names"])) == meta.attribute_names
        assert tuple(json.loads(params["scalar_weights"])) == meta.scalar_weights
        assert int(params["max_input_len"]) == meta.max_input_len
