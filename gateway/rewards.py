"""The scalar reward an endpoint returns: the ensemble's own (checkpoint weights) or a request's weights."""

from __future__ import annotations

from client.api import ModelMetadata, Score
from client.weights import Weights, WeightsError, resolve, weighted_reward
from gateway.errors import InvalidRequest


class RewardMix:
    """Per-output weights resolved against the served model; None means the checkpoint's (`Score.reward`)."""

    def __init__(self, meta: ModelMetadata, weights: Weights | None, param: str = "weights") -> None:
        self.meta = meta
        try:
            self.weights = None if weights is None else resolve(weights, meta)
        except WeightsError as e:
            raise InvalidRequest(str(e), param=param, code="invalid_weights") from None

    def reward(self, score: Score) -> float:
        return score.reward if self.weights is None else weighted_reward(score, self.meta, self.weights)
