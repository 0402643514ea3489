"""Reading a Triton model config (as the JSON Triton hands a python model, or as a client fetches it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """The config's `parameters` ({key: {string_value: ...}}) as {key: value}; protobuf omits empty strings."""
    return {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
