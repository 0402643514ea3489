"""The tensor × pipeline parallel mapping: one type for the converter, the engine build, the launcher and the engine.

TensorRT-LLM's rank layout (docs/formats.md): rank r has tp_rank = r % tp and pp_rank = r // tp, so ranks 0..tp-1
are pipeline stage 0; stage s holds the layers `torch.tensor_split(arange(L), pp)[s]` (earlier stages take the
remainder); a checkpoint's or engine's `config.json` records it as `mapping` {world_size, tp_size, pp_size,
gpus_per_node} (in an engine's config.json under `pretrained_config`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_GPUS_PER_NODE = 8  # TensorRT-LLM's Mapping default


class MappingError(ValueError):
    """A mapping that is not TP × PP (or not positive); the message names the source."""


@dataclass(frozen=True)
class Mapping:
    tp: int = 1
    pp: int = 1
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1 or self.gpus_per_node < 1:
            raise MappingError(
                f"tp_size {self.tp}, pp_size {self.pp} and gpus_per_node {self.gpus_per_node} must be positive"
            )

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def ranks(self, rank: int) -> tuple[int, int]:
        """(tp_rank, pp_rank) of a global rank."""
        return rank % self.tp, rank // self.tp

    def stage_layers(self, num_layers: int, pp_rank: int) -> list[int]:
        """Global indices of the layers stage `pp_rank` holds: contiguous, earlier stages take the remainder."""
        base, extra = divmod(num_layers, self.pp)
        first = pp_rank * base + min(pp_rank, extra)
        return list(range(first, first + base + (1 if pp_rank < extra else 0)))

    def to_json(self, with_gpus_per_node: bool = False) -> dict[str, int]:
        d = {"world_size": self.world_size, "tp_size": self.tp, "pp_size": self.pp}
        return {**d, "gpus_per_node": self.gpus_per_node} if with_gpus_per_node else d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None, source: str = "config.json") -> Mapping:
        d = d or {}
        tp, pp = int(d.get("tp_size", 1)), int(d.get("pp_size", 1))
        world = int(d.get("world_size", tp * pp))
        if world != tp * pp:
            raise MappingError(f"{source}: mapping world_size {world} != tp_size {tp} x pp_size {pp}")
        return cls(tp, pp, int(d.get("gpus_per_node") or DEFAULT_GPUS_PER_NODE))

    @classmethod
    def of_config(cls, config: dict[str, Any], source: str = "config.json") -> Mapping:
        """From a checkpoint's config.json (`mapping`) or an engine's (`pretrained_config.mapping`)."""
        pretrained = config.get("pretrained_config")
        return cls.from_json((pretrained if isinstance(pretrained, dict) else config).get("mapping"), source)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Mapping:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise MappingError(f"{path}: missing")
        return cls.of_config(json.loads(path.read_text()), str(path))
