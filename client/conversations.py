"""Conversations on the client side: read the OpenAI / NeMo JSON forms, cut NeMo records into the prefix
conversations that score each labelled assistant turn, and format annotation labels.

The server does the templating and the full validation; this module only checks what it needs to build
requests, and says where a record is malformed.

NeMo record (NeMo-Aligner / HelpSteer2 jsonl line):
`{"system": str, "conversations": [{"from": "User"|"Assistant", "value": str, "label": ...}], "mask": "User"}`.
A turn is scored when it is an assistant turn (its `from` is not the mask) with a non-null `label`, exactly as
NeMo-Aligner's annotation script selects them. It is scored on the prefix up to and including that turn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from reward_triton.serving.conversation import JSONTextError, decode_json

NEMO_DEFAULT_MASK = "User"
STEERLM_MIN, STEERLM_MAX = 0.0, 4.0


class RecordError(ValueError):
    """A conversation or record cannot be used; the message says what and where."""


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
    """'openai' or 'nemo' for a decoded conversation object; RecordError otherwise."""
    if not isinstance(data, dict):
        raise RecordError(f"a conversation must be a JSON object, got {type(data).__name__}")
    has_openai, has_nemo = "messages" in data, "conversations" in data
    if has_openai and has_nemo:
        raise RecordError("a conversation has either 'messages' (OpenAI form) or 'conversations' (NeMo form), not both")
    if has_openai:
        return "openai"
    if has_nemo:
        return "nemo"
    raise RecordError("a conversation needs 'messages' (OpenAI form) or 'conversations' (NeMo form)")


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


def labelled_turns(record: Mapping[str, Any]) -> list[int]:
    """Indices of the assistant turns to score: `from` is not the mask and `label` is present and not null."""
    mask = _mask(record)
    return [i for i, t in enumerate(_turns(record)) if t["from"] != mask and t.get("label") is not None]


def prefix_conversation(record: Mapping[str, Any], turn_index: int) -> dict[str, Any]:
    """The NeMo-form conversation up to and including turn `turn_index` (labels stripped; no system → default)."""
    turns = _turns(record)
    if not 0 <= turn_index < len(turns):
        raise RecordError(f"turn {turn_index} is out of range (the record has {len(turns)} turns)")
    out: dict[str, Any] = {}
    if record.get("system") is not None:
        if not isinstance(record["system"], str):
            raise RecordError("'system' must be a string")
        out["system"] = record["system"]
    out["conversations"] = [{"from": t["from"], "value": t["value"]} for t in turns[: turn_index + 1]]
    out["mask"] = _mask(record)
    return out


def scoring_requests(record: Any) -> list[tuple[int, dict[str, Any]]]:
    """(turn index, prefix conversation) for every labelled assistant turn of a NeMo record, in turn order."""
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    if "conversations" not in record:
        raise RecordError("the record has no 'conversations' (NeMo form expected)")
    return [(i, prefix_conversation(record, i)) for i in labelled_turns(record)]


def format_value(value: float) -> str:
    """A score as text: repr of the float (the client keeps float32 values at their shortest exact decimal)."""
    if not math.isfinite(value):
        raise RecordError(f"score {value!r} is not a finite number")
    return repr(float(value))


def steerlm_value(value: float) -> int:
    """NeMo-Aligner's SteerLM label value: clamp to [0, 4], then round half to even."""
    return round(min(STEERLM_MAX, max(STEERLM_MIN, float(value))))


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


def apply_labels(record: dict[str, Any], labels: Mapping[int, str]) -> dict[str, Any]:
    """A copy of the record whose turns at the given indices get the new label strings."""
    out = dict(record)
    turns = [dict(t) for t in record["conversations"]]
    for i, label in labels.items():
        turns[i]["label"] = label
    out["conversations"] = turns
    return out


def openai_prompt_and_response(prompt: str, response: str, system: str | None = None) -> dict[str, Any]:
    """A one-exchange OpenAI-form conversation (used by `rank` and `evaluate`)."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return {"messages": messages}
