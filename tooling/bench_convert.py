"""`make bench`: conversion throughput on a synthetic ≥ 2 GB checkpoint, as a ratio to a plain copy of the same bytes.

Both are measured in this run on the same disk: the copy reads and writes every weight byte once, which is the
floor for any conversion. The conversion runs in a child process so its peak RSS is measured on its own and
can be compared with the checkpoint size (streaming keeps it at a few tensor shards). The synthetic checkpoint is
generated in another child first: a child forked from a parent that holds gigabytes of tensors would report the
parent's pages as its own peak RSS (ru_maxrss survives exec), so the parent stays small and reads the converting
child's own rusage with os.wait4.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tooling import fixtures
from tooling.nemo_writer import write_nemo_checkpoint


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synthetic_checkpoint(out: Path, layers: int, seed: int = 0) -> Path:
    """A Nemotron-shaped (GQA, squared-relu, layernorm1p) zarr bf16 checkpoint stored as TP=8 chunks, like the
    published Nemotron-4-340B-Reward zarr (one chunk per tensor-parallel shard, 8 query groups)."""
    spec = fixtures.FixtureSpec(
        arch="nemotron",
        num_layers=layers,
        hidden_size=2048,
        ffn_hidden_size=8192,
        num_attention_heads=16,
        num_query_groups=8,
        vocab_size=32000,
        num_attributes=9,
    )
    tensors = {k: v.to(torch.bfloat16) for k, v in fixtures.fixture_tensors(spec, seed=seed).items()}
    tok = fixtures.train_tokenizer(out.parent / "bench_tokenizer.model")
    path = write_nemo_checkpoint(out, fixtures.fixture_config(spec), tensors, tok, fmt="zarr", tp=8)
    del tensors
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=22, help="22 layers of this shape ≈ 2.1 GB in bf16")
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--generate-only", metavar="DIR", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.generate_only:
        synthetic_checkpoint(Path(a.generate_only), a.layers)
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="reward-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        src = work / "synthetic"
        gen = [sys.executable, "-m", "tooling.bench_convert", "--layers", str(a.layers), "--generate-only", str(src)]
        subprocess.run(gen, check=True)
        weights = src / "model_weights"
        nbytes = _dir_bytes(weights)
        print(f"synthetic checkpoint: {nbytes / 1e9:.2f} GB of weights in {time.perf_counter() - t0:.0f} s ({src})")

        t0 = time.perf_counter()
        shutil.copytree(weights, work / "copy")
        copy_s = time.perf_counter() - t0
        shutil.rmtree(work / "copy")

        cmd = [
            sys.executable,
            "-m",
            "build_engine",
            "convert",
            "--nemo",
            str(src),
            "--output",
            str(work / "trt"),
            "--tp",
            str(a.tp),
            "--pp",
            str(a.pp),
            "--dtype",
            "bfloat16",
            "--no-progress",
        ]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd)
        _, status, usage = os.wait4(child.pid, 0)
        conv_s = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"conversion failed: {' '.join(cmd)}")
        peak_rss = usage.ru_maxrss * 1024  # Linux reports KiB
        out_bytes = _dir_bytes(work / "trt")

        print(f"plain copy      : {nbytes / copy_s / 1e6:8.1f} MB/s ({copy_s:.1f} s)")
        rate = nbytes / conv_s / 1e6
        print(f"convert TP{a.tp}xPP{a.pp} : {rate:8.1f} MB/s ({conv_s:.1f} s, wrote {out_bytes / 1e9:.2f} GB)")
        print(f"ratio convert/copy throughput: {copy_s / conv_s:.2f}")
        print(f"peak RSS of the conversion   : {peak_rss / 1e6:.0f} MB = {peak_rss / nbytes:.3f} x checkpoint size")
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
