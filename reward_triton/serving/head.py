"""The reward head outside the engine, and the `postprocessing` stage: engine logits → per-attribute scores →
scalar reward.

numpy only: the postprocessing stage does not load torch. The engine's lm_head carries the head's rows (the first K
logits); the bias and the scalar weights come from the checkpoint's metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from reward_triton.errors import RequestError, ServerFault
from reward_triton.metadata import RewardMetadata
from reward_triton.serving.results import Failure, Inputs, Outputs, Result


class HeadError(ServerFault):
    """The head metadata does not fit the engine's logits: a deployment fault (INTERNAL), not the request's."""


def scores(logits: npt.ArrayLike, meta: RewardMetadata) -> np.ndarray:
    """[..., Vout] → [..., K] float32: logits[..., :K] + head_bias (checkpoint attribute order); the leading dims
    are kept (engine output [B, Vout], or Triton's generation_logits [B, beams, out_len, Vout])."""
    return _scores(logits, np.asarray(meta.head_bias, dtype=np.float32))


def reward(attribute_scores: npt.ArrayLike, meta: RewardMetadata) -> np.ndarray:
    """[..., K] → [...] float32: the metadata's scalar weights dotted with the scores."""
    return _reward(attribute_scores, np.asarray(meta.scalar_weights, dtype=np.float32))


def _scores(logits: npt.ArrayLike, bias: np.ndarray) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float32)
    k = bias.shape[0]
    if arr.ndim == 0 or arr.shape[-1] < k:
        raise HeadError(f"logits have shape {list(arr.shape)}, need a last dimension of at least {k} (the head)")
    head = arr[..., :k]
    if not np.isfinite(head).all():
        raise HeadError("the engine returned non-finite reward logits (NaN or Inf)")
    return head + bias


def _reward(attribute_scores: npt.ArrayLike, weights: np.ndarray) -> np.ndarray:
    arr = np.asarray(attribute_scores, dtype=np.float32)
    if arr.ndim == 0 or arr.shape[-1] != weights.shape[0]:
        raise HeadError(f"scores have shape {list(arr.shape)}, expected [..., {weights.shape[0]}]")
    return (arr @ weights).astype(np.float32)


class PostprocessStage:
    # output_ids / sequence_length: the engine fills them in every response and the ensemble must consume what it
    # maps; they confirm that the engine generated the reward position.
    input_names = ("generation_logits", "output_ids", "sequence_length")

    def __init__(self, model_dir: str | os.PathLike[str]):
        self.meta = RewardMetadata.load(model_dir)
        self.bias = np.asarray(self.meta.head_bias, dtype=np.float32)
        self.weights = np.asarray(self.meta.scalar_weights, dtype=np.float32)

    def scores_of(self, logits: np.ndarray) -> np.ndarray:
        """`generation_logits` [1, beams, out_len, V] → scores [1, K]: the first beam's first generated position is
        the reward position. A head that does not fit the engine's logits is a server fault (HeadError)."""
        arr = np.asarray(logits, dtype=np.float32)
        if arr.ndim == 0 or arr.size == 0:  # the engine's output (e.g. built without generation logits)
            raise ServerFault(f"'generation_logits' has shape {list(arr.shape)}: the engine returned no logits")
        last = arr.reshape(arr.shape[0], -1, arr.shape[-1])[:, 0, :] if arr.ndim >= 2 else arr[None]
        return _scores(last, self.bias)

    def _one(self, inputs: Inputs) -> Outputs:
        logits = inputs.get("generation_logits")
        if logits is None:
            raise RequestError("input 'generation_logits' is missing")
        lengths = inputs.get("sequence_length")
        if lengths is not None and (np.asarray(lengths).size == 0 or int(np.asarray(lengths).min()) < 1):
            raise ServerFault(f"the engine generated no position (sequence_length {np.asarray(lengths).tolist()})")
        s = self.scores_of(logits)
        return {"scores": s, "reward": _reward(s, self.weights)[:, None]}

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        out: list[Result] = []
        for inputs in batch:
            try:
                out.append(self._one(inputs))
            except Exception as e:
                out.append(Failure.caught(e))
        return out
