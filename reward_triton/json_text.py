"""Decode JSON text from a request or an input line, with one clear message for every way it can be unreadable.

Shared by the server's conversation parser (reward_triton/conversation.py) and the client's record reader
(client/conversations.py): invalid UTF-8, invalid JSON, nesting deeper than the parser allows, and integer literals
beyond Python's conversion limit all become `JSONTextError`, never a crash.
"""

from __future__ import annotations

import json
from typing import Any


class JSONTextError(ValueError):
    """The text is not readable JSON; the message says why and where."""


def decode(text: str | bytes, what: str) -> Any:
    """JSON text (str, or UTF-8 bytes) → value; `what` names the text in the message ("conversation", "line")."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONTextError(f"{what} is not valid UTF-8 (invalid byte at offset {e.start})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONTextError(f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError:
        raise JSONTextError(f"{what} JSON is nested too deeply (arrays/objects within each other)") from None
    except ValueError as e:  # e.g. an integer literal longer than Python's conversion limit
        raise JSONTextError(f"{what} JSON has a value that cannot be read: {e}") from None
