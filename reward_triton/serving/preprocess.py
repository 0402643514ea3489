"""Preprocessing stage: one request's input tensors → the engine's token ids, or a RequestError (INVALID_ARG).

Inputs (one of the first three; all BYTES with one element per request):
- `conversation`: JSON, OpenAI or NeMo form (`reward_triton.serving.conversation`), rendered with the metadata's
  template;
- `text`: an already templated string;
- `sentences`: NeMo-Aligner compatibility: already templated, silently truncated to the first max_input_len tokens
  (reported through `exceeded`), as NeMo-Aligner's own server does.
Optional `add_EOS` BOOL (`sentences` only, as NeMo-Aligner's server): append the tokenizer's EOS before truncating.
Optional `truncate` BOOL: for `conversation` only, drop the oldest turns (never the system prompt or the last
exchange) until the input fits; otherwise an over-length input is an error naming both numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from reward_triton.errors import RequestError
from reward_triton.metadata import RewardMetadata
from reward_triton.serving import prompt
from reward_triton.serving.conversation import Conversation, ConversationError, loads
from reward_triton.serving.results import Failure

TEXT_INPUTS = ("conversation", "text", "sentences")
DEFAULT_MAX_REQUEST_BYTES = 4 << 20


class Tokenizer:
    """SentencePiece as the reward model was trained with it: ids of the text only, no BOS and no EOS."""

    def __init__(self, model_file: str | os.PathLike[str]) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer model not found")
        self.path = path
        self._sp = spm.SentencePieceProcessor(model_file=str(path))

    @classmethod
    def from_metadata(cls, directory: str | os.PathLike[str], meta: RewardMetadata | None = None) -> Tokenizer:
        meta = meta or RewardMetadata.load(directory)
        return cls(meta.tokenizer_path(directory))

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def eos_id(self) -> int:
        """The EOS token id, -1 when the model has none."""
        return int(self._sp.eos_id())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, add_bos=False, add_eos=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._sp.decode(ids))


@dataclass(frozen=True)
class Prepared:
    input_ids: list[int]
    truncated: bool = False  # turns were dropped (conversation + truncate) or tokens cut (sentences)
    dropped_turns: int = 0
    original_tokens: int | None = None  # token count before truncation, when truncated

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def tensors(self) -> dict[str, np.ndarray]:
        """The stage's output tensors for one request (leading batch dim of 1)."""
        n = self.num_tokens
        return {
            "input_ids": np.asarray([self.input_ids], dtype=np.int32),
            "input_lengths": np.asarray([[n]], dtype=np.int32),
            "request_output_len": np.asarray([[1]], dtype=np.int32),
            "return_generation_logits": np.asarray([[True]], dtype=np.bool_),
            "num_input_tokens": np.asarray([[n]], dtype=np.int32),
            "truncated": np.asarray([[self.truncated]], dtype=np.bool_),
            "exceeded": np.asarray([[int(self.truncated)]], dtype=np.int32),
        }


class Preprocessor:
    """The `preprocessing` stage: `run(batch)` gives each request its token ids or its own Failure."""

    input_names = ("conversation", "text", "sentences", "truncate", "add_EOS")

    def __init__(
        self, meta: RewardMetadata, tokenizer: Tokenizer, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ) -> None:
        self.meta = meta
        self.tokenizer = tokenizer
        self.max_input_len = meta.max_input_len
        self.max_request_bytes = max_request_bytes

    @classmethod
    def from_dir(
        cls, directory: str | os.PathLike[str], max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ) -> Preprocessor:
        meta = RewardMetadata.load(directory)
        return cls(meta, Tokenizer.from_metadata(directory, meta), max_request_bytes)

    def run(self, batch: Sequence[Mapping[str, np.ndarray | None]]) -> list[dict[str, np.ndarray] | Failure]:
        out: list[dict[str, np.ndarray] | Failure] = []
        for inputs in batch:
            try:
                out.append(self.prepare(inputs).tensors())
            except Exception as e:
                out.append(Failure.caught(e))
        return out

    # ---- one decoded input ----
    def _render(self, conv: Conversation) -> str:
        return prompt.render(conv, self.meta.template, self.meta.default_system_prompt)

    def _too_long(self, n: int, what: str) -> RequestError:
        return RequestError(
            f"{what} is {n} tokens, more than the engine's maximum input length of {self.max_input_len} tokens"
        )

    def _encode(self, text: str, what: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise RequestError(f"{what} is empty after tokenization: nothing to score")
        return ids

    def conversation(self, conv: Conversation, truncate: bool = False) -> Prepared:
        ids = self._encode(self._render(conv), "conversation")
        if len(ids) <= self.max_input_len:
            return Prepared(ids)
        if not truncate:
            raise RequestError(
                f"{self._too_long(len(ids), 'conversation')} (set truncate=true to drop the oldest turns)"
            )
        groups = conv.exchanges()[:-1]  # the last exchange is never dropped
        if not groups:
            raise RequestError(f"{self._too_long(len(ids), 'conversation')}, and it has no earlier turns to drop")

        def attempt(k: int) -> list[int]:
            return self._encode(self._render(conv.without_turns(0, groups[k - 1][1])), "conversation")

        shortest = attempt(len(groups))
        if len(shortest) > self.max_input_len:
            raise RequestError(
                f"{self._too_long(len(ids), 'conversation')}; even after dropping all {groups[-1][1]} earlier turns "
                f"the system prompt and the last exchange are {len(shortest)} tokens"
            )
        lo, hi, best = 1, len(groups), shortest  # smallest number of dropped exchanges that fits
        while lo < hi:
            mid = (lo + hi) // 2
            cand = attempt(mid)
            if len(cand) <= self.max_input_len:
                hi, best = mid, cand
            else:
                lo = mid + 1
        return Prepared(best, truncated=True, dropped_turns=groups[hi - 1][1], original_tokens=len(ids))

    def text(self, text: str) -> Prepared:
        ids = self._encode(text, "text")
        if len(ids) > self.max_input_len:
            raise self._too_long(len(ids), "text")
        return Prepared(ids)

    def sentences(self, text: str, add_eos: bool = False) -> Prepared:
        ids = self._encode(text, "sentences")
        if add_eos:
            if self.tokenizer.eos_id < 0:
                raise RequestError("add_EOS is true but the tokenizer has no EOS token")
            ids.append(self.tokenizer.eos_id)
        if len(ids) > self.max_input_len:
            return Prepared(ids[: self.max_input_len], truncated=True, original_tokens=len(ids))
        return Prepared(ids)

    # ---- Triton request tensors ----
    def bytes_input(self, name: str, array: np.ndarray) -> bytes:
        if array.dtype != np.object_ and array.dtype.kind not in "SU":
            raise RequestError(f"input '{name}' must be BYTES, got {array.dtype}")
        if array.size != 1:
            raise RequestError(
                f"input '{name}' must hold exactly one element per request, got shape {list(array.shape)} "
                "(send one request per conversation)"
            )
        value = array.reshape(-1)[0]
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes | bytearray):
            raise RequestError(f"input '{name}' must be BYTES, got {type(value).__name__}")
        if len(value) > self.max_request_bytes:
            raise RequestError(
                f"input '{name}' is {len(value)} bytes, more than the request limit of {self.max_request_bytes} "
                "bytes (max_request_bytes)"
            )
        return bytes(value)

    @staticmethod
    def decode_text(name: str, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"input '{name}' is not valid UTF-8 (invalid byte at offset {e.start})") from e

    @staticmethod
    def _flag(name: str, array: np.ndarray | None) -> bool:
        if array is None:
            return False
        if array.size != 1:
            raise RequestError(f"input '{name}' must hold exactly one element, got shape {list(array.shape)}")
        if array.dtype != np.bool_:
            raise RequestError(f"input '{name}' must be BOOL, got {array.dtype}")
        return bool(array.reshape(-1)[0])

    def prepare(self, inputs: Mapping[str, np.ndarray | None]) -> Prepared:
        """Request tensors by input name (absent optional inputs missing or None) → Prepared."""
        given = [name for name in TEXT_INPUTS if inputs.get(name) is not None]
        if len(given) != 1:
            names = " or ".join(f"'{n}'" for n in TEXT_INPUTS[:2])
            if not given:
                raise RequestError(f"send exactly one of the inputs {names}: neither was given")
            raise RequestError(f"send exactly one of the inputs {names}, got {' and '.join(repr(g) for g in given)}")
        name = given[0]
        array = inputs[name]
        assert array is not None
        truncate = self._flag("truncate", inputs.get("truncate"))
        add_eos = self._flag("add_EOS", inputs.get("add_EOS"))
        if add_eos and name != "sentences":
            raise RequestError("add_EOS applies to 'sentences' input only (the reward_model model)")
        raw = self.bytes_input(name, array)
        if name == "conversation":
            try:
                conv = loads(raw)
            except ConversationError as e:
                raise RequestError(str(e)) from e
            return self.conversation(conv, truncate=truncate)
        text = self.decode_text(name, raw)
        if name == "sentences":
            return self.sentences(text, add_eos)
        if truncate:
            ids = self._encode(text, "text")
            if len(ids) > self.max_input_len:
                raise RequestError(
                    f"{self._too_long(len(ids), 'text')}; truncate applies to 'conversation' input only "
                    "(templated text has no turns to drop)"
                )
            return Prepared(ids)
        return self.text(text)
