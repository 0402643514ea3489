"""Per-request scalar weights over the reward model's attributes.

A request may replace the checkpoint's scalar weights (the ensemble's `reward` output) by its own mix. Accepted
forms, all resolved to one weight per model output (head order, `ModelMetadata.attribute_names`):
- a list with one weight per TRAINED attribute (Nemotron-4-340B-Reward: helpfulness, correctness, coherence,
  complexity, verbosity); the untrained outputs get 0;
- a list with one weight per model OUTPUT (the model card's 9-value form);
- an object `{attribute name: weight}`; attributes left out get 0.
Anything else is a `WeightsError` naming the expected counts and names. The reward is computed as the
postprocessing stage computes it: float32 scores dotted with float32 weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from client.api import ModelMetadata, RewardClientError, Score, f32

Weights = Sequence[float] | Mapping[str, float]


class WeightsError(RewardClientError, ValueError):
    """The weights do not fit the served model; the message names the expected counts and attribute names."""


def resolve(weights: Weights, meta: ModelMetadata) -> tuple[float, ...]:
    """One weight per model output, in head order."""
    names, trained = meta.attribute_names, meta.trained_attributes
    if isinstance(weights, str) or not isinstance(weights, Mapping | Sequence):
        raise WeightsError(
            f"weights must be a list of numbers or an object {{name: number}}, got {type(weights).__name__}"
        )
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in names]
        if unknown:
            raise WeightsError(
                f"weights name unknown attribute(s) {', '.join(map(repr, unknown))}; this model's attributes are "
                f"{', '.join(trained)}"
            )
        values = {k: _number(v, f"weights.{k}") for k, v in weights.items()}
        return tuple(values.get(n, 0.0) for n in names)
    given = [_number(v, f"weights[{i}]") for i, v in enumerate(weights)]
    if len(given) == len(trained):
        by_name = dict(zip(trained, given, strict=True))
        return tuple(by_name.get(n, 0.0) for n in names)
    if len(given) == len(names):
        return tuple(given)
    counts = f"{len(trained)} (one per trained attribute: {', '.join(trained)})"
    if len(names) != len(trained):
        counts += f" or {len(names)} (one per model output: {', '.join(names)})"
    raise WeightsError(f"weights has {len(given)} values; this model takes {counts}, or an object {{name: weight}}")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WeightsError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def parse_option(text: str) -> Weights:
    """`--weights` text: JSON (a list or an object), `0.3,0.74,...` or `helpfulness=1,verbosity=-0.5`."""
    import json

    text = text.strip()
    if text.startswith(("[", "{")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise WeightsError(f"--weights is not valid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(value, list | dict):
            raise WeightsError("--weights JSON must be a list or an object")
        return value
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise WeightsError("--weights is empty")
    named = ["=" in p for p in parts]
    if any(named) and not all(named):
        raise WeightsError("--weights mixes name=value and plain values; use one form")
    try:
        if all(named):
            return {name.strip(): float(value) for name, _, value in (p.partition("=") for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise WeightsError(f"--weights {text!r}: every value must be a number") from None


def weighted_reward(score: Score, meta: ModelMetadata, weights: Sequence[float]) -> float:
    """The scalar reward of `score` under per-output `weights` (from `resolve`), in float32 like the ensemble."""
    values = np.asarray([score.scores[n] for n in meta.attribute_names], dtype=np.float32)
    return f32(values @ np.asarray(weights, dtype=np.float32))
