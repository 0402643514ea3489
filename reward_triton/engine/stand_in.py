"""The `tensorrt_llm` model on CPU: the PyTorch engine behind the contract of NVIDIA's C++ `tensorrtllm` backend.

It refuses what the C++ backend refuses, with the backend's messages and status (reward_triton.serving.trtllm_contract),
so that a caller that works here works in the container. Served by model_repository/tensorrt_llm/1/model.py when the
repository is rendered with BACKEND=torch.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reward_triton import model_config
from reward_triton.errors import RequestError, ServerFault
from reward_triton.metadata import RewardMetadata
from reward_triton.serving import trtllm_contract as contract
from reward_triton.serving.results import Failure, Inputs, Result, guarded
from reward_triton.serving.triton import REQUESTED_OUTPUTS

log = logging.getLogger("reward_triton")
ALL_ENGINE_OUTPUTS = tuple(spec.name for spec in contract.OUTPUTS)


def _scalar(name: str, array: np.ndarray | None, default: Any, dtype: type) -> Any:
    if array is None:
        return default
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"input '{name}' must hold one value per request, got shape {list(array.shape)}")
    return dtype(flat[0])


class EngineStage:
    """The `tensorrt_llm` contract (`reward_triton.serving.trtllm_contract`) served by the PyTorch engine: one batched
    forward per `run`. It refuses what NVIDIA's C++ backend refuses, with the backend's messages and status
    (INTERNAL), so that a caller that works here works in the container; what it cannot do that the C++ backend
    can (more than one output position, context logits, decoupled mode) it refuses as a server fault too."""

    input_names = tuple(spec.name for spec in contract.INPUTS)
    reads_requested_outputs = True

    def __init__(self, engine: Any, max_input_len: int, vocab_size: int, exclude_input_in_output: bool = False) -> None:
        self.engine = engine
        self.max_input_len = max_input_len
        self.vocab_size = vocab_size
        self.exclude_input_in_output = exclude_input_in_output  # the model parameter; a request may override it
        self._request_ids = itertools.count(1)

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> EngineStage:
        """The stand-in as the Triton config declares it; refuses to load where the C++ backend would."""
        params = model_config.parameters(config)
        contract.check_parameters(params)
        if (config.get("model_transaction_policy") or {}).get("decoupled", False):
            raise contract.ContractViolation("the PyTorch stand-in serves the non-decoupled contract only")
        declared = contract.declared_logits_type(config)
        stage = cls.from_checkpoint(
            params["gpt_model_path"],
            dtype=params.get("dtype") or "float32",
            device=params.get("device") or "cpu",
            num_threads=int(params.get("num_threads") or 0),
            batch_invariant=contract.parse_bool(params.get("batch_invariant") or "false"),
            exclude_input_in_output=contract.exclude_input_default(params),
        )
        engine_type = contract.LOGITS_TYPES["float32"]  # the stand-in's head and logits are float32
        if declared != engine_type:
            raise contract.ContractViolation(
                f"config declares logits as {declared}, the engine's logits are {engine_type}"
            )
        return stage

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | os.PathLike[str],
        dtype: str = "float32",
        device: str = "cpu",
        num_threads: int = 0,
        batch_invariant: bool = False,
        exclude_input_in_output: bool = False,
    ) -> EngineStage:
        import torch

        from reward_triton.engine.dtypes import parse_dtype
        from reward_triton.engine.model import TorchEngine

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        engine = TorchEngine.from_checkpoint(
            Path(directory), device=device, dtype=parse_dtype(dtype), batch_invariant=batch_invariant
        )
        meta = RewardMetadata.load(directory)
        return cls(engine, meta.max_input_len, engine.cfg.vocab_size, exclude_input_in_output)

    def _validate(self, inputs: Inputs) -> tuple[list[int], bool, bool, tuple[str, ...]]:
        """(sequence, exclude input from output_ids, return generation logits, outputs to fill), in the order
        the C++ backend checks: batch size, inputs, the executor's request validation, requested outputs."""
        request_id = next(self._request_ids)
        ids_in = inputs.get("input_ids")
        if ids_in is None:
            raise contract.ContractViolation(contract.NO_INPUT_IDS)
        if ids_in.ndim == 0 or ids_in.shape[0] != 1:
            raise contract.ContractViolation(contract.BATCH_NOT_DECOUPLED)
        ids = np.asarray(ids_in[0]).reshape(-1)
        out_len = _scalar("request_output_len", inputs.get("request_output_len"), None, int)
        if out_len is None:
            raise contract.ContractViolation(contract.NO_OUTPUT_LEN)
        if out_len < 1:
            raise contract.executor_failed(request_id, f"request_output_len (max new tokens) is {out_len}, must be > 0")
        if out_len > 1:
            raise ServerFault(
                f"request_output_len is {out_len}: the PyTorch stand-in computes one output position (the reward)"
            )
        length = _scalar("input_lengths", inputs.get("input_lengths"), ids.size, int)
        if not 1 <= length <= ids.size:
            raise RequestError(f"input_lengths is {length}, expected 1..{ids.size} (the number of input_ids)")
        if length > self.max_input_len:
            raise contract.executor_failed(
                request_id,
                f"prompt length ({length}) exceeds the engine's maximum input length ({self.max_input_len})",
            )
        if _scalar("return_context_logits", inputs.get("return_context_logits"), False, bool):
            raise contract.executor_failed(
                request_id,
                "context logits need an engine built with --gather_context_logits (this one computes "
                "last-token logits only)",
            )
        seq = ids[:length].astype(np.int64)
        if seq.min() < 0 or seq.max() >= self.vocab_size:
            raise contract.executor_failed(
                request_id, f"input_ids must be in [0, {self.vocab_size}), got [{seq.min()}, {seq.max()}]"
            )
        exclude = _scalar("exclude_input_in_output", inputs.get("exclude_input_in_output"), None, bool)
        gen_logits = _scalar("return_generation_logits", inputs.get("return_generation_logits"), False, bool)
        asked = inputs.get(REQUESTED_OUTPUTS)
        requested = tuple(str(n) for n in asked) if asked is not None and len(asked) else ALL_ENGINE_OUTPUTS
        if not all(name in requested for name in contract.REQUIRED_OUTPUTS):
            contract.check_requested_outputs(requested)  # raises the backend's own error
        return seq.tolist(), self.exclude_input_in_output if exclude is None else exclude, gen_logits, requested

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        logits = np.asarray(self.engine.logits(seqs).float().cpu().numpy(), dtype=np.float32)
        if logits.shape[0] != len(seqs):  # non-finite reward logits are caught by the head (head.scores)
            raise ServerFault(f"the engine returned logits of shape {list(logits.shape)} for {len(seqs)} sequences")
        return logits

    def _logits(self, seqs: list[list[int]]) -> list[np.ndarray | Failure]:
        """One batched forward; if it fails, each sequence alone, so a failure stays with the sequence causing it."""
        try:
            return list(self._forward(seqs))
        except Exception as e:
            if len(seqs) == 1:
                log.exception("engine forward failed")
                return [Failure.of(e)]
            log.exception("batched engine forward failed; retrying the %d sequences one at a time", len(seqs))
            return [guarded(lambda seq=seq: self._forward([seq])[0]) for seq in seqs]

    def run(self, batch: Sequence[Inputs]) -> list[Result]:
        out: list[Result] = []
        valid: list[tuple[int, list[int], bool, bool, tuple[str, ...]]] = []
        for i, inputs in enumerate(batch):
            try:
                valid.append((i, *self._validate(inputs)))
                out.append({})
            except Exception as e:
                out.append(Failure.caught(e))
        if not valid:
            return out
        rows = self._logits([seq for _, seq, *_ in valid])
        for (i, seq, exclude, gen_logits, requested), row in zip(valid, rows, strict=True):
            if isinstance(row, Failure):
                out[i] = row
                continue
            generated = int(np.argmax(row))
            ids = [generated] if exclude else [*seq, generated]
            result = {
                "output_ids": np.asarray([[ids]], dtype=np.int32),  # [1, beams, len]
                "sequence_length": np.asarray([[len(ids)]], dtype=np.int32),  # [1, beams]
            }
            if gen_logits:
                result["generation_logits"] = row.reshape(1, 1, 1, -1).astype(np.float32)  # [1, beams, out_len, V]
            for name in tuple(result):
                if name not in requested:
                    del result[name]
            out[i] = result
        return out
