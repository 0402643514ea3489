"""Triton model `tensorrt_llm` on CPU: the PyTorch engine behind the TensorRT-LLM backend's contract.

Used when the repository is rendered with BACKEND=torch (config `backend: "python"`); with BACKEND=tensorrtllm the
C++ backend serves this model and this file is not loaded. One batched forward per execute().
"""

import triton_python_backend_utils as pb_utils

from reward_triton import stages
from reward_triton.cache_metrics import EngineMetrics


class TritonPythonModel:
    def initialize(self, args):
        params = stages.parameters(args)
        self.stage = stages.EngineStage.from_checkpoint(
            stages.require(params, "gpt_model_path"),
            dtype=params.get("dtype") or "float32",
            device=params.get("device") or "cpu",
            num_threads=int(params.get("num_threads") or 0),
            batch_invariant=(params.get("batch_invariant") or "false").lower() in ("1", "true", "yes"),
            prefix_cache_bytes=int(params.get("prefix_cache_bytes") or 0),
        )
        try:  # the engine's statistics as Triton metrics (absent when the server runs without metrics)
            self.metrics = EngineMetrics(pb_utils, self.stage.engine)
        except Exception as e:
            stages.log.warning("engine statistics are not exported as metrics: %s", e)
            self.metrics = None

    def execute(self, requests):
        responses = stages.execute(pb_utils, self.stage, requests)
        if self.metrics is not None:
            self.metrics.update()
        return responses
