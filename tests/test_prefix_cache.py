"""The PyTorch engine's prefix cache (reward_triton/engine/prefix_cache.py) against cold runs of the same engine.

Oracle: the engine with the cache off, one sequence at a time, on the same weights (tiny Nemotron-shaped GQA and
Llama-shaped MHA). Warm scores must equal it within 1e-5 (fp32); batch-invariant mode must be bit-identical
whatever the cache holds. Token counts are checked against what the block rules say independently of the cache:
a sequence of n tokens can read at most (n - 1) // block full blocks, and only those another sequence stored.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reward_triton.engine.model import TorchEngine
from reward_triton.engine.prefix_cache import PrefixCache, block_hashes
from reward_triton.serving.reward_model import RewardModelStage, Rows, execute_fanout, first_wave
from tooling.bench_engine import PRESETS, random_weights

BLOCK = 16
VOCAB = 512


@pytest.fixture(scope="module", params=["tiny-nemotron", "tiny-llama", "tiny-nemotron-expanded-kv"])
def preset(request: pytest.FixtureRequest) -> tuple[Any, Any, bool]:
    """(shape, weights, expand_kv): the last runs the GPU's attention path on the CPU (GQA K/V heads expanded)."""
    shape = PRESETS[request.param.removesuffix("-expanded-kv")]
    return shape, random_weights(shape, seed=3), request.param.endswith("-expanded-kv")


def engine(preset: tuple[Any, Any, bool], budget: int = 1 << 26, **kw: Any) -> TorchEngine:
    shape, weights, expand_kv = preset
    e = TorchEngine(shape.engine_config(), weights, "cpu", torch.float32, prefix_cache_bytes=budget, **kw)
    e.expand_kv = expand_kv
    return e


def cold(preset: tuple[Any, Any, bool], seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """The oracle: cache off, one sequence per forward (GQA heads not expanded)."""
    e = engine((preset[0], preset[1], False), budget=0)
    return torch.cat([e.logits([s]) for s in seqs])


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def block_bytes(preset: tuple[Any, Any, bool]) -> int:
    cfg = preset[0].engine_config()
    return cfg.num_layers * BLOCK * 2 * cfg.num_kv_heads * cfg.head_dim * 4


def test_turn_prefixes_warm_equal_cold(preset: tuple[Any, Any, bool]) -> None:
    """A conversation scored turn by turn (annotate): each prefix reads the blocks the previous one stored."""
    rng = random.Random(1)
    turns = [tokens(rng, n) for n in (40, 23, 57, 9, 70, 31, 44, 5)]
    prefixes = [sum(turns[: k + 1], []) for k in range(1, len(turns), 2)]  # after each assistant turn
    e = engine(preset, prefix_block_tokens=BLOCK)
    warm = torch.cat([e.logits([p]) for p in prefixes])
    torch.testing.assert_close(warm, cold(preset, prefixes), atol=1e-5, rtol=0)
    stats = e.stats()
    stored_before = [0] + [(len(p) - 1) // BLOCK for p in prefixes[:-1]]
    expected_cached = sum(min((len(p) - 1) // BLOCK, s) * BLOCK for p, s in zip(prefixes, stored_before, strict=True))
    assert stats["tokens_sent"] == sum(map(len, prefixes))
    assert stats["tokens_cached"] == expected_cached > 0
    assert stats["tokens_computed"] == stats["tokens_sent"] - expected_cached
    assert stats["hit_sequences"] == len(prefixes) - 1
    # scoring the conversations again computes only the last partial block of each
    again = torch.cat([e.logits([p]) for p in prefixes])
    torch.testing.assert_close(again, warm, atol=1e-5, rtol=0)
    assert e.stats()["tokens_computed"] - stats["tokens_computed"] == sum(
        len(p) - (len(p) - 1) // BLOCK * BLOCK for p in prefixes
    )


def test_best_of_n_one_by_one_and_in_one_batch(preset: tuple[Any, Any, bool]) -> None:
    rng = random.Random(2)
    prompt = tokens(rng, 150)
    candidates = [prompt + tokens(rng, rng.randrange(1, 40)) for _ in range(8)]
    oracle = cold(preset, candidates)
    one_by_one = engine(preset, prefix_block_tokens=BLOCK)
    torch.testing.assert_close(torch.cat([one_by_one.logits([c]) for c in candidates]), oracle, atol=1e-5, rtol=0)
    batch = engine(preset, prefix_block_tokens=BLOCK)
    torch.testing.assert_close(batch.logits(candidates), oracle, atol=1e-5, rtol=0)
    # in one batch as one by one: the prompt's 9 full blocks are computed once, the other 7 candidates read them
    for e in (one_by_one, batch):
        assert e.stats()["tokens_cached"] == 7 * (150 // BLOCK) * BLOCK
        assert e.stats()["hit_sequences"] == 7


def test_rollout_batch_sharing_prompts_in_one_batch(preset: tuple[Any, Any, bool]) -> None:
    """A GRPO-shaped batch (4 prompts × 4 responses, shuffled, prompts sharing a system prompt) in one call."""
    rng = random.Random(3)
    system = tokens(rng, 2 * BLOCK + 3)
    prompts = [system + tokens(rng, n) for n in (60, 75, 33, 90)]
    rows = [p + tokens(rng, rng.randrange(1, 30)) for p in prompts for _ in range(4)]
    rng.shuffle(rows)
    e = engine(preset, prefix_block_tokens=BLOCK)
    torch.testing.assert_close(e.logits(rows), cold(preset, rows), atol=1e-5, rtol=0)
    # oracle of the counts: the longest row of each group computes everything; every other row reads its prompt's
    # full blocks (its response's first token differs from the leader's with high probability: checked here)
    expected = 0
    for p in prompts:
        group = sorted((r for r in rows if r[: len(p)] == p), key=len, reverse=True)
        assert all(r[len(p)] != group[0][len(p)] or len(r) == len(p) for r in group[1:])
        expected += sum(min((len(r) - 1) // BLOCK, len(p) // BLOCK) * BLOCK for r in group[1:])
    system_blocks = len(system) // BLOCK * BLOCK
    # the system prompt's blocks are read by the three group leaders that did not store them
    assert e.stats()["tokens_cached"] == expected + 3 * system_blocks
    torch.testing.assert_close(e.logits(rows), cold(preset, rows), atol=1e-5, rtol=0)  # warm batch


def test_identical_sequences_in_one_batch(preset: tuple[Any, Any, bool]) -> None:
    rng = random.Random(4)
    seq = tokens(rng, 5 * BLOCK)
    e = engine(preset, prefix_block_tokens=BLOCK)
    out = e.logits([seq, seq, seq[:BLOCK], seq])
    torch.testing.assert_close(out, cold(preset, [seq, seq, seq[:BLOCK], seq]), atol=1e-5, rtol=0)
    assert e.stats()["tokens_computed"] == 5 * BLOCK + 2 * BLOCK + BLOCK  # the leader, then the last blocks


def test_eviction_under_a_tiny_budget_is_lru_from_the_chain_tail(preset: tuple[Any, Any, bool]) -> None:
    rng = random.Random(5)
    e = engine(preset, budget=3 * block_bytes(preset), prefix_block_tokens=BLOCK)
    a, b = tokens(rng, 2 * BLOCK + 1), tokens(rng, 2 * BLOCK + 1)  # two full blocks each
    e.logits([a])
    e.logits([b])  # storing b's second block evicts the least recent block: a's second (its chain's tail)
    assert e.stats()["blocks"] == 3 and e.stats()["blocks_evicted"] == 1
    assert e.stats()["bytes_used"] == 3 * block_bytes(preset)
    before = e.stats()["tokens_cached"]
    torch.testing.assert_close(e.logits([a]), cold(preset, [a]), atol=1e-5, rtol=0)
    assert e.stats()["tokens_cached"] - before == BLOCK  # a's first block survived, its second did not
    # a chain longer than the budget keeps its first blocks (the reachable ones), not its last
    long = tokens(rng, 5 * BLOCK + 1)
    before = e.stats()["tokens_cached"]
    e.logits([long])
    torch.testing.assert_close(e.logits([long]), cold(preset, [long]), atol=1e-5, rtol=0)
    assert e.stats()["tokens_cached"] - before == 3 * BLOCK and e.stats()["bytes_used"] == 3 * block_bytes(preset)
    # a budget below one block stores nothing and still scores right
    none = engine(preset, budget=block_bytes(preset) - 1, prefix_block_tokens=BLOCK)
    torch.testing.assert_close(none.logits([a, a]), cold(preset, [a, a]), atol=1e-5, rtol=0)
    assert none.stats()["blocks"] == 0 and none.stats()["tokens_cached"] == 0


def test_memory_stays_within_budget_over_hundreds_of_long_requests(preset: tuple[Any, Any, bool]) -> None:
    """300 distinct requests of ~6 blocks into a 20-block budget: the bytes the stored tensors really hold (their
    storages, so a block kept as a view of a larger tensor would count whole) never exceed the budget."""
    rng = random.Random(6)
    budget = 20 * block_bytes(preset)
    e = engine(preset, budget=budget, prefix_block_tokens=BLOCK)
    assert e.cache is not None
    for i in range(300):
        seq = tokens(rng, rng.randrange(4 * BLOCK, 7 * BLOCK))
        if i % 50 == 0:
            torch.testing.assert_close(e.logits([seq]), cold(preset, [seq]), atol=1e-5, rtol=0)
        else:
            e.logits([seq])
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in e.cache._blocks.values()}
        assert sum(storages.values()) == e.stats()["bytes_used"] <= budget
    assert e.stats()["blocks_evicted"] > 0 and e.stats()["blocks_stored"] > 20 * 10


def test_batch_invariant_mode_is_bit_identical_cold_warm_and_batched(preset: tuple[Any, Any, bool]) -> None:
    rng = random.Random(7)
    prompt = tokens(rng, 3 * BLOCK + 5)
    seqs = [prompt + tokens(rng, n) for n in (1, 12, 40)] + [prompt[:BLOCK], prompt[: 2 * BLOCK + 1], tokens(rng, 50)]

    def invariant() -> TorchEngine:
        return engine(preset, prefix_block_tokens=BLOCK, batch_invariant=True)

    alone = torch.cat([invariant().logits([s]) for s in seqs])  # a fresh (cold) cache for every sequence
    batched = invariant()
    assert torch.equal(batched.logits(seqs), alone)
    assert torch.equal(batched.logits(seqs[::-1]), alone.flip(0))  # all warm now
    one_by_one = invariant()
    assert torch.equal(torch.cat([one_by_one.logits([s]) for s in seqs]), alone)
    assert batched.stats()["tokens_cached"] > 0 and one_by_one.stats()["tokens_cached"] > 0
    torch.testing.assert_close(alone, cold(preset, seqs), atol=1e-5, rtol=0)


def test_concurrent_requests_sharing_a_prefix(preset: tuple[Any, Any, bool]) -> None:
    rng = random.Random(8)
    prompt = tokens(rng, 100)
    seqs = [prompt + tokens(rng, rng.randrange(1, 30)) for _ in range(12)]
    e = engine(preset, budget=8 * block_bytes(preset), prefix_block_tokens=BLOCK)  # evicting meanwhile, too
    out: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(k, len(seqs), 4):
                out[i] = e.logits([seqs[i], seqs[(i + 5) % len(seqs)]])[0]
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    torch.testing.assert_close(torch.stack([out[i] for i in range(len(seqs))]), cold(preset, seqs), atol=1e-5, rtol=0)
    assert e.stats()["bytes_used"] <= 8 * block_bytes(preset) and e.stats()["tokens_cached"] > 0


def test_cache_off_counts_every_token_computed(preset: tuple[Any, Any, bool]) -> None:
    e = engine(preset, budget=0)
    assert e.cache is None
    e.logits([[1, 2, 3], [4] * 40])
    assert e.stats() == {
        "sequences": 2,
        "hit_sequences": 0,
        "tokens_sent": 43,
        "tokens_cached": 0,
        "tokens_computed": 43,
        "budget_bytes": 0,
    }


def test_block_names_chain_the_whole_prefix() -> None:
    a = list(range(50))
    b = list(range(50))
    b[3] = 99  # differs in the first block only
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == 3 and len(block_hashes(a[:48], 16)) == 2 and len(block_hashes(a[:49], 16)) == 3
    assert all(x != y for x, y in zip(ha, hb, strict=True))  # every later block differs too
    assert block_hashes(a[:40], 16) == ha[:2]
    with pytest.raises(ValueError):
        PrefixCache(-1)


# ---- reward_model: one row of each group first ---------------------------------------------------------------------
def test_first_wave_picks_one_row_per_prompt_group() -> None:
    rng = random.Random(9)
    system = tokens(rng, 40)
    prompts = [system + tokens(rng, 200) for _ in range(3)]
    rows = [p + tokens(rng, n) for p in prompts for n in (5, 30, 12)] + [tokens(rng, 100), [1, 2]]
    first = first_wave(rows)
    # the longest row of each prompt group (30 response tokens) and the two rows that share nothing
    assert [i for i, f in enumerate(first) if f] == [1, 4, 7, 9, 10]
    assert first_wave([[5] * 40] * 3) == [True, False, False]  # identical rows: one first
    assert first_wave([[5] * 10] * 3) == [True] * 3  # no full block: nothing to share


class FakePb:
    """The pb_utils surface execute_fanout uses; engine requests record when they start and finish."""

    class TritonError:
        INVALID_ARG, INTERNAL, UNAVAILABLE = 1, 2, 3

        def __init__(self, message: str, code: int = 2) -> None:
            self.msg, self.c = message, code

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        pb = self

        class Tensor:
            def __init__(self, name: str, array: np.ndarray) -> None:
                self.name, self.array = name, array

            def as_numpy(self) -> np.ndarray:
                return self.array

        class Response:
            def __init__(self, output_tensors: list[Any] | None = None, error: Any = None) -> None:
                self.output_tensors, self.err = output_tensors or [], error

            def has_error(self) -> bool:
                return self.err is not None

        class InferenceRequest:
            def __init__(self, model_name: str, inputs: list[Any], requested_output_names: list[str]) -> None:
                self.ids = next(t.array for t in inputs if t.name == "input_ids")

            async def async_exec(self) -> Any:
                n = int(self.ids.shape[-1])
                pb.log.append(("start", n))
                await asyncio.sleep(0.01)
                pb.log.append(("end", n))
                return Response([Tensor("generation_logits", np.full((1, 1, 1, 4), float(n), np.float32))])

        self.Tensor, self.InferenceResponse, self.InferenceRequest = Tensor, Response, InferenceRequest

    def get_input_tensor_by_name(self, request: dict[str, np.ndarray], name: str) -> Any:
        return self.Tensor(name, request[name]) if name in request else None

    def get_output_tensor_by_name(self, response: Any, name: str) -> Any:
        return next(t for t in response.output_tensors if t.name == name)


class FakeStage:
    input_names = ("rows",)

    def __init__(self, rows: list[list[int]]) -> None:
        self._rows = rows
        self.head = self

    def rows(self, inputs: Any) -> Rows:
        return Rows(self._rows, [False] * len(self._rows))

    def scores_of(self, logits: np.ndarray) -> np.ndarray:
        return logits.reshape(1, -1)[:, :1]

    finish = RewardModelStage.finish


def test_fanout_sends_the_rest_of_a_group_after_its_first_row_finished() -> None:
    rng = random.Random(10)
    prompt = tokens(rng, 100)
    lengths = [3, 9, 7, 5]  # distinct total lengths name the rows in the log
    rows = [prompt + tokens(rng, n) for n in lengths] + [tokens(rng, 20)]
    pb, stage = FakePb(), FakeStage(rows)
    (response,) = asyncio.run(execute_fanout(pb, stage, [{"rows": np.zeros(1)}]))
    rewards = next(t for t in response.output_tensors if t.name == "rewards").as_numpy()
    assert rewards[:, 0].tolist() == [float(len(r)) for r in rows]  # every row's answer in its place
    starts = [n for event, n in pb.log if event == "start"]
    assert sorted(starts[:2]) == sorted([len(rows[1]), len(rows[4])])  # the group's longest row and the loner
    leader_end = pb.log.index(("end", len(rows[1])))
    for n in lengths[:1] + lengths[2:]:
        assert pb.log.index(("start", len(prompt) + n)) > leader_end


def test_benchmark_runs_the_same_work_off_and_on(tmp_path: Path) -> None:
    """bench_prefix on a tiny checkpoint (figures come from the real run, not here): same tokens sent both ways,
    fewer computed with the cache, the same logits."""
    from triton_server import fixture_checkpoint

    from tooling.bench_prefix import bench

    result = bench(fixture_checkpoint(tmp_path, "llama"), "float32", repeats=1, max_batch=64, budget=1 << 28, block=32)
    tokens = result["tokens"]
    assert isinstance(tokens, dict)
    for name, by_mode in tokens.items():
        assert by_mode["on"]["tokens_sent"] == by_mode["off"]["tokens_sent"] == by_mode["off"]["tokens_computed"]
        if name in ("turn_prefixes", "best_of_8", "grpo_16x8"):
            assert by_mode["on"]["tokens_computed"] < by_mode["on"]["tokens_sent"] / 2, name
    diffs = result["max_abs_logit_diff_on_vs_off"]
    assert isinstance(diffs, dict) and len(diffs) == 5 and max(diffs.values()) <= 1e-5
