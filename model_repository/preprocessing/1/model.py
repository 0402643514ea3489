"""Triton stage `preprocessing`: conversation JSON / templated text → token ids (reward_triton.preprocess)."""

import triton_python_backend_utils as pb_utils

from reward_triton import stages
from reward_triton.preprocess import DEFAULT_MAX_REQUEST_BYTES, Preprocessor


class TritonPythonModel:
    def initialize(self, args):
        params = stages.parameters(args)
        max_bytes = int(params.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES)
        self.stage = Preprocessor.from_dir(stages.require(params, "model_dir"), max_bytes)

    def execute(self, requests):
        return stages.execute(pb_utils, self.stage, requests)
