"""The prefix cache behind a real tritonserver: a GRPO-shaped `reward_model` request (groups of rows sharing a
prompt) scores as the cache-off engine does, offline; Triton's metrics endpoint shows the tokens the engine read
from the cache, as many as the two-wave order (one row of each group first) makes readable."""

from __future__ import annotations

import random
import re
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from triton_server import RunningServer, make_client, serve_fixture

from build_engine.repository import RenderOptions
from reward_triton.engine.model import TorchEngine
from reward_triton.engine.prefix_cache import DEFAULT_BLOCK_TOKENS
from reward_triton.metadata import RewardMetadata
from reward_triton.serving.head import scores

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    options = RenderOptions(torch_threads=1, torch_prefix_cache_bytes=64 << 20)
    with serve_fixture(tmp_path_factory.mktemp("prefix-served"), arch="nemotron", options=options) as running:
        yield running


def metrics(server: RunningServer) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.process.metrics_port}/metrics", timeout=10).read()
    found = re.findall(r'^reward_engine_(\w+)\{model="tensorrt_llm"\} (\S+)$', text.decode(), re.MULTILINE)
    return {name: float(value) for name, value in found}


def test_rollout_groups_read_their_prompt_from_the_cache(server: RunningServer) -> None:
    meta = RewardMetadata.load(server.checkpoint)
    rng = random.Random(0)
    prompts = [[g + 1] + [rng.randrange(meta.vocab_size) for _ in range(69)] for g in range(3)]
    rows = [
        p + [i + 1] + [rng.randrange(meta.vocab_size) for _ in range(rng.randrange(4, 30))]
        for p in prompts
        for i in range(4)
    ]
    tokens = np.zeros((len(rows), max(map(len, rows)) + 3), dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    lengths = np.array([[len(r)] for r in rows], dtype=np.int64)
    before = metrics(server)

    from tritonclient.http import InferInput

    client = make_client(server, "http")
    inputs = [
        InferInput("tokens", list(tokens.shape), "INT64"),
        InferInput("sequence_lengths", [len(rows), 1], "INT64"),
    ]
    inputs[0].set_data_from_numpy(tokens)
    inputs[1].set_data_from_numpy(lengths)
    rewards = client.infer("reward_model", inputs).as_numpy("rewards")

    cold = TorchEngine.from_checkpoint(server.checkpoint)  # cache off, one row at a time
    oracle = np.concatenate([scores(cold.logits([r]).numpy(), meta) for r in rows])
    np.testing.assert_allclose(rewards, oracle, atol=1e-5, rtol=0)

    after = metrics(server)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert delta["tokens_sent"] == sum(map(len, rows))
    # the longest row of each group computes everything; the other 3 read the prompt's 2 full blocks
    assert delta["tokens_cached"] == 3 * 3 * (70 // DEFAULT_BLOCK_TOKENS) * DEFAULT_BLOCK_TOKENS
    assert delta["tokens_computed"] == delta["tokens_sent"] - delta["tokens_cached"]
    assert delta["hit_sequences"] == 9
    assert 0 < after["bytes_used"] <= after["budget_bytes"] == 64 << 20
