"""Hash every file a conversion writes, for checking that a refactor changes no byte.

    python scripts/rank_file_hashes.py OUT_DIR   # fixtures + conversions under OUT_DIR, hashes in OUT_DIR/hashes.json
    python scripts/rank_file_hashes.py --compare A.json B.json

Six fixtures (Nemotron / Llama × zarr, torch_dist, legacy; TP 1-2, PP 1-2) are written with the NeMo writer and
converted to four layouts each (TP1 fp32 padded; TP2 bf16; TP2×PP2 bf16 compact; TP4 fp32 with parallel embedding),
plus demo/checkpoint: the fixture trees and every converted file (config.json, reward_metadata.json, the tokenizer and
each rank*.safetensors) are hashed. Run it at two commits (e.g. from a `git worktree`) and compare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

CASES = [
    ("nemotron", "zarr", 2, 1),
    ("llama", "zarr", 2, 1),
    ("nemotron", "torch_dist", 2, 1),
    ("llama", "torch_dist", 1, 1),
    ("nemotron", "legacy", 2, 2),
    ("llama", "legacy", 2, 1),
]
LAYOUTS = [(1, 1, "float32", "padded", False), (2, 1, "bfloat16", "padded", False),
           (2, 2, "bfloat16", "compact", False), (4, 1, "float32", "padded", True)]  # fmt: skip


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write(out: Path) -> dict[str, dict[str, str]]:
    from build_engine.convert import convert
    from tooling import fixtures

    hashes = {}
    for arch, fmt, tp, pp in CASES:
        name = f"{arch}-{fmt}-tp{tp}-pp{pp}"
        ckpt = fixtures.write_fixture(out / "fx" / name, arch=arch, fmt=fmt, tp=tp, pp=pp, tokenizer=out / "tok.model")
        hashes[f"fixture/{name}"] = tree_hashes(ckpt)
        for ctp, cpp, dtype, head, pe in LAYOUTS:
            conv = f"{name}/tp{ctp}pp{cpp}-{dtype}-{head}{'-pe' if pe else ''}"
            d = convert(ckpt, out / "conv" / conv, ctp, cpp, dtype, head, progress=False, parallel_embedding=pe)
            hashes[f"convert/{conv}"] = tree_hashes(d)
    demo = convert("demo/checkpoint", out / "conv" / "demo", 1, 1, "bfloat16", progress=False)
    hashes["convert/demo"] = tree_hashes(demo)
    return hashes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    a = p.parse_args()
    if a.compare:
        x, y = (json.loads(f.read_text()) for f in a.compare)
        files = {(t, f) for h in (x, y) for t in h for f in h[t]}
        diff = sorted((t, f) for t, f in files if x.get(t, {}).get(f) != y.get(t, {}).get(f))
        print(f"{len(x)} trees, {sum(len(v) for v in x.values())} files; differing: {len(diff)}")
        for t, f in diff[:20]:
            print(f"  {t}/{f}")
        return 1 if diff else 0
    if a.out is None:
        p.error("give OUT_DIR or --compare A B")
    hashes = write(a.out)
    (a.out / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True))
    print(f"{len(hashes)} trees, {sum(len(v) for v in hashes.values())} files → {a.out / 'hashes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
