"""`POST /v1/chat/completions` as NVIDIA NIM's reward API answers it: the scores in `choices[0].message.content` and
one `choices[0].logprobs.content` entry per trained attribute (`reward` alone for a one-output model)."""

from __future__ import annotations

import time
import uuid

from client.api import ModelMetadata, Score
from client.conversations import RecordError, format_value
from gateway.body import parse as parse_body
from gateway.errors import InternalError
from gateway.openai.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    TokenLogprob,
    Usage,
)
from gateway.rewards import RewardMix


def parse_request(body: bytes) -> ChatCompletionRequest:
    return parse_body(body, ChatCompletionRequest)


def reward_entries(score: Score, meta: ModelMetadata, mix: RewardMix | None = None) -> list[tuple[str, float]]:
    """(name, value) in head order: the trained attributes, or `reward` alone for a one-output model; with
    request weights (`mix`), a last `reward` entry carries their scalar reward."""
    if len(meta.attribute_names) == 1:
        return [("reward", score.reward if mix is None else mix.reward(score))]
    entries = list(score.trained.items())
    if mix is not None:
        entries.append(("reward", mix.reward(score)))
    return entries


def completion(score: Score, meta: ModelMetadata, model: str, mix: RewardMix | None = None) -> ChatCompletion:
    entries = reward_entries(score, meta, mix)
    try:
        content = ",".join(f"{name}:{format_value(value)}" for name, value in entries)
    except RecordError as e:
        raise InternalError(f"the reward model returned an invalid score: {e}") from e
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(content=content),
                logprobs=ChoiceLogprobs(content=[TokenLogprob(token=n, logprob=v) for n, v in entries]),
            )
        ],
        usage=Usage(prompt_tokens=score.num_input_tokens, total_tokens=score.num_input_tokens),
    )
