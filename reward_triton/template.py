"""SteerLM / HelpSteer2 prompt rendering, from the template in the converter's metadata.

A scored string is: system block, every turn's block, then the label prefix. For a multi-turn conversation every
assistant turn is scored on the prefix up to and including that turn followed by the label; the next turn
continues from the prefix WITHOUT the label (NeMo-Aligner's annotation semantics).
"""

from __future__ import annotations

from reward_triton.conversation import Conversation
from reward_triton.metadata import RewardMetadata


def system_text(conv: Conversation, meta: RewardMetadata) -> str:
    return meta.default_system_prompt if conv.system is None else conv.system


def _blocks(conv: Conversation, meta: RewardMetadata) -> list[str]:
    t = meta.template
    blocks = [t.system.format(system_text(conv, meta))]
    for turn in conv.turns:
        blocks.append((t.user if turn.role == "user" else t.assistant).format(turn.content))
    return blocks


def render(conv: Conversation, meta: RewardMetadata) -> str:
    """The string that scores the conversation's last (assistant) turn."""
    return "".join(_blocks(conv, meta)) + meta.template.label
