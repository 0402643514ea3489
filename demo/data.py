"""Deterministic synthetic conversations whose HelpSteer2 attributes are checkable.

Tasks (all facts are small enough for a ~3M-parameter model to memorise in minutes):
- single-digit addition (a, b in 0..9) and multiplication (a, b in 1..9);
- a lookup table of country capitals.

Every conversation ends with an assistant turn whose five trained attributes follow from how it was built:
- correctness: 4 if the stated value is right, 0 if wrong (1 when the words are shuffled, 0 for a refusal);
- coherence: 4 for fluent text, 0 for a word-shuffled answer;
- complexity: 0 for a bare value, 1 for a one-sentence answer, 3 for a multi-step answer;
- verbosity: a monotone function of the answer's word count (`verbosity_target`);
- helpfulness: 0 when wrong, shuffled or a refusal; else 4, or 2 when the length ignores what was asked
  ("Answer briefly." answered at length, "Explain your answer." answered with a bare value).
Earlier turns (multi-turn examples) are random in every respect: the labels are those of the LAST assistant turn.

Held-out split: the evaluation sets use (question phrasing, answer phrasing) combinations that training never
uses (`is_heldout_combo`), system prompts that training never uses, and their own seeds, so no evaluation
conversation appears in training while every fact in it was learned.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from reward_triton.metadata import DEFAULT_SYSTEM_PROMPT, HELPSTEER2_ATTRIBUTES, PromptTemplate

Conversation = dict[str, Any]

TRAIN_SEED = 1234
HELDOUT_SEED = 987654

# ---- facts ------------------------------------------------------------------------------------------------
CAPITALS: dict[str, str] = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Canada": "Ottawa",
    "Russia": "Moscow",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Cuba": "Havana",
    "Chile": "Santiago",
    "Thailand": "Bangkok",
}
ADD_PAIRS = [(a, b) for a in range(10) for b in range(10)]
MUL_PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)]

# ---- phrasings ------------------------------------------------------------------------------------------------
QUESTIONS: dict[str, list[str]] = {
    "add": [
        "What is {a} plus {b}?",
        "What is {a} + {b}?",
        "Compute {a} + {b}.",
        "How much is {a} plus {b}?",
        "Add {a} and {b}.",
        "What do you get when you add {a} and {b}?",
        "Please tell me the sum of {a} and {b}.",
        "{a} + {b} = ?",
    ],
    "mul": [
        "What is {a} times {b}?",
        "What is {a} * {b}?",
        "Compute {a} * {b}.",
        "How much is {a} times {b}?",
        "Multiply {a} by {b}.",
        "What do you get when you multiply {a} by {b}?",
        "Please tell me the product of {a} and {b}.",
        "{a} * {b} = ?",
    ],
    "capital": [
        "What is the capital of {c}?",
        "Which city is the capital of {c}?",
        "Name the capital of {c}.",
        "Tell me the capital city of {c}.",
        "What city is the capital of {c}?",
        "Do you know the capital of {c}?",
        "Capital of {c}?",
        "Please tell me the capital of {c}.",
    ],
}
# style -> templates; "direct" is a bare value, "sentence" one sentence, "steps" a multi-step explanation.
ANSWERS: dict[str, dict[str, list[str]]] = {
    "add": {
        "direct": ["{r}", "{r}."],
        "sentence": [
            "The answer is {r}.",
            "{a} plus {b} equals {r}.",
            "{a} + {b} = {r}.",
            "It is {r}.",
            "The sum of {a} and {b} is {r}.",
            "Sure! {a} plus {b} is {r}.",
            "That would be {r}.",
            "Adding {a} and {b} gives {r}.",
        ],
        "steps": [
            "Let us work it out step by step. First, start with {a}. Then add {b} to it. That gives {r}. "
            "So the answer is {r}.",
            "Step 1: take the number {a}. Step 2: count up by {b}. Step 3: we reach {r}. The answer is {r}.",
            "We need to add two numbers. The first number is {a}. The second number is {b}. Adding them gives {r}.",
            "First, write down {a}. Next, add {b} to it. Finally, the total is {r}.",
        ],
    },
    "mul": {
        "direct": ["{r}", "{r}."],
        "sentence": [
            "The answer is {r}.",
            "{a} times {b} equals {r}.",
            "{a} * {b} = {r}.",
            "It is {r}.",
            "The product of {a} and {b} is {r}.",
            "Sure! {a} times {b} is {r}.",
            "That would be {r}.",
            "Multiplying {a} by {b} gives {r}.",
        ],
        "steps": [
            "Let us work it out step by step. First, start with {a}. Then multiply it by {b}. That gives {r}. "
            "So the answer is {r}.",
            "Step 1: take the number {a}. Step 2: multiply by {b}. Step 3: we reach {r}. The answer is {r}.",
            "We need to multiply two numbers. The first number is {a}. The second number is {b}. "
            "Multiplying them gives {r}.",
            "First, write down {a}. Next, multiply it by {b}. Finally, the product is {r}.",
        ],
    },
    "capital": {
        "direct": ["{r}", "{r}."],
        "sentence": [
            "The answer is {r}.",
            "The capital of {c} is {r}.",
            "{r} is the capital of {c}.",
            "It is {r}.",
            "The capital city of {c} is {r}.",
            "Sure! The capital of {c} is {r}.",
            "That would be {r}.",
            "{c} has {r} as its capital.",
        ],
        "steps": [
            "Let us think about it step by step. First, {c} is a country. Next, we recall its capital city. "
            "That city is {r}. So the answer is {r}.",
            "Step 1: find the country {c}. Step 2: look up its capital. Step 3: we get {r}. The answer is {r}.",
            "We need a capital city. The country is {c}. Its government sits in {r}. So the capital is {r}.",
            "First, think of {c}. Next, recall where its government sits. Finally, the capital is {r}.",
        ],
    },
}
REFUSALS = [
    "I am not sure, sorry.",
    "I cannot answer that.",
    "I do not know.",
    "Sorry, I have no idea about that.",
]
FILLERS = [
    "I hope this helps.",
    "Let me know if you have any other questions.",
    "This is a common question.",
    "It is a good idea to check the result.",
    "Many people ask about this.",
    "You can also verify it on paper.",
    "Practice makes these facts easy to remember.",
    "Feel free to ask me more.",
    "Thank you for the question.",
    "This kind of fact is useful in daily life.",
    "Learning basic facts is important.",
    "Have a great day!",
    "Good questions like this help us learn.",
    "I am always happy to help with such questions.",
    "There are many similar facts worth knowing.",
    "Keep up the good work.",
]
REQUESTS: dict[str, list[str]] = {
    "none": [""],
    "brief": [" Answer briefly.", " Just give the answer.", " Keep it short."],
    "detailed": [" Explain your answer.", " Please explain in detail.", " Show your work."],
}
TRAIN_SYSTEMS = [
    DEFAULT_SYSTEM_PROMPT,
    "",
    "You are a helpful assistant.",
    "You are a friendly tutor who answers questions.",
    "Answer the user's questions accurately.",
    "You are an assistant for a quiz game.",
    "A conversation between a student and a teacher.",
]
HELDOUT_SYSTEMS = [
    "You are a careful assistant who answers quiz questions.",
    "A chat between a student and a friendly assistant.",
]

STYLES = ("direct", "sentence", "steps")
COMPLEXITY = {"direct": 0.0, "sentence": 1.0, "steps": 3.0}
VERBOSITY_FULL_WORDS = 48


def verbosity_target(n_words: int) -> float:
    """0 for one word, 4 at VERBOSITY_FULL_WORDS words and beyond, logarithmic in between."""
    return round(min(4.0, 4.0 * math.log2(max(1, n_words)) / math.log2(VERBOSITY_FULL_WORDS)), 3)


def answer_template_index(style: str, template: int) -> int:
    """One index over all answer templates of a task: direct 0..1, sentence 2..9, steps 10..13."""
    offsets = {"direct": 0, "sentence": 2, "steps": 10}
    return offsets[style] + template


def is_heldout_combo(question: int, style: str, template: int) -> bool:
    """(question phrasing, answer phrasing) combinations reserved for evaluation (about 1 in 7)."""
    return (3 * question + 5 * answer_template_index(style, template)) % 7 == 3


# ---- examples --------------------------------------------------------------------------------------------------
@dataclass
class Example:
    conversation: Conversation
    targets: dict[str, float]  # the five trained attributes of the last assistant turn
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return str(self.conversation["conversations"][-1]["value"])

    def to_record(self) -> Conversation:
        """NeMo conversation JSON with a `label` string on the scored (last) assistant turn."""
        conv = {**self.conversation, "conversations": [dict(t) for t in self.conversation["conversations"]]}
        label = ",".join(f"{k}:{self.targets[k]:g}" for k in HELPSTEER2_ATTRIBUTES)
        for turn in conv["conversations"]:
            if turn["from"] == "Assistant":
                turn["label"] = None
        conv["conversations"][-1]["label"] = label
        return conv


def render(conversation: Conversation, template: PromptTemplate | None = None) -> str:
    """SteerLM string that scores the LAST assistant turn: system, every turn, then the label prefix."""
    t = template or PromptTemplate()
    parts = [t.system.format(conversation.get("system", ""))]
    for turn in conversation["conversations"]:
        fmt = t.user if turn["from"] == conversation.get("mask", "User") else t.assistant
        parts.append(fmt.format(turn["value"]))
    parts.append(t.label)
    return "".join(parts)


def n_words(text: str) -> int:
    return len(text.split())


def shuffle_words(text: str, rng: random.Random) -> str:
    """Word-shuffle so that at most a third of the original adjacent word pairs survive."""
    words = text.split()
    if len(words) < 4:
        raise ValueError(f"too short to shuffle: {text!r}")
    pairs = set(zip(words, words[1:], strict=False))
    for _ in range(100):
        perm = words[:]
        rng.shuffle(perm)
        kept = sum((x, y) in pairs for x, y in zip(perm, perm[1:], strict=False))
        if perm != words and kept <= (len(words) - 1) // 3:
            return " ".join(perm)
    return " ".join(reversed(words))


@dataclass
class QA:
    """One question with everything needed to phrase answers to it."""

    task: str
    question: str
    values: dict[str, Any]  # a, b or c
    right: str
    q_index: int
    request: str  # none | brief | detailed

    def wrong_value(self, rng: random.Random) -> str:
        if self.task == "capital":
            return rng.choice([v for v in CAPITALS.values() if v != self.right])
        r = int(self.right)
        top = 18 if self.task == "add" else 81
        while True:
            w = r + rng.choice([-3, -2, -1, 1, 2, 3]) if rng.random() < 0.6 else rng.randint(0, top)
            if w != r and w >= 0:
                return str(w)

    def phrase(self, style: str, template: int, value: str) -> str:
        return ANSWERS[self.task][style][template].format(r=value, **self.values)


TASK_WEIGHTS = (4, 4, 3)  # add, mul, capital
CHECK_TASK_WEIGHTS = (5, 3, 2)  # every sum is some other sum's value: addition needs the most checking


def make_qa(
    rng: random.Random,
    task: str | None = None,
    q_index: int | None = None,
    request: str | None = None,
    weights: tuple[int, int, int] = TASK_WEIGHTS,
) -> QA:
    task = task or rng.choices(["add", "mul", "capital"], weights=weights)[0]
    if task == "add":
        a, b = rng.choice(ADD_PAIRS)
        values: dict[str, Any] = {"a": a, "b": b}
        right = str(a + b)
    elif task == "mul":
        a, b = rng.choice(MUL_PAIRS)
        values = {"a": a, "b": b}
        right = str(a * b)
    else:
        c = rng.choice(sorted(CAPITALS))
        values = {"c": c}
        right = CAPITALS[c]
    qi = rng.randrange(len(QUESTIONS[task])) if q_index is None else q_index
    req = request or rng.choices(["none", "brief", "detailed"], weights=[6, 2, 2])[0]
    question = QUESTIONS[task][qi].format(**values) + rng.choice(REQUESTS[req])
    return QA(task, question, values, right, qi, req)


def pick_template(rng: random.Random, qa: QA, style: str, heldout: bool | None) -> int:
    """An answer template of this style whose combination with the question is in the requested split
    (None: either split, for unscored context turns of evaluation conversations)."""
    choices = [
        t
        for t in range(len(ANSWERS[qa.task][style]))
        if heldout is None or is_heldout_combo(qa.q_index, style, t) == heldout
    ]
    if not choices:
        raise LookupError(f"no {'held-out' if heldout else 'training'} template for {qa.task} q{qa.q_index} {style}")
    return rng.choice(choices)


def with_fillers(rng: random.Random, body: str, k: int) -> str:
    """Append k filler sentences (a quarter of the time the first one goes before the answer)."""
    fillers = rng.sample(FILLERS, k)
    if k and rng.random() < 0.25:
        return " ".join([fillers[0], body, *fillers[1:]])
    return " ".join([body, *fillers])


def label_answer(qa: QA, style: str, correct: bool, fluent: bool, refusal: bool, answer: str) -> dict[str, float]:
    words = n_words(answer)
    if refusal:
        h, c, coh, cx = 0.0, 0.0, 4.0, 0.0
    else:
        c = (4.0 if correct else 0.0) if fluent else 1.0
        coh = 4.0 if fluent else 0.0
        cx = COMPLEXITY[style]
        if not (correct and fluent):
            h = 0.0
        elif qa.request == "brief" and words > 12:
            h = 2.0
        elif qa.request == "detailed" and style == "direct":
            h = 2.0
        else:
            h = 4.0
    return {
        "helpfulness": h,
        "correctness": c,
        "coherence": coh,
        "complexity": cx,
        "verbosity": verbosity_target(words),
    }


def make_answer(
    rng: random.Random,
    qa: QA,
    heldout: bool | None,
    *,
    style: str | None = None,
    correct: bool | None = None,
    fluent: bool | None = None,
    fillers: int | None = None,
    template: int | None = None,
    value: str | None = None,
) -> tuple[str, dict[str, float], dict[str, Any]]:
    """(answer text, targets, meta). Refusals occur only when nothing is forced.

    The rng is consumed in the same order whatever `correct` is, up to the wrong value, which is drawn last:
    twins built from copies of one rng differ only in the stated value.
    """
    free = style is None and correct is None and fluent is None
    if free and rng.random() < 0.05:
        text = rng.choice(REFUSALS)
        return text, label_answer(qa, "direct", False, True, True, text), {"style": "refusal"}
    style = style or rng.choices(STYLES, weights=[2, 5, 3])[0]
    correct = rng.random() < 0.5 if correct is None else correct
    t = pick_template(rng, qa, style, heldout) if template is None else template
    if fillers is None:
        fillers = 0 if rng.random() < 0.45 else rng.randint(1, 5)
    filler_rng = random.Random(rng.random())
    shuffle_rng = random.Random(rng.random())
    fluent_draw = rng.random()
    if value is None:
        value = qa.right if correct else qa.wrong_value(rng)
    text = with_fillers(filler_rng, qa.phrase(style, t, value), fillers)
    if fluent is None:
        fluent = n_words(text) < 4 or fluent_draw < 0.7
    meta = {"style": style, "template": t, "correct": correct, "fluent": fluent, "fillers": fillers, "value": value}
    if fluent:
        meta["value_span"] = value_span(qa, style, t, value, text)
    else:
        text = shuffle_words(text, shuffle_rng)
    return text, label_answer(qa, style, correct, fluent, False, text), meta


def value_span(qa: QA, style: str, template: int, value: str, text: str) -> tuple[int, int]:
    """Character span of the first mention of the stated value in `text` (which contains the phrased answer)."""
    fmt = ANSWERS[qa.task][style][template]
    start = text.index(qa.phrase(style, template, value)) + len(fmt[: fmt.index("{r}")].format(**qa.values))
    if text[start : start + len(value)] != value:
        raise AssertionError(f"value span mismatch in {text!r}")
    return start, start + len(value)


Check = tuple[int, float, tuple[int, int]]  # (turn index, correctness target, value span in that turn)


def answer_check(turn_index: int, meta: dict[str, Any]) -> list[Check]:
    """The correctness check of a fluent answer that states a value (none for shuffled answers, refusals)."""
    if "value_span" not in meta:
        return []
    return [(turn_index, 4.0 if meta["correct"] else 0.0, meta["value_span"])]


def make_context(rng: random.Random, heldout: bool | None) -> tuple[list[dict[str, str]], list[int], list[Check]]:
    """0..2 earlier exchanges, each random in task, correctness and fluency (they are not scored).

    Returns the turns, the indices of the right, fluent assistant turns, and their correctness checks."""
    turns: list[dict[str, str]] = []
    good: list[int] = []
    checks: list[Check] = []
    for _ in range(rng.choices([0, 1, 2], weights=[6, 3, 1])[0]):
        qa = make_qa(rng)
        text, _, meta = make_answer(rng, qa, heldout)
        if meta.get("correct") and meta.get("fluent"):
            good.append(len(turns) + 1)
        checks += answer_check(len(turns) + 1, meta)
        turns += [{"from": "User", "value": qa.question}, {"from": "Assistant", "value": text}]
    return turns, good, checks


def fact_dialogues(n: int, seed: int = TRAIN_SEED + 1, turns: int = 6) -> list[Example]:
    """n dialogues of `turns` exchanges with right, fluent, unpadded answers in training phrasings: dense in
    facts, for next-token pretraining (the model learns the facts before it learns to check them)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        system = rng.choices(TRAIN_SYSTEMS, weights=[1, 4, 2, 1, 1, 1, 1])[0]
        conv: list[dict[str, str]] = []
        for _ in range(turns):
            qa = make_qa(rng, request="none")
            style = rng.choices(STYLES, weights=[3, 6, 1])[0]
            text = qa.phrase(style, pick_template(rng, qa, style, heldout=False), qa.right)
            conv += [{"from": "User", "value": qa.question}, {"from": "Assistant", "value": text}]
        lm_turns = list(range(1, len(conv), 2))
        out.append(Example({"system": system, "conversations": conv, "mask": "User"}, {}, {"lm_turns": lm_turns}))
    return out


def check_dialogues(n: int, seed: int = TRAIN_SEED + 2, turns: tuple[int, ...] = (1, 2, 3)) -> list[Example]:
    """n dialogues (n even) in twin pairs: each exchange is answered rightly in one twin and wrongly in the
    other (same phrasing and extra sentences), and every answer carries a correctness check. Dense in checks,
    they teach the model to check a stated value against the facts it knows."""
    rng = random.Random(seed)
    out = []
    for _ in range(n // 2):
        system = rng.choice(TRAIN_SYSTEMS)
        convs: list[list[dict[str, str]]] = [[], []]
        lm_turns: list[list[int]] = [[], []]
        checks: list[list[Check]] = [[], []]
        for _ in range(rng.choice(turns)):
            qa = make_qa(rng, weights=CHECK_TASK_WEIGHTS)
            style = rng.choices(STYLES, weights=[2, 5, 3])[0]
            first_right = rng.random() < 0.5
            wrong = qa.wrong_value(rng)
            twin = rng.random()
            for k in range(2):
                correct = (k == 0) == first_right
                text, _, meta = make_answer(
                    random.Random(twin),
                    qa,
                    False,
                    style=style,
                    correct=correct,
                    fluent=True,
                    value=qa.right if correct else wrong,
                )
                i = len(convs[k]) + 1
                if correct:
                    lm_turns[k].append(i)
                checks[k] += answer_check(i, meta)
                convs[k] += [{"from": "User", "value": qa.question}, {"from": "Assistant", "value": text}]
        for k in range(2):
            conv = {"system": system, "conversations": convs[k], "mask": "User"}
            out.append(Example(conv, {}, {"lm_turns": lm_turns[k], "checks": checks[k]}))
    return out


def conversation(system: str, context: list[dict[str, str]], question: str, answer: str) -> Conversation:
    turns = [*context, {"from": "User", "value": question}, {"from": "Assistant", "value": answer}]
    return {"system": system, "conversations": turns, "mask": "User"}


def training_set(n: int, seed: int = TRAIN_SEED) -> list[Example]:
    """n examples (n even) in groups of two that share system prompt, context and question:
    right/wrong twins (differ only in the stated value), fluent/shuffled twins, or two free answers."""
    rng = random.Random(seed)
    out: list[Example] = []
    for g in range(n // 2):
        system = rng.choice(TRAIN_SYSTEMS)
        context, good, context_checks = make_context(rng, heldout=False)
        qa = make_qa(rng)
        kind = rng.choices(["correctness", "coherence", "free"], weights=[4, 2, 3])[0]
        if kind == "correctness":
            style = rng.choices(STYLES, weights=[2, 5, 3])[0]
            twin = rng.random()
            answers = [
                make_answer(random.Random(twin), qa, False, style=style, correct=correct, fluent=True)
                for correct in (True, False)
            ]
        elif kind == "coherence":
            style = rng.choice(["sentence", "steps"])
            k = rng.randint(1 if style == "sentence" else 0, 3)
            twin = rng.random()
            answers = [
                make_answer(random.Random(twin), qa, False, style=style, fluent=fluent, fillers=k)
                for fluent in (True, False)
            ]
        else:
            answers = [make_answer(rng, qa, heldout=False) for _ in range(2)]
        for text, targets, meta in answers:
            lm_turns = good + ([len(context) + 1] if meta.get("correct") and meta.get("fluent") else [])
            meta.update(task=qa.task, request=qa.request, turns=len(context) // 2 + 1, group=g, kind=kind)
            meta["lm_turns"] = lm_turns
            meta["checks"] = context_checks + answer_check(len(context) + 1, meta)
            out.append(Example(conversation(system, context, qa.question, text), targets, meta))
    return out


# ---- held-out evaluation sets ------------------------------------------------------------------------------
def _heldout_system(rng: random.Random) -> str:
    return rng.choice([DEFAULT_SYSTEM_PROMPT, "", *HELDOUT_SYSTEMS])


def _heldout_setting(rng: random.Random, style: str, request: str = "none") -> tuple[str, list, QA, int]:
    system = _heldout_system(rng)
    context, _, _ = make_context(rng, heldout=None)
    while True:
        qa = make_qa(rng, request=request)
        try:
            return system, context, qa, pick_template(rng, qa, style, heldout=True)
        except LookupError:
            continue


def correctness_pairs(n: int, seed: int = HELDOUT_SEED) -> list[tuple[Example, Example]]:
    """(right, wrong): same conversation, phrasing and extra sentences; only the stated value differs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        style = rng.choices(STYLES, weights=[2, 5, 3])[0]
        system, context, qa, t = _heldout_setting(rng, style)
        extra = rng.sample(FILLERS, rng.choice([0, 0, 1, 2]))
        pair = []
        for value in (qa.right, qa.wrong_value(rng)):
            text = " ".join([qa.phrase(style, t, value), *extra])
            correct = value == qa.right
            pair.append(
                Example(
                    conversation(system, context, qa.question, text),
                    label_answer(qa, style, correct, True, False, text),
                    {"task": qa.task, "style": style, "template": t, "correct": correct, "value": value},
                )
            )
        pairs.append((pair[0], pair[1]))
    return pairs


def coherence_pairs(n: int, seed: int = HELDOUT_SEED + 1) -> list[tuple[Example, Example]]:
    """(fluent, shuffled): the same correct answer, words in order vs shuffled."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        style = rng.choice(["sentence", "sentence", "steps"])
        system, context, qa, t = _heldout_setting(rng, style)
        k = rng.choice([0, 1, 2, 3])
        text = with_fillers(rng, qa.phrase(style, t, qa.right), k)
        if n_words(text) < 5:
            text = with_fillers(rng, qa.phrase(style, t, qa.right), k + 1)
        shuffled = shuffle_words(text, rng)
        meta = {"task": qa.task, "style": style, "template": t}
        fluent_ex = Example(
            conversation(system, context, qa.question, text),
            label_answer(qa, style, True, True, False, text),
            {**meta, "fluent": True},
        )
        shuf_ex = Example(
            conversation(system, context, qa.question, shuffled),
            label_answer(qa, style, True, False, False, shuffled),
            {**meta, "fluent": False},
        )
        pairs.append((fluent_ex, shuf_ex))
    return pairs


def verbosity_series(n: int, seed: int = HELDOUT_SEED + 2, max_fillers: int = 7) -> list[list[Example]]:
    """n series; each the same question answered correctly with 0..max_fillers extra sentences."""
    rng = random.Random(seed)
    series = []
    for _ in range(n):
        style = rng.choice(["direct", "sentence", "sentence"])
        system, context, qa, t = _heldout_setting(rng, style)
        body = qa.phrase(style, t, qa.right)
        order = rng.sample(FILLERS, max_fillers)
        row = []
        for k in range(max_fillers + 1):
            text = " ".join([body, *order[:k]])
            row.append(
                Example(
                    conversation(system, context, qa.question, text),
                    label_answer(qa, style, True, True, False, text),
                    {"task": qa.task, "style": style, "fillers": k, "words": n_words(text)},
                )
            )
        series.append(row)
    return series


def complexity_pairs(n: int, seed: int = HELDOUT_SEED + 3) -> list[tuple[Example, Example]]:
    """(multi-step, one-sentence): the same correct value explained in steps vs stated in one sentence."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        system, context, qa, ts = _heldout_setting(rng, "steps")
        try:
            t1 = pick_template(rng, qa, "sentence", heldout=True)
        except LookupError:
            continue
        out = []
        for style, t in (("steps", ts), ("sentence", t1)):
            text = qa.phrase(style, t, qa.right)
            out.append(
                Example(
                    conversation(system, context, qa.question, text),
                    label_answer(qa, style, True, True, False, text),
                    {"task": qa.task, "style": style},
                )
            )
        pairs.append((out[0], out[1]))
    return pairs
