"""Reward metadata: the single source of truth written by the converter and read by every later stage.

`reward_metadata.json` sits next to the TensorRT-LLM checkpoint (and is copied next to the engine). It holds
everything the serving stages need that the engine itself does not know: the reward head bias, attribute
names and order, scalar weights, the SteerLM prompt template, the tokenizer file and the input length limit.
It is applied by `reward_triton.serving.prompt` (conversation → the scored prompt) and `reward_triton.serving.head`
(engine logits → per-attribute scores → scalar reward).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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
