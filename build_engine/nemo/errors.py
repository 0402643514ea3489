"""The one error type the NeMo readers raise, and the argument checks they share."""

from __future__ import annotations

from reward_triton.engine.weights import is_layer


class CheckpointError(ValueError):
    """The checkpoint is unreadable, unsafe or inconsistent; the message names the offending key or file."""


def check_layer_arg(name: str, layer: int | None) -> bool:
    """A read of a layer tensor names its layer, a read of any other tensor does not; returns whether it is one."""
    layer_tensor = is_layer(name)
    if layer_tensor and layer is None:
        raise CheckpointError(f"tensor '{name}' is a layer tensor: pass layer=")
    if not layer_tensor and layer is not None:
        raise CheckpointError(f"tensor '{name}' is not a layer tensor: layer= must be None")
    return layer_tensor


def require_layer_tensor(name: str) -> None:
    if not is_layer(name):
        raise CheckpointError(f"tensor '{name}' is not a layer tensor")
