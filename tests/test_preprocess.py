"""Preprocessing (tokenize, length limits, truncation, request tensors), heads and the numpy stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from convo import from_turns

from reward_triton.engine.stand_in import EngineStage
from reward_triton.errors import RequestError
from reward_triton.metadata import TOKENIZER_FILE, RewardMetadata
from reward_triton.serving import head, prompt
from reward_triton.serving.conversation import loads
from reward_triton.serving.head import PostprocessStage
from reward_triton.serving.preprocess import Preprocessor, Tokenizer
from reward_triton.serving.results import Failure
from reward_triton.serving.triton import REQUESTED_OUTPUTS
from tooling import fixtures

MAX_LEN = 400


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("meta")
    fixtures.train_tokenizer(d / TOKENIZER_FILE)
    RewardMetadata(
        attribute_names=("a", "b", "c"),
        trained_attributes=("b", "c"),
        head_bias=(0.5, -1.0, 0.0),
        scalar_weights=(0.0, 2.0, -1.0),
        max_input_len=MAX_LEN,
        vocab_size=384,
    ).save(d)
    return d


@pytest.fixture(scope="module")
def pre(model_dir: Path) -> Preprocessor:
    return Preprocessor.from_dir(model_dir, max_request_bytes=100_000)


def _obj(value: str | bytes) -> np.ndarray:
    return np.array([[value.encode() if isinstance(value, str) else value]], dtype=object)


def _conv_json(n_exchanges: int, words: int = 6) -> str:
    messages = []
    for i in range(n_exchanges):
        messages.append({"role": "user", "content": f"question {i} " + "the model " * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "is helpful " * words})
    return json.dumps({"messages": messages})


def test_tokenizes_rendered_text_without_bos_eos(pre: Preprocessor, model_dir: Path) -> None:
    conv = from_turns([("user", "What is 1+1?"), ("assistant", "2")])
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / TOKENIZER_FILE))
    text = prompt.render(conv, pre.meta.template, pre.meta.default_system_prompt)
    assert pre.conversation(conv).input_ids == list(sp.encode(text))
    assert sp.bos_id() not in pre.conversation(conv).input_ids
    ids = sp.encode("<extra_id_2>")
    assert len(ids) == 1  # special symbols are single tokens


def test_request_tensors(pre: Preprocessor) -> None:
    out = pre.prepare({"conversation": _obj(_conv_json(1))}).tensors()
    n = out["input_ids"].shape[1]
    assert out["input_ids"].dtype == np.int32 and out["input_ids"].shape == (1, n)
    assert out["input_lengths"].tolist() == [[n]] and out["num_input_tokens"].tolist() == [[n]]
    assert out["request_output_len"].tolist() == [[1]]
    assert out["return_generation_logits"].tolist() == [[True]] and out["truncated"].tolist() == [[False]]
    text = pre.prepare({"text": _obj("<extra_id_1>User\nhi\n<extra_id_2>")}).tensors()
    assert text["input_ids"].shape[1] == len(pre.tokenizer.encode("<extra_id_1>User\nhi\n<extra_id_2>"))


def test_over_length_names_both_numbers(pre: Preprocessor) -> None:
    long = _conv_json(8)
    n = len(pre.tokenizer.encode(prompt.render(loads(long), pre.meta.template, pre.meta.default_system_prompt)))
    assert n > MAX_LEN
    with pytest.raises(RequestError, match=rf"{n} tokens.*{MAX_LEN} tokens.*truncate"):
        pre.prepare({"conversation": _obj(long)})
    with pytest.raises(RequestError, match=rf"{MAX_LEN}"):
        pre.prepare({"text": _obj("the model " * 600)})


def test_truncate_drops_oldest_exchanges_only(pre: Preprocessor) -> None:
    conv = loads(_conv_json(8))
    out = pre.conversation(conv, truncate=True)
    assert out.truncated and out.num_tokens <= MAX_LEN and out.dropped_turns % 2 == 0 and out.dropped_turns > 0
    kept = conv.without_turns(0, out.dropped_turns)
    assert out.input_ids == pre.tokenizer.encode(prompt.render(kept, pre.meta.template, pre.meta.default_system_prompt))
    # dropping one exchange fewer would not fit: the fewest turns were dropped
    longer = conv.without_turns(0, out.dropped_turns - 2)
    assert len(pre.tokenizer.encode(prompt.render(longer, pre.meta.template, pre.meta.default_system_prompt))) > MAX_LEN
    # the system prompt and the last exchange stay
    text = pre.tokenizer.decode(out.input_ids)
    assert text.startswith("<extra_id_0>System\n") and "answer 7" in text and "question 7" in text
    # fits already: nothing dropped
    assert not pre.conversation(loads(_conv_json(1)), truncate=True).truncated
    tensors = pre.prepare({"conversation": _obj(_conv_json(8)), "truncate": np.array([[True]])}).tensors()
    assert tensors["truncated"].tolist() == [[True]]


def test_truncate_cannot_drop_last_exchange(pre: Preprocessor) -> None:
    huge = json.dumps(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "the model " * 400}]}
    )
    with pytest.raises(RequestError, match="no earlier turns"):
        pre.prepare({"conversation": _obj(huge), "truncate": np.array([[True]])})
    two = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "the model " * 400},
            ]
        }
    )
    with pytest.raises(RequestError, match="even after dropping all 2 earlier turns"):
        pre.prepare({"conversation": _obj(two), "truncate": np.array([[True]])})


def test_sentences_truncate_silently(pre: Preprocessor) -> None:
    text = "the model " * 600
    out = pre.prepare({"sentences": _obj(text)})
    assert out.truncated and out.input_ids == pre.tokenizer.encode(text)[:MAX_LEN]
    assert out.tensors()["exceeded"].tolist() == [[1]]
    assert pre.prepare({"sentences": _obj("short")}).tensors()["exceeded"].tolist() == [[0]]
    eos = pre.tokenizer.eos_id
    with_eos = pre.prepare({"sentences": _obj("short"), "add_EOS": np.array([[True]])})
    assert with_eos.input_ids == [*pre.tokenizer.encode("short"), eos] and not with_eos.truncated
    assert pre.prepare({"sentences": _obj("short"), "add_EOS": np.array([[False]])}).input_ids == pre.tokenizer.encode(
        "short"
    )
    with pytest.raises(RequestError, match="add_EOS applies to 'sentences'"):
        pre.prepare({"text": _obj("short"), "add_EOS": np.array([[True]])})


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ({}, "neither was given"),
        ({"conversation": _obj("{}"), "text": _obj("x")}, "got 'conversation' and 'text'"),
        ({"text": _obj(b"\xc3\x28")}, "not valid UTF-8"),
        ({"text": _obj("")}, "empty"),
        ({"text": np.array([[b"a"], [b"b"]], dtype=object)}, "exactly one element"),
        ({"text": np.array([[1]], dtype=np.int32)}, "must be BYTES"),
        ({"text": _obj("x" * 100_001)}, "100001 bytes, more than the request limit of 100000"),
        ({"text": _obj("x"), "truncate": np.array([[1]], dtype=np.int32)}, "must be BOOL"),
        ({"text": _obj("the model " * 600), "truncate": np.array([[True]])}, "truncate applies to 'conversation'"),
    ],
)
def test_bad_requests(pre: Preprocessor, inputs: dict, needle: str) -> None:
    with pytest.raises(RequestError) as e:
        pre.prepare(inputs)
    assert needle in str(e.value)


def _openai(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


POISONS = [  # (conversation JSON, what the INVALID_ARG message must say)
    ("{", "not valid JSON"),
    ("[" * 5000, "nested too deeply"),
    ('{"messages": [], "n": ' + "9" * 5000 + "}", "4300 digits"),
    (_openai("\ud800 hi", "x"), "U+D800"),
    (_openai("x", "\udfff"), "messages[1].content contains an invalid Unicode code point U+DFFF"),
    (
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}, '
        '{"role": "assistant", "content": "y"}]}',
        "messages[0].content[0].text",
    ),
    ('{"system": "\\ud800", "conversations": [{"from": "Assistant", "value": "y"}]}', "system contains"),
]


def test_preprocess_stage_isolates_errors(model_dir: Path) -> None:
    stage = Preprocessor.from_dir(model_dir)
    good = [{"text": _obj("hello")}, {"conversation": _obj(_openai("2+2?", "4"))}]
    batch = [good[0], *({"conversation": _obj(p)} for p, _ in POISONS), good[1]]
    out = stage.run(batch)
    for (_, needle), result in zip(POISONS, out[1:-1], strict=True):
        assert isinstance(result, Failure) and result.invalid_request and needle in result.message, result
    alone = [stage.run([g])[0] for g in good]
    for got, want in zip([out[0], out[-1]], alone, strict=True):
        assert isinstance(got, dict) and isinstance(want, dict)
        assert got["input_ids"].tolist() == want["input_ids"].tolist()


def test_unexpected_errors_are_internal_and_isolated(model_dir: Path) -> None:
    """A bug (any exception type) in one request's processing is INTERNAL for that request only."""
    stage = Preprocessor.from_dir(model_dir)
    real = stage.tokenizer.encode

    def flaky(text: str) -> list[int]:
        if "boom" in text:
            raise RuntimeError("tokenizer exploded")
        return real(text)

    stage.tokenizer.encode = flaky  # type: ignore[method-assign]
    out = stage.run([{"text": _obj("a")}, {"text": _obj("boom")}, {"text": _obj("b")}])
    assert isinstance(out[0], dict) and isinstance(out[2], dict)
    assert isinstance(out[1], Failure) and not out[1].invalid_request
    assert "RuntimeError: tokenizer exploded" in out[1].message


def test_heads_and_postprocess(model_dir: Path) -> None:
    meta = RewardMetadata.load(model_dir)
    logits = np.array([[1.0, 2.0, 3.0, 9.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    s = head.scores(logits, meta)
    np.testing.assert_allclose(s, [[1.5, 1.0, 3.0], [0.5, -1.0, 0.0]])
    np.testing.assert_allclose(head.reward(s, meta), [-1.0, -2.0])
    with pytest.raises(head.HeadError):
        head.scores(np.zeros((1, 2)), meta)
    with pytest.raises(head.HeadError, match="non-finite"):  # a broken engine never yields a NaN reward
        head.scores(np.array([[0.0, np.nan, 0.0, 0.0]]), meta)
    post = PostprocessStage(model_dir)
    out, short, missing = post.run(
        [{"generation_logits": logits[0].reshape(1, 1, 1, 4)}, {"generation_logits": np.zeros((1, 1, 1, 2))}, {}]
    )
    # logits narrower than the head: the deployment is wrong, not the request (INTERNAL)
    assert isinstance(short, Failure) and not short.invalid_request and "the head" in short.message
    assert isinstance(missing, Failure) and missing.invalid_request
    assert isinstance(out, dict)
    np.testing.assert_allclose(out["scores"], [[1.5, 1.0, 3.0]])
    np.testing.assert_allclose(out["reward"], [[-1.0]])
    assert out["scores"].dtype == np.float32 and out["reward"].shape == (1, 1)


class _FakeEngine:
    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []

    def logits(self, seqs: list[list[int]]):
        import torch

        self.calls.append(seqs)
        return torch.tensor([[float(len(s)), float(sum(s)), 0.0] for s in seqs])


def test_engine_stage_batches_and_validates() -> None:
    """The stand-in's refusals are the C++ backend's (serving/trtllm_contract.py): its messages, INTERNAL."""
    engine = _FakeEngine()
    stage = EngineStage(engine, max_input_len=5, vocab_size=10, exclude_input_in_output=True)
    every = np.array(["output_ids", "sequence_length", "generation_logits"], dtype=object)

    def req(ids: list[int], out_len: int | None = 1, rows: int = 1, **extra: np.ndarray) -> dict:
        r = {
            "input_ids": np.array([ids] * rows, dtype=np.int32),
            "input_lengths": np.array([len(ids)] * rows, dtype=np.int32),
            "return_generation_logits": np.array([True]),
            REQUESTED_OUTPUTS: every,
            **extra,
        }
        if out_len is not None:
            r["request_output_len"] = np.array([out_len], dtype=np.int32)
        return r

    out = stage.run(
        [
            req([1, 2]),
            req([1], out_len=4),
            req([1, 2, 3, 4, 5, 6]),
            req([11]),
            req([3], return_context_logits=np.array([True])),
            req([4, 5, 6], exclude_input_in_output=np.array([False])),
            req([1], rows=2),
            req([1], out_len=None),
            req([1], out_len=0),
            req([1], **{REQUESTED_OUTPUTS: np.array(["generation_logits"], dtype=object)}),
            req([1], **{REQUESTED_OUTPUTS: np.array(["output_ids", "generation_logits"], dtype=object)}),
            req([2], return_generation_logits=np.array([False])),
        ]
    )
    assert engine.calls == [[[1, 2], [4, 5, 6], [2]]]  # one forward for the valid requests
    assert isinstance(out[0], dict) and out[0]["generation_logits"].shape == (1, 1, 1, 3)
    np.testing.assert_allclose(out[0]["generation_logits"].reshape(-1), [2, 3, 0])
    # exclude_input_in_output: the model parameter (True here), overridden per request
    assert out[0]["output_ids"].tolist() == [[[1]]] and out[0]["sequence_length"].tolist() == [[1]]
    assert out[5]["output_ids"].tolist() == [[[4, 5, 6, 1]]] and out[5]["sequence_length"].tolist() == [[4]]
    assert set(out[11]) == {"output_ids", "sequence_length"}  # logits only when the request sets the flag
    for i, needle in [
        (1, "computes one output position"),
        (2, "prompt length (6) exceeds the engine's maximum input length (5)"),
        (3, "[0, 10)"),
        (4, "--gather_context_logits"),
        (6, "Batch size > 1 requires the tensorrt_llm backend to be using decoupled transaction policy"),
        (7, "request_output_len is not present in the request"),
        (8, "must be > 0"),
        (9, "Error encountered while populating response: output_ids tensor must be present in list of output"),
        (10, "sequence_length tensor must be present in list of output tensors"),
    ]:
        assert isinstance(out[i], Failure) and not out[i].invalid_request and needle in out[i].message, out[i]
    for i in (2, 3, 4, 8):  # what the executor refuses comes back in the backend's wrapper
        assert out[i].message.startswith("Executor failed process requestId "), out[i]


class _PoisonedEngine(_FakeEngine):
    """Fails any forward that contains the token 7 (an engine fault on one sequence)."""

    def logits(self, seqs: list[list[int]]):
        if any(7 in s for s in seqs):
            self.calls.append(seqs)
            raise RuntimeError("CUDA error: an illegal memory access")
        return super().logits(seqs)


def test_engine_failure_stays_with_its_sequence() -> None:
    engine = _PoisonedEngine()
    stage = EngineStage(engine, max_input_len=8, vocab_size=10)
    batch = [
        {
            "input_ids": np.array([ids], dtype=np.int32),
            "request_output_len": np.array([1], dtype=np.int32),
            "return_generation_logits": np.array([True]),
        }
        for ids in ([1, 2], [3, 7], [4])
    ]
    out = stage.run(batch)
    assert isinstance(out[1], Failure) and not out[1].invalid_request and "illegal memory access" in out[1].message
    np.testing.assert_allclose(out[0]["generation_logits"].reshape(-1), [2, 3, 0])
    np.testing.assert_allclose(out[2]["generation_logits"].reshape(-1), [1, 4, 0])


def test_tokenizer_roundtrip(model_dir: Path) -> None:
    tok = Tokenizer(model_dir / TOKENIZER_FILE)
    text = "<extra_id_1>User\nünïcode ☃ text\n<extra_id_2>"
    assert tok.decode(tok.encode(text)) == text
