"""Request bodies: read with a size limit, decode JSON, validate against a pydantic schema — each failure a 400
(413 for size) whose message names the field (`query[3]`, `messages[0].content`, ...)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from gateway.errors import ApiError, InvalidRequest

M = TypeVar("M", bound=BaseModel)
SCALAR_BRANCHES = frozenset({"str", "int", "float", "bool"})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 when Content-Length or the bytes actually streamed exceed `limit`."""
    too_large = ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise InvalidRequest(f"invalid Content-Length {length!r}") from None
        if declared > limit:
            raise too_large
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def where(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a field path: ('messages', 0, 'content') → 'messages[0].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in SCALAR_BRANCHES or "[" in part or part.startswith("function-"):
            continue  # union branch names pydantic adds ('str', 'list[ContentPart]', 'literal[...]', ...)
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def decode(body: bytes) -> dict[str, Any]:
    """JSON object from the body; 400 naming the problem otherwise."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InvalidRequest("request body JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def validate(data: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        lines = list(dict.fromkeys(f"{where(err['loc'])}: {err['msg']}" for err in errors))  # unique, in order
        problems = "; ".join(lines[:4])
        more = f" (and {len(lines) - 4} more)" if len(lines) > 4 else ""
        param = where(errors[0]["loc"]).split(".")[0].split("[")[0] if errors else None
        raise InvalidRequest(f"invalid request: {problems}{more}", param=param) from None


def parse(body: bytes, model: type[M]) -> M:
    return validate(decode(body), model)
