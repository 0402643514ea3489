"""Conversations on the client side: read the OpenAI / NeMo JSON forms, cut records into the prefix
conversations that score each labelled assistant turn, and format annotation labels.

The server does the templating and the full validation; this module only checks what it needs to build
requests, and says where a record is malformed.

NeMo record (NeMo-Aligner / HelpSteer2 jsonl line):
`{"system": str, "conversations": [{"from": str, "value": str, "label": ...}], "mask": "User"}`.
As in NeMo-Aligner's annotation script, a turn whose `from` equals `mask` is the user's and every other turn is the
assistant's (`"Bot"` with mask `"Human"`, `"assistant"` with mask `"user"`, ...); an assistant turn is scored when
its `label` is present and not null. Requests are sent in the canonical form (`User` / `Assistant`, mask `User`),
which the server templates exactly as NeMo-Aligner does.

OpenAI record: `{"messages": [{"role": ..., "content": ...}, ...]}`: every assistant message is scored.

Each scored turn is scored on the prefix up to and including it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from reward_triton.serving.conversation import ConversationError, JSONTextError, decode_json, form_of

NEMO_DEFAULT_MASK = "User"
NEMO_ASSISTANT = "Assistant"
STEERLM_MIN, STEERLM_MAX = 0.0, 4.0


class RecordError(ValueError):
    """A conversation or record cannot be used; the message says what and where."""


T = TypeVar("T")


def read_records(
    path: str | Path, parse: Callable[[int, bytes], T], refused: tuple[type[Exception], ...] = ()
) -> tuple[list[T], list[dict[str, Any]]]:
    """(parsed, errors) from a jsonl file: blank lines are skipped, a line `parse` refuses (RecordError or one of
    `refused`) becomes an error entry {"line", "error"}."""
    parsed: list[T] = []
    errors: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                parsed.append(parse(n, raw))
            except (RecordError, *refused) as e:
                errors.append({"line": n, "error": str(e)})
    return parsed, errors


def parse_json(text: str | bytes) -> Any:
    """JSON text → value, with a one-line error message."""
    try:
        value = decode_json(text)
    except JSONTextError as e:
        raise RecordError(str(e)) from None
    escaped = b"\\u" in text if isinstance(text, bytes | bytearray) else "\\u" in text
    if escaped:  # only a \u escape can spell a lone surrogate, which is not text (and cannot be sent)
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            code = ord(e.object[e.start])
            raise RecordError(
                f"contains an invalid Unicode code point U+{code:04X} (a lone surrogate escape)"
            ) from None
    return value


def conversation_form(data: Any) -> str:
    """'openai' or 'nemo' for a decoded conversation object (the server's detection); RecordError otherwise."""
    try:
        return form_of(data)
    except ConversationError as e:
        raise RecordError(str(e)) from None


def _turns(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise RecordError("'conversations' must be an array of turns")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversations[{i}] must be an object")
        if not isinstance(turn.get("from"), str):
            raise RecordError(f"conversations[{i}].from must be a string")
        if not isinstance(turn.get("value"), str):
            raise RecordError(f"conversations[{i}].value must be a string")
    return turns


def _mask(record: Mapping[str, Any]) -> str:
    mask = record.get("mask", NEMO_DEFAULT_MASK)
    if not isinstance(mask, str):
        raise RecordError("'mask' must be a string")
    return mask


def record_form(record: Any) -> str:
    """'nemo' or 'openai' for an annotation record; RecordError otherwise."""
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    form = conversation_form(record)
    if form == "openai":
        _messages(record)
    else:
        _turns(record)
        _mask(record)
    return form


def _messages(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise RecordError("'messages' must be an array of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"messages[{i}] must be an object")
        if not isinstance(message.get("role"), str):
            raise RecordError(f"messages[{i}].role must be a string")
        if "content" not in message:
            raise RecordError(f"messages[{i}].content is missing")
    return messages


def _is_assistant(record: Mapping[str, Any], form: str, turn: Mapping[str, Any]) -> bool:
    return turn["role"] == "assistant" if form == "openai" else turn["from"] != _mask(record)


def _turn_list(record: Mapping[str, Any], form: str) -> list[Mapping[str, Any]]:
    return _messages(record) if form == "openai" else _turns(record)


def labelled_turns(record: Mapping[str, Any]) -> list[int]:
    """Indices of the assistant turns to score: NeMo form, `from` is not the mask and `label` is present and not
    null; OpenAI form, every assistant message."""
    form = record_form(record)
    return [
        i
        for i, t in enumerate(_turn_list(record, form))
        if _is_assistant(record, form, t) and (form == "openai" or t.get("label") is not None)
    ]


def skipped_turns(record: Mapping[str, Any]) -> int:
    """Assistant turns that are not scored (NeMo form: `label` absent or null)."""
    form = record_form(record)
    turns = _turn_list(record, form)
    return sum(1 for t in turns if _is_assistant(record, form, t)) - len(labelled_turns(record))


def prefix_conversation(record: Mapping[str, Any], turn_index: int) -> dict[str, Any]:
    """The conversation up to and including turn `turn_index`, labels stripped; NeMo form in canonical speakers
    (`User` for the mask, `Assistant` for every other speaker); no system → the model's default."""
    form = record_form(record)
    turns = _turn_list(record, form)
    if not 0 <= turn_index < len(turns):
        raise RecordError(f"turn {turn_index} is out of range (the record has {len(turns)} turns)")
    if form == "openai":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in turns[: turn_index + 1]]}
    out: dict[str, Any] = {}
    if record.get("system") is not None:
        if not isinstance(record["system"], str):
            raise RecordError("'system' must be a string")
        out["system"] = record["system"]
    mask = _mask(record)
    out["conversations"] = [
        {"from": NEMO_DEFAULT_MASK if t["from"] == mask else NEMO_ASSISTANT, "value": t["value"]}
        for t in turns[: turn_index + 1]
    ]
    out["mask"] = NEMO_DEFAULT_MASK
    return out


def scoring_requests(record: Any) -> list[tuple[int, dict[str, Any]]]:
    """(turn index, prefix conversation) for every turn to score of a NeMo or OpenAI record, in turn order."""
    return [(i, prefix_conversation(record, i)) for i in labelled_turns(record)]


def format_value(value: float) -> str:
    """A score as text: repr of the float (the client keeps float32 values at their shortest exact decimal)."""
    if not math.isfinite(value):
        raise RecordError(f"score {value!r} is not a finite number")
    return repr(float(value))


def steerlm_value(value: float) -> int:
    """NeMo-Aligner's SteerLM label value: clamp to [0, 4], then round half to even."""
    return round(min(STEERLM_MAX, max(STEERLM_MIN, float(value))))


def label_values(scores: Mapping[str, float], names: Sequence[str], steerlm: bool = False) -> dict[str, float]:
    """The values `format_label` writes, as numbers (SteerLM integers with `steerlm`)."""
    return {n: float(steerlm_value(scores[n])) if steerlm else float(scores[n]) for n in names}


def format_label(scores: Mapping[str, float], names: Sequence[str], steerlm: bool = False) -> str:
    """`name:value,name:value` over `names` (raw floats, or SteerLM integers with `steerlm`)."""
    missing = [n for n in names if n not in scores]
    if missing:
        raise RecordError(f"the server returned no score for {', '.join(missing)}")
    if steerlm:
        return ",".join(f"{n}:{steerlm_value(scores[n])}" for n in names)
    return ",".join(f"{n}:{format_value(scores[n])}" for n in names)


def parse_label(label: str) -> dict[str, float]:
    """Inverse of `format_label` (for tests and downstream tools)."""
    out: dict[str, float] = {}
    for part in label.split(","):
        name, sep, value = part.partition(":")
        if not sep:
            raise RecordError(f"label part {part!r} is not name:value")
        out[name] = float(value)
    return out


@dataclass(frozen=True)
class TurnLabel:
    """What annotation writes on one scored turn: its label, or why it has none, and whether the scored
    conversation was shortened (`--truncate` dropped its oldest turns)."""

    label: str | None
    error: str | None = None
    truncated: bool = False


LABEL_KEY, ERROR_KEY, TRUNCATED_KEY = "label", "label_error", "label_truncated"


def apply_labels(record: dict[str, Any], labels: Mapping[int, TurnLabel | str]) -> dict[str, Any]:
    """A copy of the record whose turns at the given indices get their new labels (NeMo `conversations` turns or
    OpenAI `messages`): `label` is the label string, or null with `label_error` giving the reason when the turn
    could not be scored; `label_truncated: true` marks a label scored on a shortened conversation."""
    key = "messages" if "messages" in record else "conversations"
    out = dict(record)
    turns = [dict(t) for t in record[key]]
    for i, value in labels.items():
        item = value if isinstance(value, TurnLabel) else TurnLabel(value)
        turn = turns[i]
        turn.pop(ERROR_KEY, None)
        turn.pop(TRUNCATED_KEY, None)
        turn[LABEL_KEY] = item.label
        if item.error is not None:
            turn[ERROR_KEY] = item.error
        if item.truncated:
            turn[TRUNCATED_KEY] = True
    out[key] = turns
    return out


def openai_prompt_and_response(prompt: str, response: str, system: str | None = None) -> dict[str, Any]:
    """A one-exchange OpenAI-form conversation (used by `rank` and `evaluate`)."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return {"messages": messages}
