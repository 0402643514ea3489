"""The prompt renderer: a conversation → the string whose last position carries the reward (the SteerLM template).

A scored string is: system block, every turn's block, then the label prefix. For a multi-turn conversation every
assistant turn is scored on the prefix up to and including that turn followed by the label; the next turn
continues from the prefix WITHOUT the label (NeMo-Aligner's annotation semantics, docs/formats.md). The template and
the default system prompt come from the checkpoint's metadata (`RewardMetadata.template`, `.default_system_prompt`).
"""

from __future__ import annotations

from reward_triton.metadata import PromptTemplate
from reward_triton.serving.conversation import Conversation


def render(conv: Conversation, template: PromptTemplate, default_system: str) -> str:
    """The string that scores the conversation's last (assistant) turn; a conversation without a system turn gets
    `default_system`."""
    blocks = [template.system.format(default_system if conv.system is None else conv.system)]
    blocks += [(template.user if t.role == "user" else template.assistant).format(t.content) for t in conv.turns]
    return "".join(blocks) + template.label
