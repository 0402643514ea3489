"""Tiny, deterministic NeMo reward-model checkpoints for tests and benchmarks (random weights, real layouts).

    python -m tooling.fixtures --arch nemotron --format zarr --out DIR [--tar]

`write_fixture` = `train_tokenizer` + `fixture_config` + `fixture_tensors` + `tooling.nemo_writer`'s
`write_nemo_checkpoint` (which shards the tensors as Megatron does).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from build_engine.atomic import atomic_file
from reward_triton.engine import weights as wt
from reward_triton.engine.weights import is_gated
from tooling.nemo_writer import FORMATS, Format, model_config, write_nemo_checkpoint

ARCHS: tuple[str, ...] = ("nemotron", "llama")
USER_SYMBOLS = ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>", "\n")
TOKENIZER_VOCAB = 384
# NeMo pads the vocabulary to a multiple of make_vocab_size_divisible_by * tp: 384 → 388 for tp 1 and 2.
EMBEDDING_ROWS = 388
VOCAB_DIVISOR = 194

# ------------------------------------------------------------------------------------------------ tokenizer
_WORDS = (
    "the a an of to and in is it that for on with as was are be this by not or have from at which but you they "
    "his her we can all there their one what so if about when who would will more no out up into do has how "
    "model reward answer question helpful correct coherent complex verbose quality response assistant user "
    "system prompt write explain code python function data test value number list string error because "
    "simple clear short long good bad better best very really also just only first second time people world"
).split()
_CAPS = ("System", "User", "Assistant", "The", "What", "How", "Why", "Please", "Hello", "Thanks")
_PUNCT = (".", ",", "?", "!", ":", ";", "'s", " -", " (1)", " 42", " 2024")


def _corpus(lines: int = 3000, seed: int = 1234) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(lines):
        words = [rng.choice(_CAPS)] + [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        text = " ".join(words)
        yield text + rng.choice(_PUNCT) + ("  " + rng.choice(_CAPS) if rng.random() < 0.1 else "")


def train_tokenizer(out_path: Path, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    """Train (once; an existing `out_path` is kept) a small byte-fallback sentencepiece BPE model offline.

    `<extra_id_0..2>` and `"\\n"` are single-token user symbols; identity normalization and no whitespace
    squashing and no dummy-prefix space, so `decode(encode(text)) == text` for any text; encode adds no BOS/EOS.
    """
    import sentencepiece as spm

    out_path = Path(out_path)
    if out_path.exists():
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        user_defined_symbols=list(USER_SYMBOLS),
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    with atomic_file(out_path) as tmp:
        tmp.write_bytes(model.getvalue())
    return out_path


# ------------------------------------------------------------------------------------------------ spec/config
@dataclass(frozen=True)
class FixtureSpec:
    """Architecture of a fixture model; defaults are the Nemotron-4 family choices (see `nemotron_spec`)."""

    arch: str  # "nemotron" | "llama"
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    num_attributes: int = 9
    kv_channels: int | None = None  # None: hidden_size // num_attention_heads
    normalization: str = "layernorm1p"  # layernorm1p | rmsnorm | layernorm
    activation: str = "squared-relu"  # squared-relu | swiglu | ...
    rotary_percentage: float = 0.5
    rotary_base: float = 10000.0
    layernorm_epsilon: float = 1e-5
    vocab_size: int = EMBEDDING_ROWS  # embedding rows (padded vocabulary)
    make_vocab_size_divisible_by: int = VOCAB_DIVISOR
    tokenizer_vocab_size: int = TOKENIZER_VOCAB
    seq_length: int = 128

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def gated(self) -> bool:
        return is_gated(self.activation)

    @property
    def norm_bias(self) -> bool:
        return self.normalization != "rmsnorm"


def nemotron_spec(num_attributes: int = 9) -> FixtureSpec:
    """Nemotron-4-shaped: GQA (8 heads, 2 groups), head dim 8, layernorm1p, squared-relu, rope 50%."""
    return FixtureSpec(
        arch="nemotron",
        num_layers=3,
        hidden_size=64,
        ffn_hidden_size=256,
        num_attention_heads=8,
        num_query_groups=2,
        kv_channels=None,
        normalization="layernorm1p",
        activation="squared-relu",
        rotary_percentage=0.5,
        num_attributes=num_attributes,
    )


def llama_spec(num_attributes: int = 1) -> FixtureSpec:
    """Llama-2-shaped: MHA (8 heads), RMSNorm, SwiGLU (fc1 [192, 64]), full rope."""
    return FixtureSpec(
        arch="llama",
        num_layers=3,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=8,
        num_query_groups=8,
        kv_channels=None,
        normalization="rmsnorm",
        activation="swiglu",
        rotary_percentage=1.0,
        num_attributes=num_attributes,
    )


def tokenizer_member(spec: FixtureSpec) -> str:
    """The tokenizer's file name at the checkpoint root (NeMo style `<hash>_<name>`)."""
    return f"{hashlib.md5(f'{spec.arch}-tokenizer'.encode()).hexdigest()}_tokenizer.model"


def fixture_config(spec: FixtureSpec) -> dict[str, Any]:
    """`model_config.yaml` content with NeMo's keys."""
    ref = f"nemo:{tokenizer_member(spec)}"
    return model_config(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_attention_heads,
        num_query_groups=spec.num_query_groups,
        num_attributes=spec.num_attributes,
        seq_length=spec.seq_length,
        kv_channels=spec.kv_channels,
        normalization=spec.normalization,
        activation=spec.activation,
        layernorm_epsilon=spec.layernorm_epsilon,
        rotary_percentage=spec.rotary_percentage,
        rotary_base=spec.rotary_base,
        make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
        tokenizer={
            "library": "sentencepiece",
            "type": None,
            "model": ref,
            "tokenizer_model": ref,
            "vocab_file": None,
            "merge_file": None,
            "delimiter": None,
            "sentencepiece_legacy": False,
        },
    )


def fixture_tensors(spec: FixtureSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 canonical tensors (layer tensors stacked [L, ...]) with realistic scales."""
    g = torch.Generator().manual_seed(seed)
    L, h, f, v, k = spec.num_layers, spec.hidden_size, spec.ffn_hidden_size, spec.vocab_size, spec.num_attributes
    qkv_rows = (spec.num_attention_heads + 2 * spec.num_query_groups) * spec.head_dim

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    norm_mean = 0.0 if spec.normalization == "layernorm1p" else 1.0  # layernorm1p stores gamma - 1
    t = {
        wt.EMBEDDING: randn(v, h, std=0.5),
        wt.LN1_W: randn(L, h, std=0.1, mean=norm_mean),
        wt.QKV: randn(L, qkv_rows, h, std=0.08),
        wt.PROJ: randn(L, h, spec.num_attention_heads * spec.head_dim, std=0.08),
        wt.LN2_W: randn(L, h, std=0.1, mean=norm_mean),
        wt.FC1: randn(L, 2 * f if spec.gated else f, h, std=0.08),
        wt.FC2: randn(L, h, f, std=0.06),
        wt.LNF_W: randn(h, std=0.1, mean=norm_mean),
        wt.OUTPUT: randn(v, h, std=0.05),
        wt.HEAD_W: randn(k, h, std=0.15),
        wt.HEAD_B: randn(k, std=0.1),
    }
    if spec.norm_bias:
        t.update({wt.LN1_B: randn(L, h, std=0.05), wt.LN2_B: randn(L, h, std=0.05), wt.LNF_B: randn(h, std=0.05)})
    return t


def fixture_spec(arch: str, num_attributes: int | None = None) -> FixtureSpec:
    if arch == "nemotron":
        return nemotron_spec(9 if num_attributes is None else num_attributes)
    if arch == "llama":
        return llama_spec(1 if num_attributes is None else num_attributes)
    raise ValueError(f"unknown arch {arch!r} (one of {ARCHS})")


def write_fixture(
    out_dir: Path,
    arch: str = "nemotron",
    fmt: Format = "zarr",
    num_attributes: int | None = None,
    tar: bool = False,
    seed: int = 0,
    tp: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    pp: int = 1,
    tokenizer: Path | None = None,
    seq_length: int | None = None,
) -> Path:
    """Write a complete fixture checkpoint into `out_dir` (created; must be absent or empty), or into
    `<out_dir>.nemo` with `tar`; returns the checkpoint path.

    The tokenizer is trained once into `tokenizer` (default: `<out_dir's parent>/fixture_tokenizer.model`) and
    reused by later calls.
    """
    out = Path(out_dir)
    spec = fixture_spec(arch, num_attributes)
    if seq_length is not None:  # max input length (encoder_seq_length = max_position_embeddings)
        spec = dataclasses.replace(spec, seq_length=seq_length)
    tok = train_tokenizer(tokenizer or out.parent / "fixture_tokenizer.model", spec.tokenizer_vocab_size)
    return write_nemo_checkpoint(
        out, fixture_config(spec), fixture_tensors(spec, seed), tok, fmt, tp=tp, dtype=dtype, tar=tar, pp=pp
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a tiny NeMo reward-model checkpoint fixture.")
    p.add_argument("--arch", choices=ARCHS, default="nemotron")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="zarr")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory (or <out>.nemo with --tar)")
    p.add_argument("--tar", action="store_true", help="pack into an uncompressed .nemo tar")
    p.add_argument("--num-attributes", type=int, default=None)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--pp", type=int, default=1, help="pipeline stages (legacy layout only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--seq-length", type=int, default=None, help="max input length (default 128)")
    args = p.parse_args(argv)
    path = write_fixture(
        args.out,
        arch=args.arch,
        fmt=args.fmt,
        num_attributes=args.num_attributes,
        tar=args.tar,
        seed=args.seed,
        tp=args.tp,
        pp=args.pp,
        dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32,
        seq_length=args.seq_length,
    )
    print(path)


if __name__ == "__main__":
    main()
