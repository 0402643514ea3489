"""Test helper: build a Conversation from (role, content) pairs through the public OpenAI-form parser."""

from __future__ import annotations

from collections.abc import Sequence

from reward_triton.serving.conversation import Conversation, parse


def from_turns(turns: Sequence[tuple[str, str]], system: str | None = None) -> Conversation:
    """[("user", "hi"), ("assistant", "hello")] → Conversation."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    return parse({"messages": messages + [{"role": r, "content": c} for r, c in turns]})
