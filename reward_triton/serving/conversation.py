"""Conversations as the reward model sees them: parsed from the OpenAI or the NeMo JSON form, with clear errors.

OpenAI form: `{"messages": [{"role": "system"|"user"|"assistant", "content": str | [{"type": "text", "text": str}]}]}`
(at most one system message, and only first).
NeMo form (NeMo-Aligner / HelpSteer2 jsonl lines): `{"system": str, "conversations": [{"from": ..., "value": str}],
"mask": "User"}`: turns whose `from` equals `mask` are user turns, turns from "Assistant" are assistant turns.

The parsed conversation keeps `system=None` when the request has no system prompt, so the template stage can
apply the model's default one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from reward_triton.errors import ErrorCode, RequestError

Role = Literal["user", "assistant"]
OPENAI_ROLES = ("system", "user", "assistant")
NEMO_ASSISTANT = "Assistant"
NEMO_DEFAULT_MASK = "User"


class ConversationError(RequestError):
    """The request's conversation is malformed; the message says what is wrong and where."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_CONVERSATION) -> None:
        super().__init__(message, code)


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    system: str | None = None

    def __post_init__(self) -> None:
        if not self.turns:
            raise ConversationError("conversation is empty: it needs at least one assistant turn to score")
        last = self.turns[-1]
        if last.role != "assistant":
            if not any(t.role == "assistant" for t in self.turns):
                raise ConversationError(
                    "conversation has no assistant turn: the reward model scores an assistant reply"
                )
            raise ConversationError(
                f"the last turn (turn {len(self.turns) - 1}) is from the {last.role}: "
                "the conversation must end with the assistant turn to score"
            )

    def exchanges(self) -> list[tuple[int, int]]:
        """Turn index ranges [start, stop): each starts at a user turn (leading assistant turns form their own)."""
        starts = [0] + [i for i, t in enumerate(self.turns) if t.role == "user" and i > 0]
        return [(s, e) for s, e in zip(starts, starts[1:] + [len(self.turns)], strict=True)]

    def without_turns(self, start: int, stop: int) -> Conversation:
        return Conversation(turns=self.turns[:start] + self.turns[stop:], system=self.system)


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConversationError(f"{where} must be {what}, got {_type_name(value)}")
    if isinstance(value, str):
        _check_text(value, where)
    return value


def _check_text(value: str, where: str) -> None:
    """JSON escapes can spell lone UTF-16 surrogates (\\ud800), which are not text: no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConversationError(
            f"{where} contains an invalid Unicode code point U+{ord(value[e.start]):04X} at character {e.start} "
            "(a lone surrogate from a \\u escape is not text)"
        ) from None


def _openai_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        _check_text(content, where)
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            _expect(part, dict, f"{where}[{j}]", "an object")
            if part.get("type") != "text":
                raise ConversationError(f"{where}[{j}].type must be 'text', got {part.get('type')!r}")
            parts.append(_expect(part.get("text"), str, f"{where}[{j}].text", "a string"))
        return "".join(parts)
    raise ConversationError(f"{where} must be a string, got {_type_name(content)}")


def from_openai(messages: Any) -> Conversation:
    _expect(messages, list, "messages", "an array")
    system: str | None = None
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _expect(message, dict, where, "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise ConversationError(f"{where}.role must be a string, got {_type_name(role)}")
        if role not in OPENAI_ROLES:
            raise ConversationError(f"{where}.role {role!r} is not supported (use one of {', '.join(OPENAI_ROLES)})")
        if "content" not in message:
            raise ConversationError(f"{where}.content is missing")
        content = _openai_content(message["content"], f"{where}.content")
        if role == "system":
            if i != 0:
                raise ConversationError(f"{where} is a system message: only the first message may be one")
            system = content
        else:
            turns.append(Turn(role=role, content=content))  # type: ignore[arg-type]
    return Conversation(turns=tuple(turns), system=system)


def from_nemo(record: dict[str, Any]) -> Conversation:
    system = record.get("system")
    if system is not None:
        _expect(system, str, "system", "a string")
    mask = record.get("mask", NEMO_DEFAULT_MASK)
    _expect(mask, str, "mask", "a string")
    conversations = _expect(record.get("conversations"), list, "conversations", "an array")
    turns: list[Turn] = []
    for i, turn in enumerate(conversations):
        where = f"conversations[{i}]"
        _expect(turn, dict, where, "an object")
        sender = turn.get("from")
        if not isinstance(sender, str):
            raise ConversationError(f"{where}.from must be a string, got {_type_name(sender)}")
        if sender == mask:
            role: Role = "user"
        elif sender == NEMO_ASSISTANT:
            role = "assistant"
        else:
            raise ConversationError(
                f"{where}.from {sender!r} is not supported (use {mask!r} for user turns, {NEMO_ASSISTANT!r} for "
                "assistant turns)"
            )
        if "value" not in turn:
            raise ConversationError(f"{where}.value is missing")
        turns.append(Turn(role=role, content=_expect(turn["value"], str, f"{where}.value", "a string")))
    return Conversation(turns=tuple(turns), system=system)


def form_of(data: Any) -> str:
    """'openai' or 'nemo': which form a decoded JSON value is in (the server's and the client's one detection)."""
    if not isinstance(data, dict):
        raise ConversationError(
            "conversation must be a JSON object with 'messages' (OpenAI form) or 'conversations' (NeMo form), "
            f"got {_type_name(data)}"
        )
    has_openai, has_nemo = "messages" in data, "conversations" in data
    if has_openai and has_nemo:
        raise ConversationError("conversation has both 'messages' (OpenAI form) and 'conversations' (NeMo form)")
    if has_openai:
        return "openai"
    if has_nemo:
        return "nemo"
    keys = ", ".join(repr(k) for k in list(data)[:5]) or "none"
    raise ConversationError(
        f"conversation needs 'messages' (OpenAI form) or 'conversations' (NeMo form); keys found: {keys}"
    )


def parse(data: Any) -> Conversation:
    """A decoded JSON value in either form → Conversation."""
    return from_openai(data["messages"]) if form_of(data) == "openai" else from_nemo(data)


# ---- JSON text (also the client's record reader, client/conversations.py) -------------------------------------
class JSONTextError(ValueError):
    """The text is not readable JSON; the message says why and where."""


def decode_json(text: str | bytes, what: str = "") -> Any:
    """JSON text (str, or UTF-8 bytes) → value; `what` names the text in the message (e.g. "conversation")."""
    subject = f"{what} is " if what else ""
    json_of = f"{what} JSON" if what else "JSON"
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONTextError(f"{subject}not valid UTF-8 (invalid byte at offset {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        reason = e.msg.removesuffix(" at")  # "Invalid control character at": the position follows
        raise JSONTextError(f"{subject}not valid JSON: {reason} at line {e.lineno} column {e.colno}") from e
    except RecursionError:
        raise JSONTextError(f"{json_of} is nested too deeply (arrays/objects within each other)") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's conversion limit
        raise JSONTextError(f"{json_of} has a value that cannot be read: {e}") from None


def loads(text: str | bytes) -> Conversation:
    """JSON text (str, or UTF-8 bytes) → Conversation."""
    try:
        data = decode_json(text, "conversation")
    except JSONTextError as e:
        raise ConversationError(str(e), ErrorCode.INVALID_JSON) from None
    return parse(data)
