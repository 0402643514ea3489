"""Triton stage `postprocessing`: engine logits → `scores` and `reward` (reward_triton.serving.head)."""

import triton_python_backend_utils as pb_utils

from reward_triton.serving import triton
from reward_triton.serving.head import PostprocessStage


class TritonPythonModel:
    def initialize(self, args):
        self.stage = PostprocessStage(triton.require(triton.parameters(args), "model_dir"))

    def execute(self, requests):
        return triton.execute(pb_utils, self.stage, requests)
