"""Conformance with NVIDIA's C++ `tensorrtllm` backend, without a GPU (reward_triton/serving/trtllm_contract.py).

A converted checkpoint is built by a stand-in `trtllm-build` that writes what the real one writes, the repository
is rendered for backend tensorrtllm (and torch), every config is parsed with Triton's protobuf schema and checked
against the written contract; the PyTorch stand-in refuses to load where the backend would. The served side (the
stand-in refusing requests as the backend does, through a real tritonserver) is in test_triton_server.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from production_helpers import ROOT, built_engine, parse, standin_trtllm_build
from tritonclient.grpc import model_config_pb2

from build_engine import repository, trtllm_build
from build_engine.repository import RenderOptions, RepositoryError, config_dict, render_repository
from reward_triton.engine.stand_in import EngineStage
from reward_triton.errors import RequestError
from reward_triton.metadata import RewardMetadata
from reward_triton.serving import trtllm_contract as contract
from reward_triton.serving.preprocess import Preprocessor
from reward_triton.serving.reward_model import ENGINE_REQUESTED_OUTPUTS

BUILT_MAX_INPUT_LEN = 64  # below the checkpoint's own limit: every stage must then say 64


@pytest.fixture(scope="module")
def engine(single: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trtllm")
    opts = trtllm_build.BuildOptions(
        max_input_len=BUILT_MAX_INPUT_LEN, max_num_tokens=256, gpus_per_node=4, allow_uneven_pp=True
    )
    return trtllm_build.build_engine(single, d / "engine", opts, executable=standin_trtllm_build(d))


@pytest.fixture(scope="module")
def rendered(single: Path, engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    return render_repository(single, out, engine_dir=engine, options=RenderOptions(backend="tensorrtllm"))


def _configs(repo: Path) -> dict[str, dict[str, Any]]:
    return {m: config_dict((repo / m / "config.pbtxt").read_text()) for m in repository.MODELS}


def test_tensorrtllm_repository_follows_the_contract(single: Path, engine: Path, rendered: Path) -> None:
    for model in repository.MODELS:
        parse(rendered / model / "config.pbtxt")  # Triton's own schema
    configs = _configs(rendered)
    trt = configs["tensorrt_llm"]
    assert trt["backend"] == "tensorrtllm"
    assert contract.check_model_config(trt, "TYPE_FP32") == []
    params = {k: v.get("string_value", "") for k, v in trt["parameters"].items()}  # protobuf omits empty strings
    for p in contract.REQUIRED_PARAMETERS:  # read without a default by the backend (0.19+ for three of them)
        assert p.name in params, p.name
    assert params["tokenizer_dir"] == params["xgrammar_tokenizer_info_path"] == params["guided_decoding_backend"] == ""
    assert params["exclude_input_in_output"] == "true" and params["enable_kv_cache_reuse"] == "true"
    assert params["enable_chunked_context"] == "false"  # max_num_tokens 256 >= max_input_len 64
    assert Path(params["gpt_model_path"]) == engine
    # every caller asks for what the backend fills: the ensemble step, and reward_model's BLS requests
    step = next(s for s in configs["ensemble"]["ensemble_scheduling"]["step"] if s["model_name"] == "tensorrt_llm")
    assert contract.check_caller_outputs("ensemble", step["output_map"]) == []
    assert contract.check_caller_outputs("reward_model", ENGINE_REQUESTED_OUTPUTS) == []
    # ... and the ensemble consumes every output it maps (Triton refuses the ensemble otherwise)
    consumed = {v for s in configs["ensemble"]["ensemble_scheduling"]["step"] for v in s.get("input_map", {}).values()}
    assert {step["output_map"][n] for n in contract.CALLER_OUTPUTS} <= consumed
    # the logits dtype declared on both sides of the ensemble is the engine's
    post = {t["name"]: t for t in configs["postprocessing"]["input"]}
    assert post["generation_logits"]["data_type"] == contract.declared_logits_type(trt) == "TYPE_FP32"


def test_every_stage_enforces_the_built_engines_max_input_len(single: Path, engine: Path, rendered: Path) -> None:
    assert RewardMetadata.load(single).max_input_len > BUILT_MAX_INPUT_LEN
    assert RewardMetadata.load(engine).max_input_len == BUILT_MAX_INPUT_LEN
    configs = _configs(rendered)
    for model in ("ensemble", "reward_model"):
        assert configs[model]["parameters"]["max_input_len"]["string_value"] == str(BUILT_MAX_INPUT_LEN)
    for model in ("preprocessing", "postprocessing", "reward_model"):
        assert Path(configs[model]["parameters"]["model_dir"]["string_value"]) == engine
    pre = Preprocessor.from_dir(engine)
    with pytest.raises(RequestError, match=f"maximum input length of {BUILT_MAX_INPUT_LEN} tokens"):
        pre.text("word " * 300)


def test_torch_repository_follows_the_same_contract(single: Path, tmp_path: Path) -> None:
    out = render_repository(single, tmp_path / "repo", options=RenderOptions(backend="torch", torch_threads=1))
    configs = _configs(out)
    assert configs["tensorrt_llm"]["backend"] == "python"
    assert contract.check_model_config(configs["tensorrt_llm"], "TYPE_FP32") == []
    step = next(s for s in configs["ensemble"]["ensemble_scheduling"]["step"] if s["model_name"] == "tensorrt_llm")
    assert contract.check_caller_outputs("ensemble", step["output_map"]) == []


def test_the_contract_check_sees_what_the_backend_refuses(rendered: Path) -> None:
    good = _configs(rendered)["tensorrt_llm"]

    def problems(change: Any) -> list[str]:
        cfg = copy.deepcopy(good)
        change(cfg)
        return contract.check_model_config(cfg, "TYPE_FP32")

    for name in ("gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"):
        assert f"Cannot find parameter with name: {name}" in problems(lambda c, n=name: c["parameters"].pop(n))
    assert any("Cannot convert yes to a boolean" in p for p in problems(
        lambda c: c["parameters"].__setitem__("exclude_input_in_output", {"string_value": "yes"})
    ))  # fmt: skip
    assert any("output output_ids is not declared" in p for p in problems(
        lambda c: c.__setitem__("output", [o for o in c["output"] if o["name"] != "output_ids"])
    ))  # fmt: skip

    def fp16_logits(c: dict) -> None:
        for o in c["output"]:
            if o["name"] in contract.LOGITS_OUTPUTS:
                o["data_type"] = "TYPE_FP16"

    assert any("the engine's logits are TYPE_FP32" in p for p in problems(fp16_logits))
    assert any(
        "decoupled" in p for p in problems(lambda c: c.__setitem__("model_transaction_policy", {"decoupled": True}))
    )
    assert contract.check_caller_outputs("step", ["generation_logits"]) == [
        "step does not ask for output_ids",
        "step does not ask for sequence_length",
    ]


def test_render_refuses_at_render_time_what_fails_in_the_container(single: Path, tmp_path: Path) -> None:
    pretrained = json.loads((single / "config.json").read_text())
    render = render_repository

    def options(**kw: Any) -> RenderOptions:
        return RenderOptions(backend="tensorrtllm", **kw)

    with pytest.raises(RepositoryError, match="config.json: missing"):
        render(single, tmp_path / "r0", engine_dir=tmp_path / "absent", options=options())
    partial = built_engine(tmp_path / "partial", pretrained)
    (partial / "rank7.engine").unlink()
    with pytest.raises(RepositoryError, match=r"engine files missing for ranks \[7\]"):
        render(single, tmp_path / "r1", engine_dir=partial, options=options())
    old_build = built_engine(tmp_path / "no-paged", pretrained, paged_context_fmha=False)
    with pytest.raises(RepositoryError, match="KV cache reuse needs an engine built with --use_paged_context_fmha"):
        render(single, tmp_path / "r2", engine_dir=old_build, options=options())
    repo = render(single, tmp_path / "r3", engine_dir=old_build, options=options(kv_cache_reuse=False))
    assert parse(repo / "tensorrt_llm" / "config.pbtxt").parameters["enable_kv_cache_reuse"].string_value == "false"
    # max_num_tokens < max_input_len: chunked context turns on (the engine has paged context FMHA) or is refused
    small = built_engine(tmp_path / "small", pretrained, max_input_len=128, max_num_tokens=64)
    repo = render(single, tmp_path / "r4", engine_dir=small, options=options())
    assert parse(repo / "tensorrt_llm" / "config.pbtxt").parameters["enable_chunked_context"].string_value == "true"
    with pytest.raises(RepositoryError, match="max_num_tokens 64 < max_input_len 128 with chunked context off"):
        render(single, tmp_path / "r5", engine_dir=small, options=options(chunked_context=False))
    # logits: FP16 engines declare FP16 everywhere; anything else the backend cannot serve
    fp16 = built_engine(tmp_path / "fp16", {**pretrained, "logits_dtype": "float16"})
    repo = render(single, tmp_path / "r6", engine_dir=fp16, options=options())
    assert contract.declared_logits_type(config_dict((repo / "tensorrt_llm" / "config.pbtxt").read_text())) == (
        "TYPE_FP16"
    )
    post = parse(repo / "postprocessing" / "config.pbtxt")
    assert next(i for i in post.input if i.name == "generation_logits").data_type == model_config_pb2.TYPE_FP16
    bf16 = built_engine(tmp_path / "bf16", {**pretrained, "logits_dtype": "bfloat16"})
    with pytest.raises(RepositoryError, match="logits only as float32 or float16"):
        render(single, tmp_path / "r7", engine_dir=bf16, options=options())
    # an engine the backend cannot serve rewards from, or cannot batch in flight
    no_logits = built_engine(tmp_path / "no-logits", pretrained, build_overrides={"gather_generation_logits": False})
    with pytest.raises(RepositoryError, match="without --gather_generation_logits"):
        render(single, tmp_path / "r8", engine_dir=no_logits, options=options())
    contiguous = built_engine(
        tmp_path / "contiguous", pretrained, build_overrides={"plugin_config": {"paged_kv_cache": False}}
    )
    with pytest.raises(RepositoryError, match="paged_kv_cache off"):
        render(single, tmp_path / "r9", engine_dir=contiguous, options=options(kv_cache_reuse=False))
    # max_seq_len leaves room for the prompt and the reward position only: the stages enforce max_seq_len - 1
    tight = built_engine(tmp_path / "tight", pretrained, max_input_len=100, build_overrides={"max_seq_len": 100})
    render(single, tmp_path / "r10", engine_dir=tight, options=options())
    assert RewardMetadata.load(tight).max_input_len == 99


def test_engine_dir_as_the_container_sees_it(single: Path, engine: Path, tmp_path: Path) -> None:
    opts = RenderOptions(backend="tensorrtllm", engine_dir_in_container="/engines/nemotron-340b-rm")
    repo = render_repository(single, tmp_path / "repo", engine_dir=engine, options=opts)
    configs = _configs(repo)
    assert configs["tensorrt_llm"]["parameters"]["gpt_model_path"]["string_value"] == "/engines/nemotron-340b-rm"
    for model in ("preprocessing", "postprocessing", "reward_model"):
        assert configs[model]["parameters"]["model_dir"]["string_value"] == "/engines/nemotron-340b-rm"
    assert repository.main(
        ["--checkpoint", str(single), "--backend", "tensorrtllm", "--engine-dir", str(tmp_path / "nothing-here"),
         "--output", str(tmp_path / "r2")]
    ) == 1  # fmt: skip


def _torch_config(single: Path, tmp_path: Path) -> dict[str, Any]:
    out = render_repository(single, tmp_path / "repo", options=RenderOptions(backend="torch", torch_threads=1))
    return json.loads(json.dumps(config_dict((out / "tensorrt_llm" / "config.pbtxt").read_text())))


def test_stand_in_loads_only_where_the_backend_would(single: Path, tmp_path: Path) -> None:
    good = _torch_config(single, tmp_path)
    stage = EngineStage.from_model_config(good)
    assert stage.exclude_input_in_output is True and stage.max_input_len == RewardMetadata.load(single).max_input_len

    def refuses(change: Any, needle: str) -> None:
        cfg = copy.deepcopy(good)
        change(cfg)
        with pytest.raises(contract.ContractViolation, match=needle):
            EngineStage.from_model_config(cfg)

    for name in ("gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"):
        refuses(lambda c, n=name: c["parameters"].pop(n), f"Cannot find parameter with name: {name}")
    refuses(
        lambda c: c["parameters"].__setitem__("gpt_model_path", {"string_value": str(tmp_path / "gone")}),
        "Decoder \\(GPT\\) model path at .* does not exist",
    )
    refuses(
        lambda c: c["parameters"].__setitem__("exclude_input_in_output", {"string_value": "yes"}),
        "Cannot convert yes to a boolean",
    )
    refuses(lambda c: c.__setitem__("model_transaction_policy", {"decoupled": True}), "non-decoupled")

    def fp16(c: dict) -> None:
        next(o for o in c["output"] if o["name"] == "generation_logits")["data_type"] = "TYPE_FP16"

    refuses(fp16, "config declares logits as TYPE_FP16, the engine's logits are TYPE_FP32")


@pytest.mark.slow
def test_make_engine_backend_tensorrtllm_as_an_operator_runs_it(tmp_path: Path) -> None:
    """`make engine BACKEND=tensorrtllm` on the demo checkpoint, with a stand-in trtllm-build on PATH and an engine
    built for max_input_len 200 (the checkpoint says more): the rendered repository follows the contract and every
    stage says 200."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    standin_trtllm_build(bin_dir)
    repo = tmp_path / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("config.pbtxt", "__pycache__"))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = [
        "make", "-s", "engine", "BACKEND=tensorrtllm", f"ENGINE_DIR={tmp_path / 'build'}", f"REPOSITORY={repo}",
        "TRTLLM_BUILD_ARGS=--max-input-len 200 --max-num-tokens 1024", "ENGINE_DIR_IN_CONTAINER=/engines/demo",
    ]  # fmt: skip
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    engine = tmp_path / "build" / "trtllm"
    assert RewardMetadata.load(tmp_path / "build" / "checkpoint").max_input_len > 200
    assert RewardMetadata.load(engine).max_input_len == 200
    configs = _configs(repo)
    assert contract.check_model_config(configs["tensorrt_llm"], "TYPE_FP32") == []
    assert configs["tensorrt_llm"]["parameters"]["gpt_model_path"]["string_value"] == "/engines/demo"
    for model in ("ensemble", "reward_model"):
        assert configs[model]["parameters"]["max_input_len"]["string_value"] == "200"
    long = {"messages": [{"role": "user", "content": "add " * 200}, {"role": "assistant", "content": "4"}]}
    with pytest.raises(RequestError, match="maximum input length of 200 tokens"):
        Preprocessor.from_dir(engine).prepare({"conversation": np.array([[json.dumps(long).encode()]], dtype=object)})
