"""Reward metadata: the single source of truth written by the converter and read by every later stage.

`reward_metadata.json` sits next to the TensorRT-LLM checkpoint (and is copied next to the engine). It holds
everything the serving stages need that the engine itself does not know: the reward head bias, attribute
names and order, scalar weights, the SteerLM prompt template, the tokenizer file and the input length limit.
This module also applies it: `render` (conversation → the scored prompt) and `scores` / `reward` (the reward head
outside the engine: engine logits → per-attribute scores → scalar reward).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from reward_triton.conversation import Conversation
from reward_triton.errors import ServerFault

METADATA_FILE = "reward_metadata.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1

# Nemotron-4-340B-Reward head order (NeMo-Aligner / model card).
NEMOTRON_ATTRIBUTES = (
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
)
# Only the HelpSteer2 attributes (indices 4..8) are trained.
HELPSTEER2_ATTRIBUTES = NEMOTRON_ATTRIBUTES[4:]
# Model card: reward = dot(weights, 9 outputs).
NEMOTRON_SCALAR_WEIGHTS = (0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33)

DEFAULT_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class PromptTemplate:
    """SteerLM / HelpSteer2 template. `{}` placeholders take the turn text."""

    system: str = "<extra_id_0>System\n{}\n"
    user: str = "<extra_id_1>User\n{}\n"
    assistant: str = "<extra_id_1>Assistant\n{}\n"
    label: str = "<extra_id_2>"


def default_attributes(num_attributes: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]]:
    """(attribute names, trained attributes, scalar weights) for a head of this size, when the config is silent."""
    if num_attributes == len(NEMOTRON_ATTRIBUTES):
        return NEMOTRON_ATTRIBUTES, HELPSTEER2_ATTRIBUTES, NEMOTRON_SCALAR_WEIGHTS
    if num_attributes == 1:
        return ("reward",), ("reward",), (1.0,)
    names = tuple(f"attribute_{i}" for i in range(num_attributes))
    return names, names, tuple(1.0 / num_attributes for _ in names)


class MetadataError(ValueError):
    """The metadata file is missing or inconsistent; the message names the file and the field."""


@dataclass(frozen=True)
class RewardMetadata:
    attribute_names: tuple[str, ...]
    trained_attributes: tuple[str, ...]
    head_bias: tuple[float, ...]
    scalar_weights: tuple[float, ...]
    max_input_len: int
    vocab_size: int
    lm_head: str = "padded"  # "padded": lm_head rows = padded vocab, reward rows 0..K-1; "compact": [K, H]
    dtype: str = "bfloat16"
    model_family: str = "nemotron"
    tokenizer_file: str = TOKENIZER_FILE
    default_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    template: PromptTemplate = field(default_factory=PromptTemplate)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        k = len(self.attribute_names)
        for name in ("head_bias", "scalar_weights"):
            if len(getattr(self, name)) != k:
                raise MetadataError(f"{name} has {len(getattr(self, name))} values, expected {k} (one per attribute)")
        unknown = set(self.trained_attributes) - set(self.attribute_names)
        if unknown:
            raise MetadataError(f"trained_attributes {sorted(unknown)} are not attribute names")
        if self.lm_head not in ("padded", "compact"):
            raise MetadataError(f"lm_head must be 'padded' or 'compact', got {self.lm_head!r}")
        if self.max_input_len < 1:
            raise MetadataError(f"max_input_len must be positive, got {self.max_input_len}")

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)

    def to_json(self) -> str:
        d = asdict(self)
        d["num_attributes"] = self.num_attributes
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = METADATA_FILE) -> RewardMetadata:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f"{source}: not valid JSON ({e})") from e
        if d.get("format_version") != FORMAT_VERSION:
            raise MetadataError(f"{source}: format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}")
        d.pop("num_attributes", None)
        try:
            d["template"] = PromptTemplate(**d.get("template", {}))
            for key in ("attribute_names", "trained_attributes", "head_bias", "scalar_weights"):
                d[key] = tuple(d[key])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise MetadataError(f"{source}: missing or unexpected field ({e})") from e

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / METADATA_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RewardMetadata:
        path = Path(directory) / METADATA_FILE
        if not path.is_file():
            raise MetadataError(f"{path}: reward metadata not found (run `python -m build_engine convert` first)")
        return cls.from_json(path.read_text(), source=str(path))

    def tokenizer_path(self, directory: str | os.PathLike[str]) -> Path:
        return Path(directory) / self.tokenizer_file

    @classmethod
    def copy(
        cls, source: str | os.PathLike[str], target: str | os.PathLike[str], max_input_len: int | None = None
    ) -> None:
        """Put the metadata and the tokenizer of `source` (a converted checkpoint) next to an engine in `target`:
        the stages read both from the directory that holds the engine. `max_input_len`: the built engine's
        (`build_config.max_input_len`), which then is what every stage enforces, whatever the checkpoint said."""
        meta = cls.load(source)
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in (METADATA_FILE, meta.tokenizer_file):
            src, dst = Path(source) / name, Path(target) / name
            if not src.is_file():
                raise MetadataError(f"{src}: missing (the converter writes it next to config.json)")
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
        if max_input_len is not None and max_input_len != meta.max_input_len:
            replace(meta, max_input_len=max_input_len).save(target)


# ---- the prompt template ---------------------------------------------------------------------------------------
# A scored string is: system block, every turn's block, then the label prefix. For a multi-turn conversation every
# assistant turn is scored on the prefix up to and including that turn followed by the label; the next turn
# continues from the prefix WITHOUT the label (NeMo-Aligner's annotation semantics, docs/formats.md).
def system_text(conv: Conversation, meta: RewardMetadata) -> str:
    return meta.default_system_prompt if conv.system is None else conv.system


def render(conv: Conversation, meta: RewardMetadata) -> str:
    """The string that scores the conversation's last (assistant) turn."""
    t = meta.template
    blocks = [t.system.format(system_text(conv, meta))]
    blocks += [(t.user if turn.role == "user" else t.assistant).format(turn.content) for turn in conv.turns]
    return "".join(blocks) + t.label


# ---- the reward head outside the engine (numpy only: the postprocessing stage does not load torch) -------------
class HeadError(ServerFault):
    """The head metadata does not fit the engine's logits: a deployment fault (INTERNAL), not the request's."""


def scores(logits: npt.ArrayLike, meta: RewardMetadata) -> np.ndarray:
    """[..., Vout] → [..., K] float32: logits[..., :K] + head_bias (checkpoint attribute order); the leading dims
    are kept (engine output [B, Vout], or Triton's generation_logits [B, beams, out_len, Vout])."""
    arr = np.asarray(logits, dtype=np.float32)
    k = meta.num_attributes
    if arr.ndim == 0 or arr.shape[-1] < k:
        raise HeadError(f"logits have shape {list(arr.shape)}, need a last dimension of at least {k} (the head)")
    head = arr[..., :k]
    if not np.isfinite(head).all():
        raise HeadError("the engine returned non-finite reward logits (NaN or Inf)")
    return head + np.asarray(meta.head_bias, dtype=np.float32)


def reward(attribute_scores: npt.ArrayLike, meta: RewardMetadata) -> np.ndarray:
    """[..., K] → [...] float32: the metadata's scalar weights dotted with the scores."""
    arr = np.asarray(attribute_scores, dtype=np.float32)
    if arr.ndim == 0 or arr.shape[-1] != meta.num_attributes:
        raise HeadError(f"scores have shape {list(arr.shape)}, expected [..., {meta.num_attributes}]")
    return (arr @ np.asarray(meta.scalar_weights, dtype=np.float32)).astype(np.float32)
