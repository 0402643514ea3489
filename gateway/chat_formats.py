"""Policy chat formats → messages: read back a whole decoded sequence (prompt + response) as a conversation.

RL trainers such as OpenRLHF send the reward server the policy's sequence decoded to text, in the POLICY's chat
template, often with its BOS / EOS / padding text around it. This module turns such a string back into OpenAI
messages (`system` / `user` / `assistant`), which the ensemble then renders in the reward model's own template.

Formats (`FORMATS`; `detect` picks per string, by whichever format's opening marker occurs first):
- `chatml`:  `<|im_start|>role\\ncontent<|im_end|>\\n` (Qwen, many fine-tunes)
- `llama3`:  `<|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`
- `llama2`:  `<s>[INST] <<SYS>>\\nsystem\\n<</SYS>>\\n\\nuser [/INST] assistant </s><s>[INST] ...` (also Mistral's
  `[INST] ... [/INST]` without a system block)
- `gemma`:   `<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n...<end_of_turn>\\n` (Gemma has no
  system role: its template puts a system prompt at the head of the first user turn, and so it is read back)
- `steerlm`: this reward model's own template, `<extra_id_0>System\\n...\\n<extra_id_1>User\\n...\\n`
  `<extra_id_1>Assistant\\n...\\n<extra_id_2>` (reward_triton.metadata.PromptTemplate)

The last assistant turn may lack its end marker (a response cut at the policy's maximum length). Known special
tokens (`NOISE_TOKENS`, plus any the caller adds) and whitespace are skipped between turns and at both ends, so
left / right padding and repeated EOS text are tolerated; inside a turn nothing is removed. System turns are kept.
Any other text outside the turns is an error naming its position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from reward_triton.metadata import PromptTemplate
from reward_triton.serving.conversation import ConversationError, from_openai

ChatFormat = Literal["chatml", "llama3", "llama2", "gemma", "steerlm"]
FORMATS: tuple[ChatFormat, ...] = ("chatml", "llama3", "llama2", "gemma", "steerlm")
AUTO = "auto"

# BOS / EOS / padding text of common policies; skipped outside turns, never inside one
NOISE_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|pad|>",
    "<pad>",
    "<s>",
    "</s>",
    "<bos>",
    "<eos>",
    "[PAD]",
)
ROLES = ("system", "user", "assistant")
_STEERLM = PromptTemplate()


class ChatFormatError(ValueError):
    """The text is not a conversation in the expected chat format; the message says where and why."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def _preview(text: str, at: int, width: int = 40) -> str:
    snippet = text[at : at + width]
    return repr(snippet + ("..." if len(text) > at + width else ""))


class _Scanner:
    """Walks the text: skips whitespace and noise tokens, reports unexpected text with its position."""

    def __init__(self, text: str, noise: Sequence[str]) -> None:
        self.text = text
        self.noise = sorted(set(noise), key=len, reverse=True)  # longest first: '<|eot_id|>' before '<s>'
        self.pos = 0

    def skip_noise(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text):
            if text[pos].isspace():
                pos += 1
                continue
            for token in self.noise:
                if text.startswith(token, pos):
                    pos += len(token)
                    break
            else:
                break
        self.pos = pos

    @property
    def done(self) -> bool:
        return self.pos >= len(self.text)

    def unexpected(self, what: str) -> ChatFormatError:
        return ChatFormatError(f"expected {what} at character {self.pos}, found {_preview(self.text, self.pos)}")

    def strip_trailing_noise(self, content: str) -> str:
        """A last turn without its end marker: drop padding / EOS text (and whitespace before it) at its end."""
        changed = True
        while changed:
            changed = False
            stripped = content.rstrip()
            for token in self.noise:
                if stripped.endswith(token):
                    content, changed = stripped[: -len(token)], True
                    break
        return content


def _role(name: str, fmt: str, at: int, aliases: dict[str, str] | None = None) -> str:
    role = (aliases or {}).get(name, name)
    if role not in ROLES:
        raise ChatFormatError(
            f"{fmt}: role {name!r} at character {at} is not supported (the reward model scores "
            f"{', '.join(ROLES)} turns)"
        )
    return role


def _header_blocks(
    text: str,
    noise: Sequence[str],
    fmt: str,
    start: str,
    header: re.Pattern[str],
    end: str,
    aliases: dict[str, str] | None = None,
) -> list[Message]:
    """Formats made of `start ROLE header-end CONTENT end` blocks (ChatML, Llama 3, Gemma)."""
    scan = _Scanner(text, noise)
    out: list[Message] = []
    scan.skip_noise()
    while not scan.done:
        if not text.startswith(start, scan.pos):
            raise scan.unexpected(f"{start!r} (a {fmt} turn)")
        m = header.match(text, scan.pos + len(start))
        if m is None:
            raise ChatFormatError(f"{fmt}: malformed turn header at character {scan.pos}: {_preview(text, scan.pos)}")
        role = _role(m.group("role"), fmt, scan.pos, aliases)
        body = m.end()
        stop = text.find(end, body)
        following = text.find(start, body)
        if stop < 0 or (0 <= following < stop):
            if following >= 0:
                raise ChatFormatError(
                    f"{fmt}: the {role} turn at character {scan.pos} has no {end!r} before the next turn"
                )
            out.append(Message(role, scan.strip_trailing_noise(text[body:])))  # a response cut short
            break
        out.append(Message(role, text[body:stop]))
        scan.pos = stop + len(end)
        scan.skip_noise()
    return out


_CHATML_HEADER = re.compile(r"(?P<role>[^\s<>|]+)\n")
_LLAMA3_HEADER = re.compile(r"(?P<role>[^<>|]+)<\|end_header_id\|>\n\n")


def parse_chatml(text: str, noise: Sequence[str] = NOISE_TOKENS) -> list[Message]:
    return _header_blocks(text, noise, "chatml", "<|im_start|>", _CHATML_HEADER, "<|im_end|>")


def parse_llama3(text: str, noise: Sequence[str] = NOISE_TOKENS) -> list[Message]:
    return _header_blocks(text, noise, "llama3", "<|start_header_id|>", _LLAMA3_HEADER, "<|eot_id|>")


def parse_gemma(text: str, noise: Sequence[str] = NOISE_TOKENS) -> list[Message]:
    aliases = {"model": "assistant", "assistant": "assistant"}
    return _header_blocks(text, noise, "gemma", "<start_of_turn>", _CHATML_HEADER, "<end_of_turn>", aliases)


_SYS = re.compile(r"\s*<<SYS>>\n?(?P<system>.*?)\n?<</SYS>>\s*", re.S)


def parse_llama2(text: str, noise: Sequence[str] = NOISE_TOKENS) -> list[Message]:
    """`[INST] user [/INST] assistant </s>` exchanges; `<<SYS>>...<</SYS>>` opens the first user turn."""
    scan = _Scanner(text, noise)
    out: list[Message] = []
    scan.skip_noise()
    while not scan.done:
        if not text.startswith("[INST]", scan.pos):
            raise scan.unexpected("'[INST]' (a llama2 turn)")
        body = scan.pos + len("[INST]")
        close = text.find("[/INST]", body)
        if close < 0:
            raise ChatFormatError(f"llama2: the [INST] at character {scan.pos} has no closing [/INST]")
        user = text[body:close]
        if not out:
            m = _SYS.match(user)
            if m is not None:
                out.append(Message("system", m.group("system")))
                user = user[m.end() :]
        elif "<<SYS>>" in user:
            raise ChatFormatError(f"llama2: a <<SYS>> block at character {body} is not in the first [INST]")
        out.append(Message("user", user.strip()))
        answer = close + len("[/INST]")
        stop = text.find("</s>", answer)
        following = text.find("[INST]", answer)
        if stop < 0 or (0 <= following < stop):
            end = following if following >= 0 else len(text)
            content = scan.strip_trailing_noise(text[answer:end])
            if following >= 0 and content.strip():
                raise ChatFormatError(
                    f"llama2: the assistant turn at character {answer} has no '</s>' before the next [INST]"
                )
            if content.strip() or following < 0:
                out.append(Message("assistant", content.strip()))
            scan.pos = end
        else:
            out.append(Message("assistant", text[answer:stop].strip()))
            scan.pos = stop + len("</s>")
        scan.skip_noise()
    return out


_STEERLM_TURN = re.compile(r"<extra_id_1>(?P<role>[^\n<]*)\n")


def parse_steerlm(text: str, noise: Sequence[str] = NOISE_TOKENS) -> list[Message]:
    """This reward model's own template; the trailing `<extra_id_2>` label prefix (and anything after it) is
    optional. Each block's content ends at the newline before the next `<extra_id_`."""
    t = _STEERLM
    system_open = t.system.split("{}")[0]  # '<extra_id_0>System\n'
    label = t.label
    scan = _Scanner(text, noise)
    scan.skip_noise()
    out: list[Message] = []
    end = text.find(label, scan.pos)
    body_end = len(text) if end < 0 else end
    if text.startswith(system_open, scan.pos):
        start = scan.pos + len(system_open)
        nxt = text.find("<extra_id_1>", start)
        stop = nxt if nxt >= 0 else body_end
        out.append(Message("system", _drop_newline(text[start:stop])))
        scan.pos = stop
    while scan.pos < body_end:
        m = _STEERLM_TURN.match(text, scan.pos)
        if m is None:
            raise scan.unexpected("'<extra_id_1>User' or '<extra_id_1>Assistant' (a steerlm turn)")
        name = m.group("role")
        if name not in ("User", "Assistant"):
            raise ChatFormatError(f"steerlm: turn name {name!r} at character {scan.pos} is not 'User' or 'Assistant'")
        nxt = text.find("<extra_id_", m.end())
        stop = body_end if nxt < 0 or nxt > body_end else nxt
        content = text[m.end() : stop]
        content = _drop_newline(content) if stop < len(text) else scan.strip_trailing_noise(_drop_newline(content))
        out.append(Message(name.lower(), content))
        scan.pos = stop
    return out


def _drop_newline(content: str) -> str:
    return content[:-1] if content.endswith("\n") else content


PARSERS: dict[ChatFormat, Callable[[str, Sequence[str]], list[Message]]] = {
    "chatml": parse_chatml,
    "llama3": parse_llama3,
    "llama2": parse_llama2,
    "gemma": parse_gemma,
    "steerlm": parse_steerlm,
}
# the marker that opens a conversation in each format; the earliest one in a text names its format
MARKERS: dict[ChatFormat, tuple[str, ...]] = {
    "chatml": ("<|im_start|>",),
    "llama3": ("<|start_header_id|>",),
    "llama2": ("[INST]",),
    "gemma": ("<start_of_turn>",),
    "steerlm": ("<extra_id_0>", "<extra_id_1>"),
}


def detect(text: str) -> ChatFormat:
    found = []
    for fmt, markers in MARKERS.items():
        positions = [p for p in (text.find(m) for m in markers) if p >= 0]
        if positions:
            found.append((min(positions), fmt))
    if not found:
        known = ", ".join(f"{f} ({MARKERS[f][0]})" for f in FORMATS)
        raise ChatFormatError(f"no known chat format found (looked for {known})")
    return min(found)[1]


@dataclass(frozen=True)
class Parsed:
    format: ChatFormat
    messages: list[Message]

    def conversation(self) -> dict[str, list[dict[str, str]]]:
        return {"messages": [m.to_dict() for m in self.messages]}


def parse(text: str, fmt: ChatFormat | Literal["auto"] = AUTO, extra_noise: Iterable[str] = ()) -> Parsed:
    """A decoded sequence → its messages, checked to be a conversation the reward model can score (it ends with an
    assistant turn, a system turn comes first). ChatFormatError says what is wrong."""
    if fmt == AUTO:
        fmt = detect(text)
    elif fmt not in PARSERS:
        raise ChatFormatError(f"unknown chat format {fmt!r} (use auto or one of {', '.join(FORMATS)})")
    noise = (*NOISE_TOKENS, *(t for t in extra_noise if t))
    messages = PARSERS[fmt](text, noise)
    if not messages:
        raise ChatFormatError(f"{fmt}: no turns found")
    try:
        from_openai([m.to_dict() for m in messages])
    except ConversationError as e:
        raise ChatFormatError(f"{fmt}: {e}") from None
    return Parsed(fmt, messages)


def render(messages: Sequence[Message | dict[str, str]], fmt: ChatFormat) -> str:
    """Messages → text in `fmt` as a policy's chat template writes it (for tests and examples); Gemma puts a
    system prompt at the head of the first user turn, as its template does."""
    ms = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
    if fmt == "chatml":
        return "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in ms)
    if fmt == "llama3":
        return "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content}<|eot_id|>" for m in ms
        )
    if fmt == "gemma":
        system = next((m.content for m in ms if m.role == "system"), None)
        turns = [m for m in ms if m.role != "system"]
        out = "<bos>"
        for i, m in enumerate(turns):
            content = f"{system}\n\n{m.content}" if i == 0 and system is not None else m.content
            out += f"<start_of_turn>{'model' if m.role == 'assistant' else m.role}\n{content}<end_of_turn>\n"
        return out
    if fmt == "steerlm":
        t = _STEERLM
        parts = [t.system.format(m.content) for m in ms if m.role == "system"]
        parts += [(t.user if m.role == "user" else t.assistant).format(m.content) for m in ms if m.role != "system"]
        return "".join(parts) + t.label
    if fmt == "llama2":
        system = next((m.content for m in ms if m.role == "system"), None)
        turns = [m for m in ms if m.role != "system"]
        out = ""
        for i in range(0, len(turns), 2):
            user = turns[i].content
            if i == 0 and system is not None:
                user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
            out += f"<s>[INST] {user.strip()} [/INST]"
            if i + 1 < len(turns):
                out += f" {turns[i + 1].content.strip()} </s>"
        return out
    raise ChatFormatError(f"unknown chat format {fmt!r}")
