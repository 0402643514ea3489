"""`reward_model`: NeMo-Aligner's reward server contract, batched, over the one-sequence-per-request engine.

One request carries B rows, in one of two forms (NeMo-Aligner's PyTriton server declares both):
- `tokens` INT64 [B, T] + `sequence_lengths` INT64 [B, 1]: the RLHF trainers' rollouts (PPO, REINFORCE, rejection
  sampling). Row i is `tokens[i, :len_i]`, scored as given: no template, no BOS/EOS, the reward at position
  len_i - 1; padding past len_i is ignored whatever its value. A row longer than the engine's maximum input length is
  an error, never cut (a trainer would learn from the reward of a different sequence).
- `sentences` BYTES [B, 1]: already templated text (the annotation script sends [1, 1]), with NeMo-Aligner's
  behaviour kept: an over-long row keeps its first max_input_len tokens and is flagged in `exceeded`; optional
  `add_EOS` BOOL appends the tokenizer's EOS first.
Outputs: `rewards` FP32 [B, K] (K = 1 for a one-output model) and `exceeded` INT32 [B, 1].

The engine (`tensorrt_llm`, TensorRT-LLM's in-flight batcher or the PyTorch engine) takes one unpadded sequence per
request, so the Triton model (model_repository/reward_model/1/model.py, through `execute_fanout` below)
validates every row here (`rows`: any bad row rejects the whole request, nothing is scored), sends each row to the
engine as its own request, concurrently, turns each answer's logits into scores with the postprocessing stage's
head code (`head.scores_of`) and assembles the outputs (`finish`).

Rows that share a prompt (GRPO and rejection-sampling groups) are sent in two waves (`first_wave`): one row of each
group first, the others once it has finished, so that the engine's prefix cache (TensorRT-LLM block reuse, the
PyTorch engine's reward_triton/engine/prefix_cache.py) holds the shared prompt when they arrive: TensorRT-LLM reuses a
block only after a finished request stored it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reward_triton.engine.prefix_cache import DEFAULT_BLOCK_TOKENS, block_hashes
from reward_triton.errors import ErrorCode, RequestError, untag
from reward_triton.serving.head import PostprocessStage
from reward_triton.serving.preprocess import DEFAULT_MAX_REQUEST_BYTES, Prepared, Preprocessor
from reward_triton.serving.results import Failure, Inputs, Outputs
from reward_triton.serving.triton import error_response, read_inputs
from reward_triton.serving.trtllm_contract import CALLER_OUTPUTS

ENGINE_MODEL = "tensorrt_llm"
ENGINE_INPUTS = ("input_ids", "input_lengths", "request_output_len", "return_generation_logits")
ENGINE_OUTPUT = "generation_logits"
# The backend fails a response whose request did not ask for output_ids and sequence_length as well.
ENGINE_REQUESTED_OUTPUTS = CALLER_OUTPUTS
DEFAULT_MAX_ROWS = 1024


@dataclass(frozen=True)
class Rows:
    """The validated rows of one request: what the engine scores, and NeMo-Aligner's `exceeded` flags."""

    sequences: list[list[int]]
    exceeded: list[bool]

    def engine_inputs(self, i: int) -> dict[str, np.ndarray]:
        """Row i as one `tensorrt_llm` request (batch of one, unpadded)."""
        tensors = Prepared(self.sequences[i]).tensors()
        return {name: tensors[name] for name in ENGINE_INPUTS}


def _rows_of(name: str, array: np.ndarray) -> np.ndarray:
    """[B, n] (or [B]) → a [B, n] view; anything else is refused."""
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise RequestError(f"input '{name}' must be [B, ...] with B ≥ 1 rows, got shape {list(array.shape)}")
    return array


class RewardModelStage:
    input_names = ("sentences", "tokens", "sequence_lengths", "add_EOS")

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        max_rows: int = DEFAULT_MAX_ROWS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.pre = Preprocessor.from_dir(model_dir, max_request_bytes)
        self.head = PostprocessStage(model_dir)
        self.meta = self.pre.meta
        self.max_rows = max_rows

    # ---- validation: every row, before anything is scored ----
    def rows(self, inputs: Inputs) -> Rows:
        tokens, sentences = inputs.get("tokens"), inputs.get("sentences")
        lengths, add_eos = inputs.get("sequence_lengths"), inputs.get("add_EOS")
        if tokens is not None and sentences is not None:
            raise RequestError("send either 'tokens' (+ 'sequence_lengths') or 'sentences', not both")
        if tokens is None and sentences is None:
            raise RequestError("send 'tokens' with 'sequence_lengths', or 'sentences': neither was given")
        if tokens is not None:
            if add_eos is not None:
                raise RequestError("add_EOS applies to 'sentences' only: token rows are scored exactly as given")
            rows = self._token_rows(_rows_of("tokens", np.asarray(tokens)), lengths)
        else:
            if lengths is not None:
                raise RequestError("'sequence_lengths' goes with 'tokens', not with 'sentences'")
            rows = self._sentence_rows(_rows_of("sentences", np.asarray(sentences)), add_eos)
        if len(rows.sequences) > self.max_rows:
            raise RequestError(
                f"{len(rows.sequences)} rows in one request, more than the maximum of {self.max_rows}",
                ErrorCode.REQUEST_TOO_LARGE,
            )
        return rows

    def _token_rows(self, tokens: np.ndarray, lengths_in: np.ndarray | None) -> Rows:
        b, t = tokens.shape
        if lengths_in is None:
            raise RequestError("'tokens' needs 'sequence_lengths' (the real length of each row)")
        lengths = np.asarray(lengths_in)
        if lengths.ndim == 2 and lengths.shape[1] == 1:
            lengths = lengths[:, 0]
        if lengths.ndim != 1 or lengths.shape[0] != b:
            raise RequestError(
                f"'sequence_lengths' must be [{b}, 1] or [{b}] (one length per row of 'tokens' [{b}, {t}]), "
                f"got shape {list(np.asarray(lengths_in).shape)}"
            )
        if tokens.dtype.kind not in "iu" or lengths.dtype.kind not in "iu":
            raise RequestError(f"'tokens' and 'sequence_lengths' must be integers, got {tokens.dtype}, {lengths.dtype}")
        vocab, limit = self.meta.vocab_size, self.pre.max_input_len
        sequences = []
        for i in range(b):
            n = int(lengths[i])
            if not 1 <= n <= t:
                raise RequestError(f"row {i}: sequence_lengths is {n}, expected 1..{t} (the width of 'tokens')")
            if n > limit:
                raise RequestError(
                    f"row {i} is {n} tokens, more than the engine's maximum input length of {limit} "
                    "(token rows are never cut: shorten the rollout)",
                    ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                )
            row = tokens[i, :n]
            low, high = int(row.min()), int(row.max())
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                at = int(np.flatnonzero(row == bad)[0])
                raise RequestError(f"row {i}: token id {bad} at position {at} is outside the vocabulary [0, {vocab})")
            sequences.append(row.astype(np.int64).tolist())
        return Rows(sequences, [False] * b)

    def _sentence_rows(self, sentences: np.ndarray, add_eos_in: np.ndarray | None) -> Rows:
        if sentences.shape[1] != 1:
            raise RequestError(f"'sentences' must be [B, 1] (one text per row), got shape {list(sentences.shape)}")
        add_eos = False
        if add_eos_in is not None:
            flags = np.asarray(add_eos_in).reshape(-1)
            if flags.dtype != np.bool_ or flags.size == 0 or flags.min() != flags.max():
                raise RequestError("'add_EOS' must be BOOL, one value for the whole request")
            add_eos = bool(flags[0])
        sequences, exceeded = [], []
        for i in range(sentences.shape[0]):
            try:
                raw = self.pre.bytes_input("sentences", sentences[i : i + 1])
                prepared = self.pre.sentences(self.pre.decode_text("sentences", raw), add_eos)
            except RequestError as e:
                raise RequestError(f"row {i}: {e}", e.code) from None
            sequences.append(prepared.input_ids)
            exceeded.append(prepared.truncated)
        return Rows(sequences, exceeded)

    # ---- the gathered engine logits → outputs ----
    def finish(self, rows: Rows, scores: Sequence[np.ndarray]) -> Outputs:
        """Per-row scores ([1, K] each, `self.head.scores_of` of the row's `generation_logits`, taken as each engine
        answer arrives so its full-vocab logits are not kept) → rewards [B, K] and exceeded [B, 1]."""
        return {
            "rewards": np.concatenate(scores, axis=0).astype(np.float32),
            "exceeded": np.asarray(rows.exceeded, dtype=np.int32)[:, None],
        }


def first_wave(sequences: Sequence[Sequence[int]], block_tokens: int = DEFAULT_BLOCK_TOKENS) -> list[bool]:
    """Which rows to send first: rows are grouped by the deepest leading block they share with another row (their
    common prompt, `block_tokens` per block), and the longest row of each group goes first; rows sharing no block
    with any other go first too."""
    chains = [block_hashes(seq, block_tokens) for seq in sequences]
    seen: dict[bytes, int] = {}
    for chain in chains:
        for name in chain:
            seen[name] = seen.get(name, 0) + 1
    leaders: dict[bytes, int] = {}
    first = [True] * len(sequences)
    for i in sorted(range(len(sequences)), key=lambda i: -len(sequences[i])):
        shared = [name for name in chains[i] if seen[name] > 1]  # shared blocks are a leading run of the chain
        if shared:
            if shared[-1] in leaders:
                first[i] = False
            else:
                leaders[shared[-1]] = i
    return first


# ---- Triton side (BLS fan-out): one request of B rows → B concurrent engine requests ---------------------------
MAX_ROWS_IN_FLIGHT = 256  # per execute(): bounds the engine responses (full-vocab logits) held in shared memory


def _engine_failure(pb: Any, response: Any, row: int) -> Failure | None:
    """The engine's answer for one row as a Failure, None when it succeeded. The engine's INVALID_ARG and
    UNAVAILABLE (e.g. its queue is full) keep their kind; anything else is INTERNAL."""
    if not response.has_error():
        return None
    error = response.error()
    code = error.code() if hasattr(error, "code") else None
    invalid = code is not None and code == pb.TritonError.INVALID_ARG
    unavailable = code is not None and code == getattr(pb.TritonError, "UNAVAILABLE", object())
    code, message = untag(error.message())
    if invalid and code is None:
        code = ErrorCode.INVALID_REQUEST
    return Failure(f"row {row}: {message}", invalid, retryable=unavailable, code=code)


async def execute_fanout(pb: Any, stage: RewardModelStage, requests: Sequence[Any]) -> list[Any]:
    """`reward_model`: validate each request's rows (`stage.rows`), send the rows of every request to the engine
    concurrently (`async_exec`, at most MAX_ROWS_IN_FLIGHT at a time; rows sharing a prompt after the first row of
    their group, `first_wave`), reduce each answer to its scores as it arrives, and build each request's outputs
    (`stage.finish`). A request with a bad row is rejected whole; an engine failure fails only the request whose
    row it was."""
    slots = asyncio.Semaphore(MAX_ROWS_IN_FLIGHT)

    async def score(rows: Rows, i: int) -> Any:
        async with slots:
            tensors = [pb.Tensor(name, array) for name, array in rows.engine_inputs(i).items()]
            request = pb.InferenceRequest(
                model_name=ENGINE_MODEL, inputs=tensors, requested_output_names=list(ENGINE_REQUESTED_OUTPUTS)
            )
            response = await request.async_exec()
            failure = _engine_failure(pb, response, i)
            if failure is not None:
                return failure
            return stage.head.scores_of(pb.get_output_tensor_by_name(response, ENGINE_OUTPUT).as_numpy())

    async def one(rows: Rows | Failure) -> Any:
        if isinstance(rows, Failure):
            return error_response(pb, rows)
        lead = first_wave(rows.sequences)
        answers: list[Any] = [None] * len(lead)
        for wave in ([i for i, x in enumerate(lead) if x], [i for i, x in enumerate(lead) if not x]):
            done = await asyncio.gather(*(score(rows, i) for i in wave), return_exceptions=True)
            for i, answer in zip(wave, done, strict=True):
                answers[i] = answer
        for answer in answers:
            if isinstance(answer, BaseException):
                return error_response(pb, Failure.of(answer))
            if isinstance(answer, Failure):
                return error_response(pb, answer)
        try:
            result = stage.finish(rows, answers)
        except Exception as e:
            return error_response(pb, Failure.caught(e))
        return pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in result.items()])

    prepared: list[Rows | Failure] = []
    for request in requests:
        try:
            prepared.append(stage.rows(read_inputs(pb, stage, request)))
        except Exception as e:
            prepared.append(Failure.caught(e))
    return list(await asyncio.gather(*(one(rows) for rows in prepared)))
