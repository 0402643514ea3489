"""Typed model spec: NeMo `model_config.yaml` (+ the shapes in the checkpoint) → the facts every stage needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from reward_triton.engine import weights as wt
from reward_triton.engine.weights import Arch, is_gated
from reward_triton.metadata import default_attributes


class SpecError(ValueError):
    """The model config is unsupported or inconsistent; the message names the config key."""


class ShapeSource(Protocol):
    def has(self, name: str) -> bool: ...
    def shape(self, name: str) -> tuple[int, ...]: ...


# NeMo activation name -> the canonical one (whether it is gated: `reward_triton.engine.weights.is_gated`)
ACTIVATIONS = {
    "squared-relu": "squared-relu",
    "gelu": "gelu",
    "fast-gelu": "gelu",
    "swiglu": "swiglu",
    "fast-swiglu": "swiglu",
}
NORMALIZATIONS = ("layernorm", "layernorm1p", "rmsnorm")


def gated_config(cfg: dict[str, Any]) -> bool:
    """Whether a NeMo config's MLP is gated (fc1 holds [act; up] halves)."""
    return bool(cfg.get("gated_linear_unit")) or is_gated(str(cfg.get("activation", "")))


def _get(cfg: dict[str, Any], key: str, default: Any = ...) -> Any:
    value = cfg.get(key, default)
    if value is ...:
        raise SpecError(f"model_config.yaml: required key '{key}' is missing")
    return value


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "nemotron" (GPT family, LayerNorm) | "llama" (RMSNorm, SwiGLU)
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int  # rows of the embedding table in the checkpoint (already padded by NeMo)
    max_position_embeddings: int
    max_input_len: int
    activation: str  # "squared-relu" | "gelu" | "swiglu"
    normalization: str  # "layernorm" | "layernorm1p" | "rmsnorm"
    norm_eps: float
    rotary_pct: float
    rotary_base: float
    num_attributes: int
    attribute_names: tuple[str, ...]
    trained_attributes: tuple[str, ...]
    scalar_weights: tuple[float, ...]
    tokenizer_ref: str

    @property
    def arch(self) -> Arch:
        """The architecture facts the weight table selects rows and rules by (decided here, once)."""
        return Arch(
            gated=is_gated(self.activation),
            norm_bias=self.normalization != "rmsnorm",
            layernorm1p=self.normalization == "layernorm1p",
        )

    @property
    def qkv_rows(self) -> int:
        return (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name → shape (per layer for layer tensors) that the checkpoint must have."""
        h, f = self.hidden_size, self.ffn_hidden_size
        shapes: dict[str, tuple[int, ...]] = {
            wt.EMBEDDING: (self.vocab_size, h),
            wt.LN1_W: (h,),
            wt.QKV: (self.qkv_rows, h),
            wt.PROJ: (h, self.num_attention_heads * self.head_dim),
            wt.LN2_W: (h,),
            wt.FC1: (2 * f if self.arch.gated else f, h),
            wt.FC2: (h, f),
            wt.LNF_W: (h,),
            wt.HEAD_W: (self.num_attributes, h),
            wt.HEAD_B: (self.num_attributes,),
        }
        if self.arch.norm_bias:
            shapes.update({wt.LN1_B: (h,), wt.LN2_B: (h,), wt.LNF_B: (h,)})
        return shapes

    @classmethod
    def from_nemo(cls, cfg: dict[str, Any], weights: ShapeSource) -> ModelSpec:
        act_name = str(_get(cfg, "activation", "gelu"))
        if act_name not in ACTIVATIONS:
            raise SpecError(
                f"model_config.yaml: activation '{act_name}' is not supported (supported: {sorted(ACTIVATIONS)})"
            )
        activation = ACTIVATIONS[act_name]
        if cfg.get("gated_linear_unit") and not is_gated(activation):
            raise SpecError(
                f"model_config.yaml: gated_linear_unit with activation '{act_name}' is not supported (use swiglu)"
            )
        normalization = str(_get(cfg, "normalization", "layernorm"))
        if normalization not in NORMALIZATIONS:
            raise SpecError(
                f"model_config.yaml: normalization '{normalization}' is not supported (supported: {NORMALIZATIONS})"
            )
        pos = str(_get(cfg, "position_embedding_type", "rope"))
        if pos != "rope":
            raise SpecError(f"model_config.yaml: position_embedding_type '{pos}' is not supported (only 'rope')")
        if cfg.get("transformer_block_type", "pre_ln") != "pre_ln":
            raise SpecError(
                f"model_config.yaml: transformer_block_type '{cfg['transformer_block_type']}' is not supported"
            )
        if cfg.get("share_embeddings_and_output_weights", False) and not weights.has(wt.HEAD_W):
            raise SpecError("model_config.yaml: tied embeddings without an rm_head are not a reward model")

        hidden = int(_get(cfg, "hidden_size"))
        heads = int(_get(cfg, "num_attention_heads"))
        kv_heads = int(cfg.get("num_query_groups") or heads)
        head_dim = int(cfg.get("kv_channels") or hidden // heads)
        if heads % kv_heads:
            raise SpecError(
                f"model_config.yaml: num_attention_heads {heads} is not a multiple of num_query_groups {kv_heads}"
            )
        if normalization == "rmsnorm" and activation != "swiglu":
            raise SpecError(f"model_config.yaml: rmsnorm with activation '{act_name}' is not a supported family")
        family = "llama" if normalization == "rmsnorm" else "nemotron"
        if cfg.get("bias", False):
            raise SpecError("model_config.yaml: bias: true (linear-layer biases) is not supported by this converter")

        for name in (wt.EMBEDDING, wt.HEAD_W):
            if not weights.has(name):
                raise SpecError(f"checkpoint: required tensor '{name}' is missing")
        vocab = weights.shape(wt.EMBEDDING)[0]
        k = weights.shape(wt.HEAD_W)[0]
        reg = cfg.get("regression") or {}
        declared = reg.get("num_attributes")
        if declared is not None and int(declared) != k:
            raise SpecError(f"model_config.yaml: regression.num_attributes {declared} but rm_head.weight has {k} rows")
        names, trained, weights_default = default_attributes(k)
        names = tuple(reg.get("attribute_names") or names)
        if len(names) != k:
            raise SpecError(f"model_config.yaml: regression.attribute_names has {len(names)} names for {k} outputs")
        trained = tuple(reg.get("trained_attributes") or (trained if names == default_attributes(k)[0] else names))
        scalar = tuple(float(x) for x in (reg.get("scalar_weights") or weights_default))
        if len(scalar) != k:
            raise SpecError(f"model_config.yaml: regression.scalar_weights has {len(scalar)} values for {k} outputs")

        tok = cfg.get("tokenizer") or {}
        tokenizer_ref = tok.get("model") or tok.get("tokenizer_model")
        if not tokenizer_ref:
            raise SpecError("model_config.yaml: tokenizer.model is missing")
        max_pos = int(_get(cfg, "max_position_embeddings", cfg.get("encoder_seq_length", 4096)))
        return cls(
            family=family,
            num_layers=int(_get(cfg, "num_layers")),
            hidden_size=hidden,
            ffn_hidden_size=int(_get(cfg, "ffn_hidden_size")),
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            max_position_embeddings=max_pos,
            max_input_len=int(cfg.get("encoder_seq_length") or max_pos),
            activation=activation,
            normalization=normalization,
            norm_eps=float(_get(cfg, "layernorm_epsilon", 1e-5)),
            rotary_pct=float(cfg.get("rotary_percentage", 1.0)),
            rotary_base=float(cfg.get("rotary_base", 10000.0)),
            num_attributes=k,
            attribute_names=names,
            trained_attributes=trained,
            scalar_weights=scalar,
            tokenizer_ref=str(tokenizer_ref),
        )
