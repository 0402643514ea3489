"""The reward head outside the engine: engine logits → per-attribute scores → scalar reward.

numpy only: the postprocessing stage does not load torch. The engine's lm_head carries the head's rows (the first K
logits); the bias and the scalar weights come from the checkpoint's metadata.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from reward_triton.errors import ServerFault
from reward_triton.metadata import RewardMetadata


class HeadError(ServerFault):
    """The head metadata does not fit the engine's logits: a deployment fault (INTERNAL), not the request's."""


def scores(logits: npt.ArrayLike, meta: RewardMetadata) -> np.ndarray:
    """[..., Vout] → [..., K] float32: logits[..., :K] + head_bias (checkpoint attribute order); the leading dims
    are kept (engine output [B, Vout], or Triton's generation_logits [B, beams, out_len, Vout])."""
    arr = np.asarray(logits, dtype=np.float32)
    k = meta.num_attributes
    if arr.ndim == 0 or arr.shape[-1] < k:
        raise HeadError(f"logits have shape {list(arr.shape)}, need a last dimension of at least {k} (the head)")
    head = arr[..., :k]
    if not np.isfinite(head).all():
        raise HeadError("the engine returned non-finite reward logits (NaN or Inf)")
    return head + np.asarray(meta.head_bias, dtype=np.float32)


def reward(attribute_scores: npt.ArrayLike, meta: RewardMetadata) -> np.ndarray:
    """[..., K] → [...] float32: the metadata's scalar weights dotted with the scores."""
    arr = np.asarray(attribute_scores, dtype=np.float32)
    if arr.ndim == 0 or arr.shape[-1] != meta.num_attributes:
        raise HeadError(f"scores have shape {list(arr.shape)}, expected [..., {meta.num_attributes}]")
    return (arr @ np.asarray(meta.scalar_weights, dtype=np.float32)).astype(np.float32)
