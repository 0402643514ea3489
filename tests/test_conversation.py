"""Conversation parsing (OpenAI and NeMo forms) and SteerLM rendering, incl. per-turn prefixes."""

from __future__ import annotations

import json

import pytest
from convo import from_turns

from reward_triton.metadata import DEFAULT_SYSTEM_PROMPT, PromptTemplate
from reward_triton.serving import prompt
from reward_triton.serving.conversation import Conversation, ConversationError, Turn, loads, parse


def _render(conv: Conversation) -> str:
    return prompt.render(conv, PromptTemplate(), DEFAULT_SYSTEM_PROMPT)


def test_openai_and_nemo_forms_agree() -> None:
    openai = {
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
        ]
    }
    nemo = {
        "system": "Be nice.",
        "conversations": [{"from": "User", "value": "Hi"}, {"from": "Assistant", "value": "Hello", "label": None}],
        "mask": "User",
    }
    a, b = parse(openai), loads(json.dumps(nemo).encode())
    assert a == b == Conversation(turns=(Turn("user", "Hi"), Turn("assistant", "Hello")), system="Be nice.")


def test_nemo_custom_mask_and_missing_system() -> None:
    conv = parse(
        {"conversations": [{"from": "Human", "value": "q"}, {"from": "Assistant", "value": "a"}], "mask": "Human"}
    )
    assert conv.system is None and conv.turns[0].role == "user"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[1, 2]", "got array"),
        (b"{}", "needs 'messages'"),
        (b'{"messages": [], "conversations": []}', "both"),
        (b'{"messages": {}}', "messages must be an array"),
        (b'{"messages": []}', "empty"),
        (b'{"messages": [{"role": "user", "content": "q"}]}', "no assistant turn"),
        (b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}', "must end with"),
        (b'{"messages": [{"role": "tool", "content": "x"}]}', "'tool' is not supported"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "content must be a string, got number"),
        (b'{"messages": [{"role": "user"}]}', "content is missing"),
        (b'{"messages": ["hi"]}', "messages[0] must be an object"),
        (b'{"messages": [{"role": 1, "content": "x"}]}', "role must be a string"),
        (
            b'{"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}',
            "only the first message",
        ),
        (b'{"conversations": [{"from": "Bot", "value": "a"}]}', "'Bot' is not supported"),
        (b'{"conversations": [{"from": "Assistant", "value": null}]}', "value must be a string, got null"),
        (b'{"conversations": "x"}', "conversations must be an array"),
        (b'{"system": 3, "conversations": []}', "system must be a string"),
    ],
)
def test_errors_name_the_problem(payload: bytes, needle: str) -> None:
    with pytest.raises(ConversationError, match=None) as e:
        loads(payload)
    assert needle in str(e.value)


def test_render_single_turn_default_system() -> None:
    conv = from_turns([("user", "What is 1+1?"), ("assistant", "2")])
    assert _render(conv) == (
        f"<extra_id_0>System\n{DEFAULT_SYSTEM_PROMPT}\n<extra_id_1>User\nWhat is 1+1?\n"
        "<extra_id_1>Assistant\n2\n<extra_id_2>"
    )


def test_prefixes_continue_without_label() -> None:
    """Each assistant turn is scored on its prefix conversation (the client sends those); a later prefix continues
    the earlier one without its label (NeMo-Aligner's annotation semantics)."""
    conv = from_turns([("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")], system="S")
    first = "<extra_id_0>System\nS\n<extra_id_1>User\nu1\n<extra_id_1>Assistant\na1\n"
    assert _render(conv.without_turns(2, 4)) == first + "<extra_id_2>"
    assert _render(conv) == first + "<extra_id_1>User\nu2\n<extra_id_1>Assistant\na2\n<extra_id_2>"
    assert _render(from_turns([("user", "x"), ("assistant", "")], system="")).startswith("<extra_id_0>System\n\n")


def test_exchanges_group_user_turns_with_replies() -> None:
    conv = from_turns(
        [("assistant", "hi"), ("user", "a"), ("assistant", "b"), ("assistant", "c"), ("user", "d"), ("assistant", "e")]
    )
    assert conv.exchanges() == [(0, 1), (1, 4), (4, 6)]
