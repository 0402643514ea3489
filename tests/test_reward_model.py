"""`reward_model` as NeMo-Aligner's RLHF trainers call it: pytriton's FuturesModelClient over HTTP with a whole
rollout batch per request (`tokens` [B, T] + `sequence_lengths` [B, 1]), batched `sentences`, and every bad input.

Comparison path: a token row is scored by `reward_model` (BLS fan-out to `tensorrt_llm`); its oracle is the
`ensemble` scoring `text` whose tokenization is exactly that row (each row is made by tokenizing a text, and the
test checks the round trip), one request per row. Both reach the same engine through different stages, so
equality (≤ 1e-5) shows the fan-out passes each row unpadded and reads the reward at position len - 1.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from triton_server import RunningServer, bytes_input, infer, make_client, serve_fixture

from reward_triton.metadata import RewardMetadata
from reward_triton.serving.preprocess import Tokenizer
from reward_triton.serving.reward_model import RewardModelStage

pytestmark = pytest.mark.server

WORDS = "the model scores what the assistant said about rain sums cities and other small things".split()


@pytest.fixture(scope="module", params=["nemotron", "llama"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve_fixture(tmp_path_factory.mktemp(f"rm-{request.param}"), arch=request.param) as running:
        yield running


def _texts_and_rows(server: RunningServer, n: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """n texts of mixed token lengths from 3 up to (nearly) the engine's maximum, and their token rows."""
    meta = RewardMetadata.load(server.checkpoint)
    tok = Tokenizer.from_metadata(server.checkpoint, meta)
    rng = random.Random(seed)
    texts, rows = [], []
    while len(texts) < n:
        words = [rng.choice(WORDS) for _ in range(rng.choice([1, 2, 5, 20, 60, 400]))]
        text = " ".join(words)
        while len(ids := tok.encode(text)) > meta.max_input_len:
            text = text[: len(text) * 9 // 10].rstrip()
        if len(ids) >= 3 and tok.encode(tok.decode(ids)) == ids:
            texts.append(text)
            rows.append(ids)
    rows[0] = tok.encode(texts[0])
    return texts, rows


def _padded(rows: list[list[int]], pad: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    width = width or max(map(len, rows))
    tokens = np.full((len(rows), width), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, np.array([[len(r)] for r in rows], dtype=np.int64)


def _ensemble_scores(server: RunningServer, texts: list[str]) -> np.ndarray:
    client = make_client(server, "http")
    return np.concatenate([infer(client, "ensemble", {"text": bytes_input(t)})["scores"] for t in texts])


def _futures_client(server: RunningServer) -> Any:
    from pytriton.client import FuturesModelClient

    return FuturesModelClient(f"http://{server.http_url}", "reward_model", inference_timeout_s=120)


def test_token_rows_equal_the_ensemble_row_by_row(server: RunningServer) -> None:
    texts, rows = _texts_and_rows(server, 64)
    lengths = sorted(map(len, rows))
    max_len = RewardMetadata.load(server.checkpoint).max_input_len
    assert lengths[0] <= 5 and lengths[-1] >= max_len * 0.8, lengths
    tokens, seq_lens = _padded(rows, pad=7)  # padding with a real token id: it must be ignored
    with _futures_client(server) as client:
        out = client.infer_batch(tokens=tokens, sequence_lengths=seq_lens).result()
    expected = _ensemble_scores(server, texts)
    k = expected.shape[1]
    assert out["rewards"].shape == (64, k) and out["rewards"].dtype == np.float32
    assert out["exceeded"].shape == (64, 1) and not out["exceeded"].any()
    np.testing.assert_allclose(out["rewards"], expected, rtol=0, atol=1e-5)
    # the same rows padded wider with other values, and as [B] lengths: same rewards
    wide, _ = _padded(rows, pad=0, width=max(map(len, rows)) + 37)
    with _futures_client(server) as client:
        again = client.infer_batch(tokens=wide, sequence_lengths=seq_lens).result()
    np.testing.assert_allclose(again["rewards"], out["rewards"], rtol=0, atol=1e-5)


def test_batched_sentences_and_the_annotation_shape(server: RunningServer) -> None:
    texts, _ = _texts_and_rows(server, 32, seed=1)
    overlong = " ".join(["rain"] * 5000)
    sentences = np.char.encode(np.array([[t] for t in [*texts, overlong]]), "utf-8")
    with _futures_client(server) as client:
        out = client.infer_batch(sentences=sentences).result()
        single = client.infer_batch(sentences=sentences[:1]).result()  # NeMo-Aligner's annotation script: [1, 1]
    expected = _ensemble_scores(server, texts)
    np.testing.assert_allclose(out["rewards"][:32], expected, rtol=0, atol=1e-5)
    assert out["exceeded"].reshape(-1).tolist() == [0] * 32 + [1]  # truncated and flagged, as NeMo-Aligner
    np.testing.assert_allclose(single["rewards"], expected[:1], rtol=0, atol=1e-5)


BAD = {
    "lengths missing": ({"tokens": np.ones((2, 4), np.int64)}, "needs 'sequence_lengths'"),
    "lengths for another B": (  # checked by Triton itself: the inputs of one request share their batch size
        {"tokens": np.ones((3, 4), np.int64), "sequence_lengths": np.ones((2, 1), np.int64)},
        "batch size does not match other inputs",
    ),
    "length 0": (
        {"tokens": np.ones((2, 4), np.int64), "sequence_lengths": np.array([[4], [0]], np.int64)},
        "row 1: sequence_lengths is 0, expected 1..4",
    ),
    "length > T": (
        {"tokens": np.ones((2, 4), np.int64), "sequence_lengths": np.array([[5], [4]], np.int64)},
        "row 0: sequence_lengths is 5, expected 1..4",
    ),
    "negative token id": (
        {"tokens": np.array([[1, 2, -3, 0]], np.int64), "sequence_lengths": np.array([[3]], np.int64)},
        "row 0: token id -3 at position 2 is outside the vocabulary",
    ),
    "token id ≥ vocab": (
        {"tokens": np.array([[1, 2], [5, 10**6]], np.int64), "sequence_lengths": np.array([[2], [2]], np.int64)},
        "row 1: token id 1000000 at position 1 is outside the vocabulary",
    ),
    "tokens and sentences": (
        {
            "tokens": np.ones((1, 4), np.int64),
            "sequence_lengths": np.array([[4]], np.int64),
            "sentences": np.array([[b"hi"]], dtype=object),
        },
        "either 'tokens'",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_invalid_arg_naming_the_row(server: RunningServer, case: str) -> None:
    from pytriton.client.exceptions import PyTritonClientInferenceServerError

    inputs, needle = BAD[case]
    with _futures_client(server) as client, pytest.raises(PyTritonClientInferenceServerError) as e:
        client.infer_batch(**inputs).result()
    message = str(e.value)
    assert needle in message, message


def test_too_long_row_and_too_many_rows_are_refused(server: RunningServer) -> None:
    from pytriton.client.exceptions import PyTritonClientInferenceServerError

    max_len = RewardMetadata.load(server.checkpoint).max_input_len
    tokens = np.ones((2, max_len + 1), np.int64)
    lengths = np.array([[3], [max_len + 1]], np.int64)
    with _futures_client(server) as client:
        with pytest.raises(PyTritonClientInferenceServerError, match=f"row 1 is {max_len + 1} tokens"):
            client.infer_batch(tokens=tokens, sequence_lengths=lengths).result()
        with pytest.raises(PyTritonClientInferenceServerError, match="batch-size must be <= 1024"):
            client.infer_batch(tokens=np.ones((1025, 2), np.int64), sequence_lengths=np.full((1025, 1), 2)).result()
        ok = client.infer_batch(tokens=np.ones((1024, 2), np.int64), sequence_lengths=np.full((1024, 1), 2)).result()
    assert ok["rewards"].shape[0] == 1024 and np.ptp(ok["rewards"], axis=0).max() < 1e-5  # identical rows


def test_rows_validation_without_a_server(tmp_path: Path) -> None:
    """The stage's own checks: [B] lengths accepted, add_EOS refused with tokens, the row limit."""
    from triton_server import fixture_checkpoint

    ckpt = fixture_checkpoint(tmp_path, "llama")
    stage = RewardModelStage(ckpt, max_rows=4)
    rows = stage.rows({"tokens": np.array([[5, 6, 7, 0], [8, 9, 0, 0]]), "sequence_lengths": np.array([3, 2])})
    assert rows.sequences == [[5, 6, 7], [8, 9]] and rows.exceeded == [False, False]
    assert rows.engine_inputs(1)["input_ids"].tolist() == [[8, 9]]
    assert rows.engine_inputs(1)["input_lengths"].tolist() == [[2]]
    from reward_triton.errors import RequestError

    with pytest.raises(RequestError, match="add_EOS applies to 'sentences' only"):
        stage.rows({"tokens": np.ones((1, 2), np.int64), "sequence_lengths": [[2]], "add_EOS": np.array([[True]])})
    with pytest.raises(RequestError, match="5 rows in one request, more than the maximum of 4"):
        stage.rows({"tokens": np.ones((5, 2), np.int64), "sequence_lengths": np.full((5, 1), 2)})
    with pytest.raises(RequestError, match="neither was given"):
        stage.rows({})
