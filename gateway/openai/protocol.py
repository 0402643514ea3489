"""Request and response bodies of the OpenAI-compatible reward API (`reward-openai`, docs/openai.md).

The request side checks only the envelope (types of `model`, `messages`, `n`, `truncate`); the conversation
itself (roles, order, content parts) is validated by the ensemble's preprocessing stage, whose INVALID_ARG
message the gateway returns as a 400. Unknown request fields are accepted and ignored, as OpenAI servers do.
The response is the NIM reward shape: a `chat.completion` whose message content is `name:value,...` and whose
`logprobs.content` carries one entry per trained attribute (`reward` alone for a one-output model).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class ContentPart(BaseModel):
    """One part of a multi-part content; only `{"type": "text", "text": ...}` is scored (the ensemble says so)."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ... are ignored

    role: StrictStr
    content: StrictStr | list[ContentPart]

    def for_ensemble(self) -> dict[str, Any]:
        """The message as the ensemble's `conversation` input takes it (OpenAI form, role + content only)."""
        if isinstance(self.content, str):
            return {"role": self.role, "content": self.content}
        return {"role": self.role, "content": [p.model_dump(exclude_none=True) for p in self.content]}


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens, logprobs, ... are accepted and ignored

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    n: StrictInt | None = None
    stream: StrictBool | None = None
    truncate: StrictBool = False  # not OpenAI: maps to the ensemble's `truncate` input (drop oldest exchanges)
    # not OpenAI: scalar weights over the attributes (client.weights); the answer gets a last `reward` entry
    weights: Any = None  # checked against the served model by client.weights.resolve

    def conversation(self) -> dict[str, Any]:
        return {"messages": [m.for_ensemble() for m in self.messages]}


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs
    finish_reason: Literal["length"] = "length"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "reward-triton"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
