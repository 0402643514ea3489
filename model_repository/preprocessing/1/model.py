"""Triton stage `preprocessing`: conversation JSON / templated text → token ids (reward_triton.serving.preprocess)."""

import triton_python_backend_utils as pb_utils

from reward_triton.serving import triton
from reward_triton.serving.preprocess import DEFAULT_MAX_REQUEST_BYTES, Preprocessor


class TritonPythonModel:
    def initialize(self, args):
        params = triton.parameters(args)
        max_bytes = int(params.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES)
        self.stage = Preprocessor.from_dir(triton.require(params, "model_dir"), max_bytes)

    def execute(self, requests):
        return triton.execute(pb_utils, self.stage, requests)
