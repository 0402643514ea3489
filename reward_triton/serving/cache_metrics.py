"""The PyTorch engine's statistics (prefix cache hits, tokens sent / read from the cache / computed) as Triton
custom metrics, served by tritonserver's metrics endpoint (`curl localhost:8002/metrics`) with the label
`model="tensorrt_llm"`.

`EngineMetrics(pb, engine)` in the Triton model's initialize, `update()` after each execute: counters grow by what
changed since the previous update, gauges are set. `pb` is `triton_python_backend_utils`, passed in (testable
without Triton).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("reward_triton")
PREFIX = "reward_engine_"
COUNTERS = {
    "sequences": "sequences scored",
    "hit_sequences": "sequences that read at least one cached key/value block",
    "tokens_sent": "tokens of the sequences scored",
    "tokens_cached": "tokens read from the prefix cache instead of computed",
    "tokens_computed": "tokens computed",
    "blocks_stored": "key/value blocks stored in the prefix cache",
    "blocks_evicted": "key/value blocks evicted from the prefix cache (least recently used first)",
}
GAUGES = {
    "blocks": "key/value blocks in the prefix cache",
    "bytes_used": "bytes of key/value blocks in the prefix cache",
    "budget_bytes": "the prefix cache's budget in bytes (0: off)",
}


class EngineMetrics:
    @classmethod
    def attach(cls, pb: Any, engine: Any) -> EngineMetrics | NoMetrics:
        """The engine's metrics, or a stand-in that does nothing when the server runs without metrics."""
        try:
            return cls(pb, engine)
        except Exception as e:
            log.warning("engine statistics are not exported as metrics: %s", e)
            return NoMetrics()

    def __init__(self, pb: Any, engine: Any, model: str = "tensorrt_llm") -> None:
        self.engine = engine
        labels = {"model": model}
        self.metrics: dict[str, Any] = {}
        self.families: list[Any] = []  # kept alive: Triton drops a family's metrics when the family is deleted
        for names, kind in ((COUNTERS, pb.MetricFamily.COUNTER), (GAUGES, pb.MetricFamily.GAUGE)):
            for name, description in names.items():
                family = pb.MetricFamily(name=PREFIX + name, description=description, kind=kind)
                self.families.append(family)
                self.metrics[name] = family.Metric(labels=labels)
        self.last: dict[str, int] = {}
        self.update()

    def update(self) -> None:
        stats = self.engine.stats()
        for name, metric in self.metrics.items():
            value = int(stats.get(name, 0))
            if name in COUNTERS:
                if value > self.last.get(name, 0):
                    metric.increment(value - self.last.get(name, 0))
            else:
                metric.set(value)
            self.last[name] = value


class NoMetrics:
    def update(self) -> None:
        pass
