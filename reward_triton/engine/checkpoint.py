"""Read a TensorRT-LLM checkpoint (docs/formats.md): `config.json` and the `rank{N}.safetensors` files joined into
whole tensors by the weight table's rules (reward_triton/engine/weights.py), for the PyTorch engine.

A tensor the table expects for this architecture but a rank file lacks is an error naming the tensor and the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from reward_triton.engine.dtypes import lookup
from reward_triton.engine.mapping import Mapping
from reward_triton.engine.weights import BY_NAME, Arch, Rule, TPLayout, engine_rows, is_gated, join


class CheckpointFormatError(ValueError):
    """The TensorRT-LLM checkpoint is incomplete or inconsistent; the message names the file or tensor."""


@dataclass(frozen=True)
class EngineConfig:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    activation: str  # "squared-relu" | "gelu" | "swiglu" (Llama: gated SiLU)
    norm: str  # "layernorm" | "rmsnorm"
    norm_eps: float
    rotary_dim: int
    rotary_base: float
    mapping: Mapping
    compact_head: bool  # lm_head is [K, H] on every last-stage rank instead of the padded vocab
    parallel_embedding: bool  # embedding rows sharded over the TP ranks of stage 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineConfig:
        llama = d["architecture"] == "LlamaForCausalLM"
        hd = int(d.get("head_size") or d["hidden_size"] // d["num_attention_heads"])
        return cls(
            architecture=d["architecture"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=hd,
            vocab_size=d["vocab_size"],
            activation="swiglu" if llama else d["hidden_act"],
            norm="rmsnorm" if llama else "layernorm",
            norm_eps=float(d.get("norm_epsilon", 1e-5)),
            rotary_dim=int(hd * float(1.0 if llama else d.get("rotary_pct", 1.0))),
            rotary_base=float(d.get("rotary_base", 10000.0)),
            mapping=Mapping.of_config(d),
            compact_head=d.get("reward_head", {}).get("lm_head") == "compact",
            parallel_embedding=bool(d.get("use_parallel_embedding", False)),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> EngineConfig:
        return cls.from_json(json.loads((Path(directory) / "config.json").read_text()))

    @property
    def arch(self) -> Arch:  # TensorRT-LLM's LayerNorm takes gamma as applied: no layernorm1p here
        return Arch(gated=is_gated(self.activation), norm_bias=self.norm != "rmsnorm")

    def tp_layout(self) -> TPLayout:
        return TPLayout(
            tp=self.mapping.tp,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            parallel_embedding=self.parallel_embedding,
            compact_head=self.compact_head,
        )


def checkpoint_dtype(directory: str | os.PathLike[str]) -> str:
    """The dtype a converted checkpoint stores its weights in (config.json `dtype`), e.g. "bfloat16"."""
    name = json.loads((Path(directory) / "config.json").read_text()).get("dtype", "float32")
    return lookup(name).name


class RankFiles:
    """All rank files of a checkpoint, read into memory; `whole(name, layer)` joins one weight's shards."""

    def __init__(self, directory: str | os.PathLike[str], cfg: EngineConfig) -> None:
        self.directory, self.cfg, self.layout = Path(directory), cfg, cfg.tp_layout()
        self.rows = {w.name: w for w in engine_rows(cfg.arch)}
        self.ranks: list[dict[str, torch.Tensor]] = []
        for rank in range(cfg.mapping.world_size):
            path = self.directory / f"rank{rank}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: rank file missing (config.json maps {cfg.mapping.world_size} ranks)")
            with safe_open(str(path), framework="pt") as f:
                self.ranks.append({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - no __iter__
        self.stage_of: dict[int, tuple[int, int]] = {}  # global layer → (stage, local index)
        for stage in range(cfg.mapping.pp):
            for local, layer in enumerate(cfg.mapping.stage_layers(cfg.num_layers, stage)):
                self.stage_of[layer] = (stage, local)
        for rank, tensors in enumerate(self.ranks):  # exactly the table's tensors for this rank's stage
            want = self._expected(cfg.mapping.ranks(rank)[1])
            path = self.directory / f"rank{rank}.safetensors"
            if missing := sorted(want - tensors.keys()):
                raise CheckpointFormatError(f"{path}: tensors missing: {', '.join(missing[:5])}")
            if extra := sorted(tensors.keys() - want):
                raise CheckpointFormatError(
                    f"{path}: unexpected tensors {', '.join(extra[:5])} (config.json: {cfg.num_layers} layers, "
                    f"pp {cfg.mapping.pp}, architecture {cfg.architecture})"
                )

    def _expected(self, stage: int) -> set[str]:
        names: set[str] = set()
        for w in self.rows.values():
            if w.is_layer:
                for local in range(len(self.cfg.mapping.stage_layers(self.cfg.num_layers, stage))):
                    names.update(n.format(i=local) for n in w.trtllm)
            elif stage == (0 if w.rule is Rule.EMBEDDING else self.cfg.mapping.pp - 1):
                names.update(w.trtllm)
        return names

    def has(self, name: str) -> bool:
        """Whether this architecture's rank files hold the weight (e.g. norm biases only with LayerNorm)."""
        return name in self.rows

    def whole(self, name: str, layer: int | None = None) -> torch.Tensor:
        w = self.rows.get(name)
        if w is None:
            known = BY_NAME.get(name)
            why = "is not in this architecture" if known and known.trtllm else "is not a rank tensor"
            raise CheckpointFormatError(f"weight '{name}' {why}")
        if w.is_layer:
            if layer is None or layer not in self.stage_of:
                raise CheckpointFormatError(f"layer {layer} outside the {self.cfg.num_layers} of config.json")
            stage, local = self.stage_of[layer]
        else:
            stage, local = (0 if w.rule is Rule.EMBEDDING else self.cfg.mapping.pp - 1), 0
        return join(w, lambda trtllm: self._shards(trtllm.format(i=local), stage), self.layout)

    def _shards(self, name: str, stage: int) -> list[torch.Tensor]:
        out = []
        for tp in range(self.cfg.mapping.tp):
            rank = stage * self.cfg.mapping.tp + tp
            if name not in self.ranks[rank]:
                raise CheckpointFormatError(f"{self.directory / f'rank{rank}.safetensors'}: tensor '{name}' missing")
            out.append(self.ranks[rank][name])
        return out
