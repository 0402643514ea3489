"""Triton stage `postprocessing`: engine logits → `scores` and `reward` (reward_triton.stages.PostprocessStage)."""

import triton_python_backend_utils as pb_utils

from reward_triton import stages


class TritonPythonModel:
    def initialize(self, args):
        params = stages.parameters(args)
        self.stage = stages.PostprocessStage(stages.require(params, "model_dir"))

    def execute(self, requests):
        return stages.execute(pb_utils, self.stage, requests)
