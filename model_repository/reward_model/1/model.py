"""Triton model `reward_model` (NeMo-Aligner's reward server contract): B rows per request fanned out to
`tensorrt_llm` one sequence each (reward_triton.serving.reward_model.execute_fanout)."""

import triton_python_backend_utils as pb_utils

from reward_triton.serving import reward_model, triton
from reward_triton.serving.preprocess import DEFAULT_MAX_REQUEST_BYTES
from reward_triton.serving.reward_model import DEFAULT_MAX_ROWS, RewardModelStage


class TritonPythonModel:
    def initialize(self, args):
        params = triton.parameters(args)
        self.stage = RewardModelStage(
            triton.require(params, "model_dir"),
            max_rows=int(params.get("max_rows") or DEFAULT_MAX_ROWS),
            max_request_bytes=int(params.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES),
        )

    async def execute(self, requests):
        return await reward_model.execute_fanout(pb_utils, self.stage, requests)
