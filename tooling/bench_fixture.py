"""A larger random-weight fixture for `make perf`: hidden 512, 8 layers (the CPU engine's benchmark shape).

    python -m tooling.bench_fixture --arch nemotron --out build/fixture-large-nemotron

Same writer as `tooling.fixtures` (real NeMo zarr layout, bf16, sentencepiece tokenizer), only the shape is
larger: Nemotron-shaped GQA 16 heads / 4 groups, squared-ReLU, FFN 2048; Llama-shaped MHA 16 heads, SwiGLU 1376.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from tooling import fixtures
from tooling.nemo_writer import write_nemo_checkpoint


def large_spec(arch: str, hidden: int = 512, layers: int = 8, seq_length: int = 512) -> fixtures.FixtureSpec:
    base = fixtures.fixture_spec(arch)
    heads = hidden // 32
    return dataclasses.replace(
        base,
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=4 * hidden if arch == "nemotron" else (8 * hidden // 3 + 31) // 32 * 32,
        num_attention_heads=heads,
        num_query_groups=heads // 4 if arch == "nemotron" else heads,
        seq_length=seq_length,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tooling.bench_fixture", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=fixtures.ARCHS, default="nemotron")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seq-length", type=int, default=512, help="max input length")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    spec = large_spec(a.arch, a.hidden, a.layers, a.seq_length)
    tok = fixtures.train_tokenizer(a.out.parent / "fixture_tokenizer.model", spec.tokenizer_vocab_size)
    tensors = fixtures.fixture_tensors(spec, seed=a.seed)
    print(write_nemo_checkpoint(a.out, fixtures.fixture_config(spec), tensors, tok, "zarr", tp=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
