"""Triton model `tensorrt_llm` on CPU: the PyTorch engine behind the TensorRT-LLM backend's contract.

Used when the repository is rendered with BACKEND=torch (config `backend: "python"`); with BACKEND=tensorrtllm the
C++ backend serves this model and this file is not loaded. It refuses to load, and refuses requests, where the C++
backend would (reward_triton.engine.stand_in, reward_triton.serving.trtllm_contract). One batched forward per
execute().
"""

import json

import triton_python_backend_utils as pb_utils

from reward_triton.engine.stand_in import EngineStage
from reward_triton.serving import triton
from reward_triton.serving.cache_metrics import EngineMetrics


class TritonPythonModel:
    def initialize(self, args):
        self.stage = EngineStage.from_model_config(json.loads(args["model_config"]))
        self.metrics = EngineMetrics.attach(pb_utils, self.stage.engine)  # the engine's statistics, as metrics

    def execute(self, requests):
        responses = triton.execute(pb_utils, self.stage, requests)
        self.metrics.update()
        return responses
