"""Repository rendering: every config.pbtxt (both engine backends) parses with Triton's schema and wires up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.protobuf import text_format
from production_helpers import built_engine
from tritonclient.grpc import model_config_pb2

from build_engine.repository import (
    DEFAULT_SOURCE,
    MODELS,
    RenderOptions,
    RepositoryError,
    main,
    pbtxt_string,
    render_repository,
    render_text,
)
from reward_triton.metadata import METADATA_FILE, TOKENIZER_FILE, RewardMetadata
from tooling import fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Just what rendering reads: metadata, tokenizer, config.json (no weights needed)."""
    d = tmp_path_factory.mktemp("ckpt")
    fixtures.train_tokenizer(d / TOKENIZER_FILE)
    RewardMetadata(
        attribute_names=('help"ful', "correct"),
        trained_attributes=("correct",),
        head_bias=(0.1, 0.2),
        scalar_weights=(0.25, -0.5),
        max_input_len=4096,
        vocab_size=384,
    ).save(d)
    (d / "config.json").write_text(json.dumps({"mapping": {"world_size": 16, "tp_size": 8, "pp_size": 2}}))
    return d


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _check_ensemble(configs: dict[str, model_config_pb2.ModelConfig], name: str) -> None:
    ens = configs[name]
    tensors = {t.name: t.data_type for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size >= ens.max_batch_size
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t.data_type for t in model.output}
        for key, value in step.input_map.items():
            assert key in inputs, (name, step.model_name, key)
            assert tensors[value] == inputs[key].data_type, (name, key)
        for required in (n for n, t in inputs.items() if not t.optional):
            assert required in step.input_map, (name, step.model_name, required)
        for key, value in step.output_map.items():
            assert key in outputs, (name, step.model_name, key)
            tensors[value] = outputs[key]
    for out in ens.output:
        assert tensors[out.name] == out.data_type, (name, out.name)
    # Triton refuses an ensemble with a step output that nothing consumes
    consumed = {v for step in ens.ensemble_scheduling.step for v in step.input_map.values()}
    consumed |= {o.name for o in ens.output}
    for step in ens.ensemble_scheduling.step:
        for value in step.output_map.values():
            assert value in consumed, (name, step.model_name, value, "is not consumed")


def _check_bls(rm: model_config_pb2.ModelConfig, trt: model_config_pb2.ModelConfig, model_dir: Path) -> None:
    """reward_model: a python BLS model whose per-row engine requests fit the `tensorrt_llm` config as rendered."""
    from reward_triton.serving.reward_model import ENGINE_INPUTS, ENGINE_MODEL, ENGINE_OUTPUT, ENGINE_REQUESTED_OUTPUTS

    assert rm.backend == "python" and rm.max_batch_size == 1024 and trt.name == ENGINE_MODEL
    assert rm.parameters["model_dir"].string_value == str(model_dir.resolve())
    assert rm.parameters["max_rows"].string_value == "1024"
    assert rm.instance_group[0].count == 2 and not rm.HasField("dynamic_batching")
    types = {t.name: (t.data_type, list(t.dims), t.optional) for t in rm.input}
    assert types == {
        "sentences": (model_config_pb2.TYPE_STRING, [1], True),
        "tokens": (model_config_pb2.TYPE_INT64, [-1], True),
        "sequence_lengths": (model_config_pb2.TYPE_INT64, [1], True),
        "add_EOS": (model_config_pb2.TYPE_BOOL, [1], True),
    }
    engine_inputs = {t.name: t for t in trt.input}
    assert set(ENGINE_INPUTS) <= set(engine_inputs)  # every tensor the fan-out sends is declared ...
    required = {n for n, t in engine_inputs.items() if not t.optional}
    assert required <= set(ENGINE_INPUTS)  # ... and every required one is sent
    assert ENGINE_OUTPUT in {o.name for o in trt.output}
    assert {"output_ids", "sequence_length", ENGINE_OUTPUT} <= set(ENGINE_REQUESTED_OUTPUTS)  # what the backend needs
    assert set(ENGINE_REQUESTED_OUTPUTS) <= {o.name for o in trt.output}


@pytest.mark.parametrize("backend", ["torch", "tensorrtllm"])
def test_every_config_parses_and_ensembles_wire_up(checkpoint: Path, tmp_path: Path, backend: str) -> None:
    engine = built_engine(tmp_path / "engine", json.loads((checkpoint / "config.json").read_text()))
    out = render_repository(
        checkpoint,
        tmp_path / "repo",
        engine_dir=engine if backend == "tensorrtllm" else None,
        options=RenderOptions(backend=backend, max_batch_size=128),
    )
    configs = {m: _parse(out / m / "config.pbtxt") for m in MODELS}
    for name, cfg in configs.items():
        assert cfg.name == name and "${" not in (out / name / "config.pbtxt").read_text()
    trt = configs["tensorrt_llm"]
    assert trt.backend == ("python" if backend == "torch" else "tensorrtllm")
    assert trt.max_batch_size == 128 and trt.dynamic_batching is not None
    assert trt.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    gen = next(o for o in trt.output if o.name == "generation_logits")
    assert gen.data_type == model_config_pb2.TYPE_FP32 and list(gen.dims) == [-1, -1, -1]
    model_dir = engine if backend == "tensorrtllm" else checkpoint
    assert trt.parameters["gpt_model_path"].string_value == str(model_dir.resolve())
    for stage in ("preprocessing", "postprocessing"):
        assert configs[stage].parameters["model_dir"].string_value == str(model_dir.resolve())
    assert RewardMetadata.load(model_dir).attribute_names == ('help"ful', "correct")
    assert (model_dir / TOKENIZER_FILE).is_file() and (model_dir / METADATA_FILE).is_file()
    _check_ensemble(configs, "ensemble")
    _check_bls(configs["reward_model"], trt, model_dir)
    ens = configs["ensemble"]
    assert json.loads(ens.parameters["attribute_names"].string_value) == ['help"ful', "correct"]
    assert json.loads(ens.parameters["scalar_weights"].string_value) == [0.25, -0.5]
    assert {o.name: list(o.dims) for o in ens.output} == {
        "scores": [2],
        "reward": [1],
        "num_input_tokens": [1],
        "truncated": [1],
    }
    assert {o.name: list(o.dims) for o in configs["reward_model"].output} == {"rewards": [2], "exceeded": [1]}
    assert (out / "preprocessing" / "1" / "model.py").is_file()


def test_every_template_uses_known_placeholders() -> None:
    templates = sorted(DEFAULT_SOURCE.glob("*/config*.pbtxt.in"))
    assert {p.parent.name for p in templates} == set(MODELS)
    assert {p.name for p in (DEFAULT_SOURCE / "tensorrt_llm").glob("config*.in")} == {
        "config.torch.pbtxt.in",
        "config.tensorrtllm.pbtxt.in",
    }
    for p in templates:
        assert not re.findall(r"\$(?!\{[a-z_]+\})", p.read_text()), p


def test_render_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"\$\{nope\}"):
        render_text("x: ${nope}", {}, "t")
    with pytest.raises(RepositoryError, match="engine_dir"):
        render_repository(checkpoint, tmp_path / "r", options=RenderOptions(backend="tensorrtllm"))
    with pytest.raises(RepositoryError, match="backend"):
        RenderOptions(backend="onnx")
    assert main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "r")]) == 1


def test_pbtxt_string_escapes() -> None:
    cfg = text_format.Parse(
        f'name: "{pbtxt_string(chr(34) + "a" + chr(92) + "b" + chr(10) + "☃")}"', model_config_pb2.ModelConfig()
    )
    assert cfg.name == '"a\\b\n☃'
