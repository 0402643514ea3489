"""The embedded demo reward model gives meaningful scores on held-out synthetic conversations, served.

demo/checkpoint is converted exactly as `make engine` does it (bf16), the Triton repository is rendered, a real
tritonserver serves it, and every check scores NeMo conversations through the `ensemble` model with the client
library (`RewardClient`): preprocessing (conversation parsing, the metadata's template, the sentencepiece tokenizer)
→ the PyTorch engine → postprocessing (named attributes and the scalar reward).

The held-out sets come from demo/data.py with question and answer templates, operand pairs, system prompts and
seeds that training never uses (asserted in test_demo_train.py); wrong answers are mostly near misses. The checks
catch a wrong token position (scores not read at the last token), a wrong template, and a wrong attribute order:
each probe moves one attribute and must move that one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from triton_server import RunningServer, serve

from build_engine.convert import convert
from build_engine.repository import render_repository
from client.api import RewardClient, Score
from demo import data
from demo.train import spearman, wilson_interval
from reward_triton.metadata import HELPSTEER2_ATTRIBUTES, NEMOTRON_ATTRIBUTES, RewardMetadata
from reward_triton.serving.conversation import from_nemo
from reward_triton.serving.prompt import render

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "demo" / "checkpoint"
Scorer = Callable[[list[dict[str, Any]]], list[dict[str, float]]]

# Pair counts. A win rate over 100 pairs has a 95% interval of about ±6 points (differences: 0.88 on the first 100
# of these pairs, 0.92 on all 1000), too wide to tell whether an operation clears 0.9; over 1000, about ±1.7.
N_CORRECTNESS = 4000  # 1000 per task
N_COHERENCE = 1000
N_COMPLEXITY = 1000
N_SERIES = 40
NEWCOMER_THRESHOLD = 0.9


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    assert (DEMO_CHECKPOINT / "model_config.yaml").is_file(), (
        f"{DEMO_CHECKPOINT} is missing: regenerate it with `python -m demo.train`"
    )
    root = tmp_path_factory.mktemp("demo")
    ckpt = convert(DEMO_CHECKPOINT, root / "checkpoint", dtype="bfloat16", progress=False)  # as `make engine`
    repo = render_repository(ckpt, output=root / "model_repository")
    with serve(repo, root / "tritonserver.log", ckpt) as server:
        yield server


@pytest.fixture(scope="module")
def score_conversations(demo_server: RunningServer) -> Scorer:
    async def score_all(convs: list[dict[str, Any]]) -> list[Score | Exception]:
        async with RewardClient(demo_server.grpc_url, concurrency=8) as client:
            return await client.score_many(convs)

    def score(convs: list[dict[str, Any]]) -> list[dict[str, float]]:
        out = []
        for s in asyncio.run(score_all(convs)):
            assert isinstance(s, Score)
            out.append({**s.scores, "reward": s.reward})
        return out

    return score


@pytest.fixture(scope="module")
def sets() -> dict[str, Any]:
    return {
        "correctness": data.correctness_pairs(N_CORRECTNESS),
        "coherence": data.coherence_pairs(N_COHERENCE),
        "verbosity": data.verbosity_series(N_SERIES),
        "complexity": data.complexity_pairs(N_COMPLEXITY),
    }


def _pair_scores(score: Scorer, pairs: list[tuple[data.Example, data.Example]]) -> list[tuple[dict, dict]]:
    s = score([e.conversation for p in pairs for e in p])
    return [(s[2 * i], s[2 * i + 1]) for i in range(len(pairs))]


def _wins(scored: list[tuple[dict, dict]], attr: str) -> float:
    wins = sum(a[attr] > b[attr] for a, b in scored)
    low, high = wilson_interval(wins, len(scored))
    rate = wins / len(scored)
    # shown with -s
    print(f"{attr}: first beats second in {rate:.3f} of {len(scored)} held-out pairs (95% {low:.3f}..{high:.3f})")
    return rate


def _mean_gap(scored: list[tuple[dict, dict]], attr: str) -> float:
    return sum(a[attr] - b[attr] for a, b in scored) / len(scored)


def test_training_template_is_the_served_template(demo_server: RunningServer, sets: dict[str, Any]) -> None:
    meta = RewardMetadata.load(demo_server.checkpoint)
    assert meta.attribute_names == NEMOTRON_ATTRIBUTES
    assert meta.trained_attributes == HELPSTEER2_ATTRIBUTES
    for ex in [e for p in sets["correctness"][:20] for e in p] + data.training_set(40):
        assert data.render(ex.conversation) == render(
            from_nemo(ex.conversation), meta.template, meta.default_system_prompt
        )


def test_right_answers_beat_wrong_ones(score_conversations: Scorer, sets: dict[str, Any]) -> None:
    pairs = sets["correctness"]
    scored = _pair_scores(score_conversations, pairs)
    rates = {}
    for task in data.TASKS:  # every task on its own: 1000 pairs each
        print(f"{task}:", end=" ")
        rates[task] = _wins(
            [s for s, (right, _) in zip(scored, pairs, strict=True) if right.meta["task"] == task], "correctness"
        )
    print("near misses (off by 1..3 or 10, swapped digits):", end=" ")
    near = [s for s, (_, wrong) in zip(scored, pairs, strict=True) if wrong.meta["miss"] in ("near", "ten", "swap")]
    rates["near misses"] = _wins(near, "correctness")
    rates["reward"] = _wins(scored, "reward")
    # The demo model must reach 0.9 on every operation. This model measures add 0.941, sub 0.922, mul 0.969,
    # capital 0.943, near misses 0.937, reward 0.932 (demo/README.md); the floors sit about 2 points under; sub sits
    # at the bar itself, 22 pairs of margin.
    floors = {"add": 0.92, "sub": 0.9, "mul": 0.95, "capital": 0.92, "near misses": 0.92, "reward": 0.91}
    assert all(rates[k] >= floors[k] for k in floors), rates
    # attribute order: only the value changed, so correctness moves and coherence does not
    assert _mean_gap(scored, "correctness") > 2.0
    assert abs(_mean_gap(scored, "coherence")) < 1.0


# A newcomer's own questions: phrasings written here, not by demo/data.py (some coincide with training templates,
# most do not), any operand pairs, the served default system prompt, near-miss wrong values.
NEWCOMER_QUESTIONS = {
    "add": [
        "Compute {a}+{b}.",
        "what's {a} plus {b}",
        "Can you add {a} and {b}?",
        "{a} + {b} = ?",
        "Quick math: {a}+{b}",
        "What is {a} + {b}? Just the number.",
        "hey what is {a}+{b}",
        "I need the sum of {a} and {b}.",
    ],
    "sub": [
        "Please tell me {a} - {b}.",
        "How much is {a} minus {b}?",
        "Calculate {a} - {b} for me please.",
        "{a}-{b}?",
        "what is {a} take away {b}",
        "Subtract {b} from {a}, please.",
        "Quick math: {a}-{b}",
        "hey what is {a} minus {b}",
    ],
    "mul": [
        "What is {a} times {b}?",
        "{a}*{b}?",
        "Multiply {a} by {b}.",
        "hey what is {a} x {b}",
        "Quick math: {a}*{b}",
        "Can you multiply {a} and {b}?",
        "What's {a} multiplied by {b}?",
        "Compute {a} * {b}.",
    ],
}
NEWCOMER_ANSWERS = [
    "{r}",
    "The answer is {r}.",
    "It's {r}.",
    "That equals {r}.",
    "{a} {op} {b} = {r}",
    "Sure! It is {r}.",
]


def newcomer_pairs(n: int, seed: int = 7) -> list[tuple[str, list[dict[str, Any]]]]:
    """(operation, [right, wrong]) OpenAI-style conversations; wrong values are off by 1..3 or 10, or reversed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = ("add", "sub", "mul")[i % 3]
        if task == "mul":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
        else:
            a = rng.randint(0, 99)
            b = rng.randint(0, 99) if task == "add" else rng.randint(0, a)
        r = a + b if task == "add" else a - b if task == "sub" else a * b
        kind = rng.choice(["near", "near", "ten", "swap"])
        while True:
            offsets = {"near": [-3, -2, -1, 1, 2, 3], "ten": [-10, 10], "swap": [0]}[kind]
            w = int(str(r)[::-1]) if kind == "swap" else r + rng.choice(offsets)
            if w != r and w >= 0:
                break
            kind = "near"
        question = rng.choice(NEWCOMER_QUESTIONS[task]).format(a=a, b=b)
        answer = rng.choice(NEWCOMER_ANSWERS)
        op = {"add": "+", "sub": "-", "mul": "*"}[task]
        convs = [
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer.format(a=a, b=b, op=op, r=v)},
                ]
            }
            for v in (r, w)
        ]
        out.append((task, convs))
    return out


def test_newcomer_questions(score_conversations: Scorer) -> None:
    pairs = newcomer_pairs(300)
    s = score_conversations([c for _, convs in pairs for c in convs])
    rates = {}
    for task in ("add", "sub", "mul"):
        wins = [s[2 * i]["correctness"] > s[2 * i + 1]["correctness"] for i, (t, _) in enumerate(pairs) if t == task]
        rates[task] = sum(wins) / len(wins)
    print(f"newcomer questions, right beats wrong (correctness, 100 pairs each): {rates}")
    assert min(rates.values()) >= NEWCOMER_THRESHOLD, rates


def test_fluent_answers_beat_shuffled_ones(score_conversations: Scorer, sets: dict[str, Any]) -> None:
    scored = _pair_scores(score_conversations, sets["coherence"])
    assert _wins(scored, "coherence") >= 0.95
    assert _mean_gap(scored, "coherence") > 2.0
    assert abs(_mean_gap(scored, "verbosity")) < 0.5  # same words, same length


def test_verbosity_tracks_answer_length(score_conversations: Scorer, sets: dict[str, Any]) -> None:
    series = sets["verbosity"]
    flat = [e for row in series for e in row]
    s = score_conversations([e.conversation for e in flat])
    words = [float(e.meta["words"]) for e in flat]
    pooled = spearman(words, [x["verbosity"] for x in s])
    print(f"verbosity: Spearman with word count {pooled:.3f} pooled over {len(flat)} answers")
    assert pooled >= 0.8
    per_series, i = [], 0
    for row in series:
        per_series.append(spearman(words[i : i + len(row)], [x["verbosity"] for x in s[i : i + len(row)]]))
        i += len(row)
    print(f"verbosity: mean Spearman {sum(per_series) / len(per_series):.3f} within {len(series)} series")
    assert sum(per_series) / len(per_series) >= 0.8
    # attribute order: the padding changes length, not correctness or complexity
    for attr in ("correctness", "complexity"):
        assert abs(spearman(words, [x[attr] for x in s])) < 0.5, attr


def test_step_by_step_answers_are_more_complex(score_conversations: Scorer, sets: dict[str, Any]) -> None:
    scored = _pair_scores(score_conversations, sets["complexity"])
    assert _wins(scored, "complexity") >= 0.9  # measured 0.920
    # attribute order: the style changed, so complexity moves up (targets 3 vs 1, this model: 0.89 on average);
    # correctness should not move, but this model scores right step-by-step answers about 0.55 lower than
    # one-sentence ones (demo/README.md)
    print(
        f"complexity gap {_mean_gap(scored, 'complexity'):.3f}, correctness gap {_mean_gap(scored, 'correctness'):.3f}"
    )
    assert _mean_gap(scored, "complexity") > 0.75
    assert _mean_gap(scored, "correctness") > -1.0
