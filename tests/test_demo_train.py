"""The demo model's training script and data generator (no trained checkpoint needed).

- A miniature `python -m demo.train` run writes a real NeMo distributed checkpoint that the converter reads, and
  two runs of the same command write byte-identical checkpoints (the script is deterministic).
- The held-out evaluation sets never occur in the training data, and their labels follow the stated rules.
"""

from __future__ import annotations

import argparse
import math
import random
import re
from pathlib import Path

import pytest
import torch

from build_engine.convert import convert
from build_engine.nemo import open_checkpoint
from demo import data
from demo.model import TinyConfig, TinyNemotronReward
from demo.train import DEFAULTS, TOKENIZER_NAME, Trainer, length_groups, main, spearman, tree_digest
from reward_triton.engine.model import TorchEngine
from reward_triton.metadata import NEMOTRON_ATTRIBUTES, RewardMetadata
from reward_triton.serving import head
from reward_triton.serving.conversation import from_nemo
from reward_triton.serving.preprocess import Preprocessor

MINI = [
    "--examples", "600", "--tokenizer-examples", "600", "--vocab", "600", "--arith-steps", "3", "--arith-batch", "8",
    "--steps", "4", "--batch", "8", "--hidden", "32", "--layers", "2", "--heads", "4", "--groups", "2", "--ffn", "64",
    "--max-seq-len", "512", "--heldout-pairs", "10", "--rehearsal-batch", "8",
]  # fmt: skip


@pytest.fixture(scope="module")
def mini_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("demo-train")
    for name in ("a", "b"):
        assert main([*MINI, "--out", str(root / name), "--state", str(root / f"{name}.pt")]) == 0
    return root / "a", root / "b", root / "a.pt"


def test_training_is_deterministic(mini_runs: tuple[Path, Path, Path]) -> None:
    a, b, _ = mini_runs
    assert tree_digest(a) == tree_digest(b)


def test_length_groups_bound_padding() -> None:
    lengths = [5, 90, 6, 30, 7, 88, 31, 5, 120, 29] * 4
    groups = length_groups(lengths, ratio=1.5, min_rows=4)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert max(lengths[i] for i in g) <= 1.5 * min(lengths[i] for i in g)
    assert [len(g) for g in groups] == [16, 12, 12]
    assert length_groups(lengths, ratio=math.inf) == [list(range(len(lengths)))]


def test_grouped_step_equals_one_padded_batch() -> None:
    """The training losses and gradients over length groups are those of the same rows right-padded into one
    batch (a mix of long scored conversations with attribute targets and short items without)."""
    rng = random.Random(0)
    model = TinyNemotronReward(
        TinyConfig(
            vocab_size=128, hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=64
        ),
        torch.Generator().manual_seed(0),
    )
    trainer = Trainer(model, argparse.Namespace(**DEFAULTS), torch.rand(128) + 0.5)
    lengths = [rng.randint(60, 100) for _ in range(6)] + [rng.randint(4, 30) for _ in range(40)]
    seqs = [[rng.randrange(1, 128) for _ in range(n)] for n in lengths]
    lm = [[rng.random() < 0.3 for _ in range(n)] for n in lengths]
    corr = [[rng.choice([math.nan, 0.0, 4.0]) for _ in range(n)] for n in lengths]
    targets = torch.cat([torch.randn(6, 5), torch.full((40, 5), math.nan)])
    results = []
    for ratio in (math.inf, 1.5):
        model.zero_grad()
        losses = trainer.losses(seqs, lm, corr, targets, ratio=ratio)
        sum(losses.values()).backward()
        results.append((losses, [p.grad.clone() for p in model.parameters()]))
    (one, g_one), (grouped, g_grouped) = results
    assert len(length_groups(lengths, 1.5)) > 1 and set(one) == {"lm", "aux", "mse"}
    for k in one:
        torch.testing.assert_close(grouped[k], one[k])
    for a, b in zip(g_grouped, g_one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_checkpoint_is_a_real_nemo_checkpoint(mini_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    a, _, state_file = mini_runs
    assert (a / "model_config.yaml").is_file() and (a / TOKENIZER_NAME).is_file()
    assert (a / "model_weights" / ".zarray").exists() or any((a / "model_weights").iterdir())
    with open_checkpoint(a) as ckpt:
        assert ckpt.config["activation"] == "squared-relu"
        assert ckpt.config["normalization"] == "layernorm1p"
        assert ckpt.config["regression"]["num_attributes"] == len(NEMOTRON_ATTRIBUTES)
    # the served engine on the converted checkpoint scores like the training model on bf16-rounded weights (up to
    # the converter folding layernorm1p's +1 into bf16 norm weights, as TensorRT-LLM needs)
    state = torch.load(state_file, weights_only=False)
    model = TinyNemotronReward(TinyConfig(**state["log"]["config"]))
    model.load_nemo_tensors({k: v.to(torch.bfloat16).float() for k, v in state["tensors"].items()})
    ckpt_dir = convert(a, tmp_path / "ckpt", dtype="bfloat16", progress=False)
    meta = RewardMetadata.load(ckpt_dir)
    pre = Preprocessor.from_dir(ckpt_dir)
    engine = TorchEngine.from_checkpoint(ckpt_dir)
    convs = [e.conversation for p in data.correctness_pairs(4) for e in p]
    ids = [pre.conversation(from_nemo(c)).input_ids for c in convs]
    served = torch.from_numpy(head.scores(engine.logits(ids).numpy(), meta))
    expected = model.score(ids)
    assert torch.allclose(served.float(), expected, atol=3e-3), (served - expected).abs().max()
    assert expected[:, 4:].abs().max() > 0.1  # the trained rows carry their bias: not all zero


def test_heldout_sets_never_appear_in_training() -> None:
    training = data.training_set(DEFAULTS["examples"])
    seen = {data.render(e.conversation) for e in training}
    pairs = data.correctness_pairs(300) + data.coherence_pairs(300) + data.complexity_pairs(150)
    pairs += data.coherence_pairs(300, keep_ends=True)
    held = [e for p in pairs for e in p]
    held += [e for row in data.verbosity_series(40) for e in row]
    assert held and not [e for e in held if data.render(e.conversation) in seen]


def _template_regex(templates: list[str]) -> re.Pattern[str]:
    """Any of the templates from a sentence start, with {a} {b} as numbers, {c} as words and {r} as a number or a
    capitalised name (a word shuffle of training sentences does not read as a held-out template by chance)."""
    name_re = r"[A-Z][a-z]+(?: (?:[a-z]+ )?[A-Z][a-z]+)*"  # "Mexico City", "Rio de Janeiro"
    alts = []
    for t in templates:
        x = re.escape(t)
        for name, pat in (("a", r"\d+"), ("b", r"\d+"), ("c", r"[A-Za-z ]+"), ("r", rf"(?:\d+|{name_re})")):
            x = x.replace(re.escape("{" + name + "}"), pat)
        alts.append(x)
    return re.compile(r"(?:^|(?<=[.!?] ))(?:" + "|".join(f"(?:{a})" for a in alts) + ")")


def _shape(text: str) -> str:
    """A question with its numbers and country names blanked: equal to the shape of the template it came from."""
    for country in sorted(data.CAPITALS, key=len, reverse=True):
        text = text.replace(country, "@")
    return re.sub(r"\d+", "#", text)


HELD_SHAPES = {
    _shape(q.format(a=1, b=2, c="France")) for t in data.TASKS for q in data.QUESTIONS[(t, True)]
}  # fmt: skip


def test_heldout_templates_and_operands_never_occur_in_training() -> None:
    """Read from the rendered training text: no question or answer in a held-out template, no held-out operand
    pair (held-out products only as the mirror image of a trained one)."""
    training = data.training_set(DEFAULTS["examples"])
    held_a = _template_regex([a for t in data.TASKS for s in data.STYLES for a in data.ANSWERS[t][s][1]])
    suffixes = tuple(r for rs in data.REQUESTS.values() for r in rs if r)
    ops = {"add": ("+", "plus", "add", "sum"), "sub": ("-", "minus", "subtract", "take away", "difference")}
    counts = {"add": 0, "sub": 0}
    for ex in training:
        for turn in ex.conversation["conversations"]:
            text = turn["value"]
            if turn["from"] == "User":
                q = next((text[: -len(s)] for s in suffixes if text.endswith(s)), text)
                assert _shape(q) not in HELD_SHAPES, q
                nums = [int(n) for n in re.findall(r"\d+", q)]
                task = next((t for t, words in ops.items() if any(w in q.lower() for w in words)), None)
                if task and len(nums) == 2:
                    a, b = (max(nums), min(nums)) if task == "sub" else nums
                    assert not data.is_heldout_pair(task, a, b), q
                    counts[task] += 1
            else:
                assert not held_a.search(text), text
    assert min(counts.values()) > 1000
    # the arithmetic phase's short items: bare equations and single exchanges, training operands only
    ops_re = re.compile(r"^(\d+) ?(\+|-|\*|x|plus|minus|times|multiplied by) ?(\d+)")
    task_of = {"+": "add", "plus": "add", "-": "sub", "minus": "sub"}
    for prompt, answer, (start, end), right in data.arith_items(4000, full=0.5):
        if "<extra_id_1>User\n" in prompt:
            q = prompt.split("<extra_id_1>User\n")[1].split("\n")[0]
            assert _shape(q) not in HELD_SHAPES, q
            assert not held_a.search(answer), answer
            continue
        m = ops_re.match(prompt)
        assert m, prompt
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        task = task_of.get(op, "mul")
        assert not data.is_heldout_pair(task, a, b), prompt
        value = a + b if task == "add" else a - b if task == "sub" else a * b
        assert (answer[start:end] == str(value)) == right, (prompt, answer)
    assert all(not data.is_heldout_pair("mul", b, a) for a, b in data.PAIRS[("mul", True)])


def test_heldout_labels_follow_the_rules() -> None:
    for right, wrong in data.correctness_pairs(50):
        assert right.targets["correctness"] == 4.0 and wrong.targets["correctness"] == 0.0
        assert (
            right.answer != wrong.answer
            and right.conversation["conversations"][:-1] == wrong.conversation["conversations"][:-1]
        )
    for fluent, shuffled in data.coherence_pairs(50):
        assert sorted(fluent.answer.split()) == sorted(shuffled.answer.split()) and fluent.answer != shuffled.answer
        assert fluent.targets["coherence"] == 4.0 and shuffled.targets["coherence"] == 0.0
    for fluent, shuffled in data.coherence_pairs(50, keep_ends=True):
        assert sorted(fluent.answer.split()) == sorted(shuffled.answer.split()) and fluent.answer != shuffled.answer
        assert fluent.answer.split()[-1] == shuffled.answer.split()[-1] and shuffled.targets["coherence"] == 0.0
    for row in data.verbosity_series(5):
        words = [e.meta["words"] for e in row]
        targets = [e.targets["verbosity"] for e in row]
        assert words == sorted(words) and targets == sorted(targets) and spearman(words, targets) > 0.9
