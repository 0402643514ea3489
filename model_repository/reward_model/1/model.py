"""Triton model `reward_model` (NeMo-Aligner's reward server contract): B rows per request fanned out to
`tensorrt_llm` one sequence each (reward_triton.reward_model, triton_adapter.execute_fanout)."""

import triton_python_backend_utils as pb_utils

from reward_triton import triton_adapter
from reward_triton.preprocess import DEFAULT_MAX_REQUEST_BYTES
from reward_triton.reward_model import DEFAULT_MAX_ROWS, RewardModelStage


class TritonPythonModel:
    def initialize(self, args):
        params = triton_adapter.parameters(args)
        self.stage = RewardModelStage(
            triton_adapter.require(params, "model_dir"),
            max_rows=int(params.get("max_rows") or DEFAULT_MAX_ROWS),
            max_request_bytes=int(params.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES),
        )

    async def execute(self, requests):
        return await triton_adapter.execute_fanout(pb_utils, self.stage, requests)
