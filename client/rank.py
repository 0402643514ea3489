"""Best-of-n: score N candidate responses to one prompt and sort them by reward (best first)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client.api import Score
from client.conversations import openai_prompt_and_response
from client.ordering import first_then_rest

ScoreFn = Callable[[Mapping[str, Any]], Awaitable[Score]]


@dataclass(frozen=True)
class Ranked:
    rank: int  # 1 = best
    index: int  # position among the candidates as given
    response: str
    score: Score

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "index": self.index,
            "reward": self.score.reward,
            "response": self.response,
            **{k: v for k, v in self.score.to_dict().items() if k != "reward"},
        }


def order(rewards: Sequence[float]) -> list[int]:
    """Candidate indices sorted by reward, highest first; equal rewards keep their given order."""
    return sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))


async def rank_responses(
    prompt: str,
    responses: Sequence[str],
    score: ScoreFn,
    *,
    concurrency: int = 16,
    system: str | None = None,
    progress: Callable[[], None] | None = None,
) -> list[Ranked]:
    """Every candidate scored as the assistant's reply to `prompt`; a rejected candidate raises its error.
    `progress` is called once per candidate scored. The first candidate is sent alone, the others once it has
    finished, so they reuse the prompt it left in the server's prefix cache (client.ordering)."""
    conversations = [openai_prompt_and_response(prompt, r, system) for r in responses]
    scores: list[Score | None] = [None] * len(responses)
    async for i, result in first_then_rest(score, conversations, limit=concurrency):
        if progress is not None:
            progress()
        if isinstance(result, Exception):
            raise type(result)(f"candidate {i}: {result}")
        scores[i] = result
    done = [s for s in scores if s is not None]
    assert len(done) == len(responses)
    return [
        Ranked(rank=r + 1, index=i, response=responses[i], score=done[i])
        for r, i in enumerate(order([s.reward for s in done]))
    ]
