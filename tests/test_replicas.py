"""The replica pool (client/replicas.py) over fake replicas: affinity, least-loaded spreading, failover."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from client_fakes import NAMES, TRAINED, FakeScorer, nemo_record

from client import conversations as cv
from client.annotate import AnnotateOptions, annotate_file
from client.api import ModelMetadata, RequestRejected, RetryPolicy, RewardClient, Score, ServerFailure
from client.replicas import REPLICA_RETRY_S, ReplicaPool, affinity_key, connect, split_urls

UNAVAILABLE = "StatusCode.UNAVAILABLE"


class FakeReplica:
    """Scores like FakeScorer while `up`; when down, fails as a RewardClient does once its retries are spent."""

    def __init__(self, url: str, delay: float = 0.002, down_after: int | None = None) -> None:
        self.url = url
        self.up = True
        self.delay = delay
        self.down_after = down_after  # goes down when this many requests have started
        self.scorer = FakeScorer(delay=delay)
        self.started = 0
        self.answered: list[str] = []  # affinity keys of the requests it answered
        self.in_flight = 0
        self.most_in_flight = 0

    async def score(
        self, conversation: Mapping[str, Any] | str | None = None, *, text: str | None = None, truncate: bool = False
    ) -> Score:
        self.started += 1
        if self.down_after is not None and self.started > self.down_after:
            self.up = False
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if not self.up:
                raise ServerFailure(f"infer(ensemble) at {self.url} failed: {UNAVAILABLE}: refused", UNAVAILABLE)
            assert isinstance(conversation, Mapping)
            result = await self.scorer(conversation)
            self.answered.append(affinity_key(conversation))
            return result
        finally:
            self.in_flight -= 1

    async def metadata(self) -> ModelMetadata:
        if not self.up:
            raise ServerFailure(f"get_model_config at {self.url} failed: {UNAVAILABLE}", UNAVAILABLE)
        return ModelMetadata(attribute_names=NAMES, trained_attributes=TRAINED, scalar_weights=())

    async def ready(self) -> bool:
        return self.up

    async def close(self) -> None:
        pass

    def retry_status(self) -> str | None:
        return None


def pool_of(*replicas: FakeReplica, max_wait: float = 5.0, notes: list[str] | None = None) -> ReplicaPool:
    notify = notes.append if notes is not None else None
    return ReplicaPool(replicas, retry=RetryPolicy(max_wait=max_wait), notify=notify, probe_interval=0.02)


def prefixes(i: int, turns: int = 3) -> list[dict[str, Any]]:
    record = nemo_record(i, turns=turns)
    for t in record["conversations"][1::2]:
        t["label"] = ""
    return [c for _, c in cv.scoring_requests(record)]


async def conversation_in_turn(pool: ReplicaPool, i: int) -> list[Score]:
    return [await pool.score(c) for c in prefixes(i)]


def test_split_urls() -> None:
    assert split_urls("a:1, b:2,,") == ["a:1", "b:2"]
    assert split_urls(["a:1,b:2", "c:3"]) == ["a:1", "b:2", "c:3"]
    with pytest.raises(ValueError, match="twice"):
        split_urls("a:1,a:1")
    with pytest.raises(ValueError, match="no server"):
        split_urls(" , ")


def test_affinity_key_is_the_prompt() -> None:
    turns = prefixes(7)
    assert len({affinity_key(c) for c in turns}) == 1
    assert affinity_key(turns[0]) != affinity_key(prefixes(8)[0])
    a = cv.openai_prompt_and_response("p", "x", "S")
    b = cv.openai_prompt_and_response("p", "y", "S")
    assert affinity_key(a) == affinity_key(b) == affinity_key(json.dumps(b))
    assert affinity_key(a) != affinity_key(cv.openai_prompt_and_response("q", "x", "S"))
    assert affinity_key(text="<s>User: p\nAssistant: x") == affinity_key(text="<s>User: p\nAssistant: y")


def test_connect_picks_client_or_pool() -> None:
    assert isinstance(connect("a:1"), RewardClient)
    pool = connect("a:1,b:2", retry=RetryPolicy(max_wait=600))
    assert isinstance(pool, ReplicaPool) and pool.url == "a:1,b:2" and pool.retry.max_wait == 600
    assert [r.retry.max_wait for r in pool.replicas] == [REPLICA_RETRY_S] * 2  # type: ignore[attr-defined]


def test_cli_builds_a_pool_for_several_urls() -> None:
    from client.cli import _client, build_parser

    args: argparse.Namespace = build_parser().parse_args(["--url", "a:1,b:2", "info"])
    assert isinstance(_client(args), ReplicaPool)
    args = build_parser().parse_args(["--url", "a:1", "info"])
    client = _client(args)
    assert isinstance(client, RewardClient) and client.url == "a:1"


def test_a_conversations_turns_stay_on_one_replica_and_load_spreads() -> None:
    a, b = FakeReplica("a"), FakeReplica("b")

    async def run() -> None:
        async with pool_of(a, b) as pool:
            await asyncio.gather(*(conversation_in_turn(pool, i) for i in range(40)))

    asyncio.run(run())
    for i in range(40):
        key = affinity_key(prefixes(i)[0])
        assert (a.answered.count(key), b.answered.count(key)) in ((3, 0), (0, 3)), f"conversation {i} was split"
    assert len(a.answered) + len(b.answered) == 120
    assert 15 <= len(a.answered) // 3 <= 25  # about half the conversations each


def test_new_keys_go_to_the_least_loaded_replica() -> None:
    slow, fast = FakeReplica("slow", delay=0.5), FakeReplica("fast", delay=0.01)

    async def run() -> ReplicaPool:
        pool = pool_of(slow, fast)
        first = [asyncio.ensure_future(pool.score(prefixes(i)[0])) for i in range(4)]
        await asyncio.sleep(0)  # four picks with equal loads alternate: slow, fast, slow, fast
        assert pool.in_flight == [2, 2]
        await asyncio.sleep(0.1)  # fast has answered; slow still holds two
        assert pool.in_flight == [2, 0]
        later = [await pool.score(prefixes(i)[0]) for i in range(10, 14)]
        assert len(later) == 4
        await asyncio.gather(*first)
        return pool

    pool = asyncio.run(run())
    later_keys = {affinity_key(prefixes(i)[0]) for i in range(10, 14)}
    assert later_keys <= set(fast.answered) and not later_keys & set(slow.answered)
    assert pool.served == [2, 6]


def test_a_replica_that_goes_away_is_skipped_and_nothing_is_lost() -> None:
    a, b = FakeReplica("a"), FakeReplica("b", down_after=20)
    notes: list[str] = []

    async def run() -> list[list[Score]]:
        async with pool_of(a, b, notes=notes) as pool:
            results = await asyncio.gather(*(conversation_in_turn(pool, i) for i in range(30)))
            assert pool.down == {1}
            assert pool.retry_status() == "1 of 2 servers unavailable (b), using the others"
            return results

    results = asyncio.run(run())
    oracle = FakeScorer()
    for i, scores in enumerate(results):
        want = [asyncio.run(oracle(c)).scores for c in prefixes(i)]
        assert [s.scores for s in scores] == want  # every request answered, each with its own scores
    # answered once each; b's requests in flight when it went down were answered by a
    assert len(a.answered) + len(b.answered) == 90 and 0 < len(b.answered) < 20
    assert notes == ["b is unavailable (UNAVAILABLE); using the other servers"]


def test_a_replica_comes_back_after_its_probe() -> None:
    a, b = FakeReplica("a"), FakeReplica("b")
    notes: list[str] = []

    async def run() -> None:
        async with pool_of(a, b, notes=notes) as pool:
            b.up = False
            await asyncio.gather(*(pool.score(prefixes(i)[0]) for i in range(4)))
            assert pool.down == {1} and len(a.answered) == 4
            b.up = True
            await asyncio.sleep(0.1)
            assert pool.down == set()
            await asyncio.gather(*(pool.score(prefixes(i)[0]) for i in range(10, 14)))
            assert len(b.answered) == 2  # new keys spread over both again

    asyncio.run(run())
    assert notes[-1] == "b is back"


def test_all_replicas_down_waits_then_fails_or_continues() -> None:
    a, b = FakeReplica("a"), FakeReplica("b")
    a.up = b.up = False

    async def gives_up() -> None:
        async with pool_of(a, b, max_wait=0.2) as pool:
            with pytest.raises(ServerFailure, match="UNAVAILABLE"):
                await pool.score(prefixes(1)[0])
            with pytest.raises(ServerFailure, match="UNAVAILABLE"):  # one that found every replica already down
                await pool.score(prefixes(2)[0])
            assert pool.retry_status() is not None and pool.retry_status().startswith("all 2 servers unavailable")

    asyncio.run(gives_up())

    async def rides_it_out() -> Score:
        async with pool_of(a, b, max_wait=5.0) as pool:
            task = asyncio.ensure_future(pool.score(prefixes(1)[0]))
            await asyncio.sleep(0.1)
            a.up = True
            return await task

    assert asyncio.run(rides_it_out()).scores == asyncio.run(FakeScorer()(prefixes(1)[0])).scores


def test_rejections_are_not_failed_over() -> None:
    a, b = FakeReplica("a"), FakeReplica("b")
    long = cv.openai_prompt_and_response("p", "TOO-LONG", None)

    async def run() -> ReplicaPool:
        async with pool_of(a, b) as pool:
            with pytest.raises(RequestRejected):
                await pool.score(long)
            return pool

    pool = asyncio.run(run())
    assert pool.down == set() and a.started + b.started == 1


def test_annotate_over_two_replicas_one_killed_equals_one_scorer(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(nemo_record(i, turns=3)) + "\n" for i in range(1, 61)))
    options = AnnotateOptions(attributes=TRAINED, window=16, batch_lines=8, batch_seconds=0.0)
    single = asyncio.run(annotate_file(src, tmp_path / "single.jsonl", FakeScorer(), options, progress=False))
    a, b = FakeReplica("a"), FakeReplica("b", down_after=30)

    async def run() -> Any:
        async with pool_of(a, b) as pool:
            return await annotate_file(src, tmp_path / "pool.jsonl", lambda c: pool.score(c), options, progress=False)

    pooled = asyncio.run(run())
    assert (tmp_path / "pool.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    assert pooled.turns == single.turns and 0 < len(b.answered) < 30
    assert len(a.answered) + len(b.answered) == single.turns["scored"] + single.turns["failed"]


def test_score_many_over_the_pool_keeps_input_order() -> None:
    a, b = FakeReplica("a"), FakeReplica("b")
    conversations = [cv.openai_prompt_and_response(f"p{i}", "x", None) for i in range(12)]

    async def run() -> list[Any]:
        async with pool_of(a, b) as pool:
            return await pool.score_many(conversations)

    results = asyncio.run(run())
    oracle = FakeScorer()
    assert [r.scores for r in results] == [asyncio.run(oracle(c)).scores for c in conversations]
    assert a.answered and b.answered
