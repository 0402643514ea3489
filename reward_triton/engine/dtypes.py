"""The dtypes, one table: how config.json and the command lines name them, their safetensors code, their Triton type.

torch is imported only when a torch dtype is asked for (the postprocessing stage runs without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dtype:
    name: str  # config.json `dtype` / `logits_dtype`, --dtype
    safetensors: str  # the safetensors header code
    triton: str  # a Triton model config data_type
    itemsize: int

    @property
    def torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.name)


TABLE = (
    Dtype("float32", "F32", "TYPE_FP32", 4),
    Dtype("bfloat16", "BF16", "TYPE_BF16", 2),
    Dtype("float16", "F16", "TYPE_FP16", 2),
)
NAMES = tuple(d.name for d in TABLE)
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BY_NAME = {d.name: d for d in TABLE}


def lookup(name: str | torch.dtype) -> Dtype:
    """A dtype by name (`float32`, `bfloat16`, `float16`, or `fp32`, `bf16`, `fp16`) or torch dtype."""
    key = str(name).removeprefix("torch.")
    key = ALIASES.get(key, key)
    if key not in BY_NAME:
        raise ValueError(f"dtype must be one of {', '.join(NAMES)}, got {name!r}")
    return BY_NAME[key]


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    return lookup(name).torch
