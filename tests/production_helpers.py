"""Shared by the production-path tests (test_mpi_convert, test_trtllm_build, test_launcher, test_capacity)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_engine import capacity, convert
from reward_triton.engine.mapping import Mapping

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
MPIRUN_FLAGS = ["--allow-run-as-root", "--oversubscribe"]
TP, PP = 4, 2  # 8 output ranks: 4 MPI processes write 2 each; GQA 2 groups replicated over TP 4


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def config_340b(tp: int = 8, pp: int = 2) -> dict[str, Any]:
    spec = capacity.published_spec("Nemotron-4-340B-Reward")
    return convert.trtllm_config(spec, Mapping(tp, pp), "bfloat16", "padded")


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


# A stand-in for `trtllm-build` that writes what the real one writes: config.json {version, pretrained_config,
# build_config} and one rank{N}.engine per rank, from its own arguments. `gpus_flag`: it has --gpus_per_node and,
# like TensorRT-LLM 0.13-0.19's build_model, overwrites the checkpoint's gpus_per_node with it (default 8).
STANDIN_TRTLLM_BUILD = """#!{python}
import json, sys
from pathlib import Path
a = sys.argv[1:]
if "--help" in a:
    print("usage: trtllm-build [-h] --checkpoint_dir CHECKPOINT_DIR --output_dir OUTPUT_DIR"
          + (" [--gpus_per_node GPUS_PER_NODE]" if {gpus_flag} else ""))
    sys.exit(0)
def arg(name, default=None):
    return a[a.index(name) + 1] if name in a else default
if not {gpus_flag} and "--gpus_per_node" in a:
    print("trtllm-build: error: unrecognized arguments: --gpus_per_node", file=sys.stderr)
    sys.exit(2)
ckpt, out = Path(arg("--checkpoint_dir")), Path(arg("--output_dir"))
cfg = json.loads((ckpt / "config.json").read_text())
if {fail}:
    sys.exit(3)
if {gpus_flag}:
    cfg["mapping"]["gpus_per_node"] = int(arg("--gpus_per_node", 8))
cfg["logits_dtype"] = arg("--logits_dtype", "float32")
build = {{
    "max_input_len": int(arg("--max_input_len")),
    "max_seq_len": int(arg("--max_seq_len")),
    "max_batch_size": int(arg("--max_batch_size")),
    "max_num_tokens": int(arg("--max_num_tokens")),
    "max_beam_width": int(arg("--max_beam_width", 1)),
    "gather_generation_logits": "--gather_generation_logits" in a,
    "plugin_config": {{
        "use_paged_context_fmha": arg("--use_paged_context_fmha") == "enable",
        "context_fmha": arg("--context_fmha") == "enable",
        "remove_input_padding": arg("--remove_input_padding") == "enable",
        "paged_kv_cache": arg("--kv_cache_type") == "paged",
    }},
}}
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps({{"version": "0.19.0", "pretrained_config": cfg, "build_config": build}}))
for r in range(cfg["mapping"]["world_size"]):
    assert (ckpt / f"rank{{r}}.safetensors").is_file()
    (out / f"rank{{r}}.engine").write_bytes(b"engine")
"""


def standin_trtllm_build(directory: Path, fail: bool = False, gpus_flag: bool = True) -> str:
    exe = directory / ("fail-trtllm-build" if fail else "trtllm-build")
    exe.write_text(STANDIN_TRTLLM_BUILD.format(python=sys.executable, fail=fail, gpus_flag=gpus_flag))
    exe.chmod(0o755)
    return str(exe)


def built_engine(
    engine: Path,
    pretrained: dict[str, Any],
    max_input_len: int = 4096,
    max_num_tokens: int = 16384,
    paged_context_fmha: bool = True,
    build_overrides: dict[str, Any] | None = None,
) -> Path:
    """An engine directory as trtllm-build leaves it (config.json + rank files), for rendering tests."""
    import json

    engine.mkdir(parents=True, exist_ok=True)
    build = {
        "max_input_len": max_input_len,
        "max_seq_len": max_input_len + 1,
        "max_num_tokens": max_num_tokens,
        "gather_generation_logits": True,
        "plugin_config": {
            "use_paged_context_fmha": paged_context_fmha,
            "paged_kv_cache": True,
            "remove_input_padding": True,
        },
    }
    build.update(build_overrides or {})
    config = {"version": "0.19.0", "pretrained_config": pretrained, "build_config": build}
    (engine / "config.json").write_text(json.dumps(config))
    world = int((pretrained.get("mapping") or {}).get("world_size", 1))
    for r in range(world):
        (engine / f"rank{r}.engine").write_bytes(b"engine")
    return engine
