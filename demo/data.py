"""Deterministic synthetic conversations whose HelpSteer2 attributes are checkable.

Tasks:
- addition and subtraction of whole numbers 0..99 (differences are never negative), multiplication with
  operands 2..12, and a lookup table of country capitals;
- questions in thousands of phrasings, each an opener ("", "Hello, ", "Question: ", ...), a core and an ending
  ("?", ".", "", " please.", ...); a core is a frame (imperative, polite, terse) around an expression ("17+8",
  "17 + 8", "17 plus 8") or a worded question ("Subtract 9 from 14");
- answers as a bare value, one sentence (including the equation restated) or several steps.

Every conversation ends with an assistant turn whose five trained attributes follow from how it was built:
- correctness: 4 if the stated value is right, 0 if wrong (1 when the words are shuffled, 0 for a refusal);
  wrong values are mostly near misses (off by 1..3 or 10, swapped digits, a neighbour in the times table,
  another well-known city of the country), otherwise another value of the task's range;
- coherence: 4 for fluent text, 0 for a word-shuffled answer;
- complexity: 0 for a bare value, 1 for a one-sentence answer, 3 for a multi-step answer;
- verbosity: a monotone function of the answer's word count (`verbosity_target`);
- helpfulness: 0 when wrong, shuffled or a refusal; else 4, or 2 when the length ignores what was asked
  ("Answer briefly." answered at length, "Explain your answer." answered with a bare value).
Earlier turns (multi-turn examples) are random in every respect: the labels are those of the LAST assistant turn.

Held-out split (`HELDOUT_*`): whole question cores (with any opener, including held-out openers), worded
questions and answer templates, a tenth of the
addition and subtraction operand pairs and a set of ordered multiplication pairs (whose mirror image is trained:
nobody learns a times table without seeing it) never occur in training; the evaluation sets use only those, with
system prompts that training never uses and their own seeds.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from reward_triton.metadata import DEFAULT_SYSTEM_PROMPT, PromptTemplate
from reward_triton.serving import prompt
from reward_triton.serving.conversation import from_nemo

Conversation = dict[str, Any]

TRAIN_SEED = 1234
HELDOUT_SEED = 987654
TASKS = ("add", "sub", "mul", "capital")

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
    "Australia": "Canberra",
    "Brazil": "Brasilia",
    "India": "New Delhi",
    "Turkey": "Ankara",
    "Sweden": "Stockholm",
    "Mexico": "Mexico City",
    "Argentina": "Buenos Aires",
    "South Korea": "Seoul",
    "the United Kingdom": "London",
    "Switzerland": "Bern",
}
# well-known cities that are not the capital: the near misses of capital questions
OTHER_CITIES: dict[str, list[str]] = {
    "Australia": ["Sydney", "Melbourne"],
    "Brazil": ["Rio de Janeiro", "Sao Paulo"],
    "India": ["Mumbai"],
    "Turkey": ["Istanbul"],
    "Canada": ["Toronto", "Montreal"],
    "China": ["Shanghai"],
    "Switzerland": ["Zurich", "Geneva"],
    "Germany": ["Munich", "Hamburg"],
    "Italy": ["Milan", "Naples"],
    "Spain": ["Barcelona"],
    "Japan": ["Osaka", "Kyoto"],
    "Russia": ["Saint Petersburg"],
    "Poland": ["Krakow"],
    "Portugal": ["Porto"],
    "France": ["Marseille", "Lyon"],
    "South Korea": ["Busan"],
    "Egypt": ["Alexandria"],
    "the United Kingdom": ["Manchester"],
}


def is_heldout_pair(task: str, a: int, b: int) -> bool:
    """Operand pairs reserved for evaluation: a tenth of the sums and differences, drawn by a hash of the whole
    pair; for products, ordered pairs a > b whose mirror (b, a) is trained.

    The hash mixes all four digits on purpose: a rule on the units digits alone (an earlier split held out the
    pairs with (7a + 13b) % 10 == 3) holds out whole classes of the units-digit sum or difference, e.g. every
    difference ending in 9, which no amount of training on the other pairs can teach."""
    if task == "mul":
        return a > b and (3 * a + 5 * b) % 4 == 1
    return zlib.crc32(f"{task}:{a},{b}".encode()) % 10 == 3


def _pairs(task: str) -> list[tuple[int, int]]:
    if task == "add":
        return [(a, b) for a in range(100) for b in range(100)]
    if task == "sub":
        return [(a, b) for a in range(100) for b in range(a + 1)]
    return [(a, b) for a in range(2, 13) for b in range(2, 13)]


PAIRS: dict[tuple[str, bool], list[tuple[int, int]]] = {
    (task, held): [p for p in _pairs(task) if is_heldout_pair(task, *p) == held]
    for task in ("add", "sub", "mul")
    for held in (False, True)
}

# ---- phrasings ------------------------------------------------------------------------------------------------
EXPRESSIONS: dict[str, list[str]] = {
    "add": ["{a} + {b}", "{a}+{b}", "{a} plus {b}"],
    "sub": ["{a} - {b}", "{a}-{b}", "{a} minus {b}"],
    "mul": ["{a} * {b}", "{a}*{b}", "{a} times {b}", "{a} x {b}", "{a} multiplied by {b}"],
}
# Questions are composed of an opener, a core (around an expression {e}, or worded with {a} and {b}) and an ending,
# so that training sees thousands of phrasings and learns to find the operands in any of them. Held-out questions
# use held-out cores (any opener, including held-out ones): no held-out question template occurs in training.
OPENERS = [
    "",
    "",
    "",
    "",
    "",
    "",
    "Hi! ",
    "Hello, ",
    "Hello! ",
    "Okay, ",
    "OK so ",
    "So, ",
    "Question: ",
    "Quick one: ",
    "Math question: ",
    "I have a question. ",
    "Excuse me, ",
    "Good morning! ",
    "Homework help: ",
    "One more: ",
    "Next: ",
    "Alright, ",
    "Hmm, ",
    "Test: ",
    "Dear assistant, ",
    "Yo, ",
    "Help me with this. ",
    "Simple one: ",
]
HELDOUT_OPENERS = ["Hey, ", "Quick question: ", "Hi there, ", "Sorry to bother you, ", "Well, "]
ENDINGS = ["?", ".", "", "!", " please.", " please?", "?!", " for me.", ", thanks.", "? Thanks!"]
CORES = [
    "What is {e}",
    "what is {e}",
    "What's {e}",
    "Compute {e}",
    "compute {e}",
    "Calculate {e}",
    "How much is {e}",
    "Please tell me {e}",
    "Please compute {e}",
    "Tell me {e}",
    "Can you tell me what {e} is",
    "Solve {e}",
    "{e}",
    "{e} =",
    "{e} = ?",
    "I need {e}",
    "Give me {e}",
    "Evaluate {e}",
    "Can you compute {e}",
    "What does {e} equal",
    "What does {e} make",
    "Figure out {e}",
    "I want to know {e}",
    "Tell me the value of {e}",
    "What is the value of {e}",
    "Could you tell me {e}",
    "Determine {e}",
    "What would {e} be",
    "Answer this: {e}",
    "Result of {e}",
    "how much is {e}",
    "Please calculate {e}",
]
HELDOUT_CORES = [
    "Work out {e}",
    "Could you calculate {e} for me",
    "What's the answer to {e}",
    "Please solve {e}",
    "{e} equals what",
    "Do you know what {e} is",
    "Find {e}",
    "I'd like to know {e}",
    "Can you do {e}",
    "What do you get for {e}",
]
WORDED: dict[str, list[str]] = {
    "add": [
        "Add {a} and {b}",
        "Add {a} to {b}",
        "What is the sum of {a} and {b}",
        "What do you get when you add {a} and {b}",
        "Please tell me the sum of {a} and {b}",
        "Sum of {a} and {b}",
        "Compute the sum of {a} and {b}",
        "What is {a} added to {b}",
        "What is {a} and {b} together",
    ],
    "sub": [
        "Subtract {b} from {a}",
        "Take {b} away from {a}",
        "What is {a} take away {b}",
        "What do you get when you subtract {b} from {a}",
        "What is the difference between {a} and {b}",
        "Please subtract {b} from {a}",
        "Compute {a} less {b}",
        "What is {b} subtracted from {a}",
        "How much is left if you take {b} from {a}",
    ],
    "mul": [
        "Multiply {a} by {b}",
        "Multiply {a} and {b}",
        "What is the product of {a} and {b}",
        "What do you get when you multiply {a} by {b}",
        "Please tell me the product of {a} and {b}",
        "Product of {a} and {b}",
        "Compute the product of {a} and {b}",
        "What is {a} multiplied by {b}",
        "How much is {a} groups of {b}",
    ],
}
HELDOUT_WORDED: dict[str, list[str]] = {
    "add": ["If you add {a} and {b}, what do you get", "Please add {a} and {b}"],
    "sub": ["If you subtract {b} from {a}, what do you get", "How much is {a} take away {b}"],
    "mul": ["If you multiply {a} by {b}, what do you get", "Please multiply {a} by {b}"],
}
CAPITAL_CORES = [
    "What is the capital of {c}",
    "Which city is the capital of {c}",
    "Name the capital of {c}",
    "Tell me the capital city of {c}",
    "What city is the capital of {c}",
    "Capital of {c}",
    "capital of {c}",
    "Please tell me the capital of {c}",
    "What's the capital of {c}",
    "What is {c}'s capital",
    "Where is the capital of {c}",
]
HELDOUT_CAPITAL_CORES = [
    "Do you know the capital of {c}",
    "Could you name the capital of {c} for me",
    "what is the capital city of {c}",
]


def _compose(openers: list[str], cores: list[str]) -> list[str]:
    out = []
    for o in openers:
        for c in cores:
            if o.endswith(", ") and c[0].isupper() and not c.startswith(("I ", "I'")):
                c = c[0].lower() + c[1:]
            out += [o + c + e for e in ENDINGS]
    return sorted(set(out))


def question_templates(task: str, heldout: bool) -> list[str]:
    """The question templates of one task and split; a training template is never a held-out one."""
    if task == "capital":
        train, held = CAPITAL_CORES, HELDOUT_CAPITAL_CORES
    else:
        train = [c.format(e=e) for c in CORES for e in EXPRESSIONS[task]] + WORDED[task]
        held = [c.format(e=e) for c in HELDOUT_CORES for e in EXPRESSIONS[task]] + HELDOUT_WORDED[task]
    heldout_templates = _compose(OPENERS + HELDOUT_OPENERS, held)
    if heldout:
        return heldout_templates
    return sorted(set(_compose(OPENERS, train)) - set(heldout_templates))


QUESTIONS: dict[tuple[str, bool], list[str]] = {(t, h): question_templates(t, h) for t in TASKS for h in (False, True)}

_DIRECT = ["{r}", "{r}."]
# style -> (training templates, held-out templates); "direct" is a bare value, "sentence" one sentence (the
# equation restated counts as one), "steps" a multi-step explanation. Direct answers have no held-out template:
# their held-out conversations differ by question phrasing and operands.
ANSWERS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "add": {
        "direct": (_DIRECT, []),
        "sentence": (
            [
                "The answer is {r}.",
                "{a} + {b} = {r}.",
                "{a} + {b} = {r}",
                "{a}+{b}={r}",
                "{a} plus {b} equals {r}.",
                "{a} plus {b} is {r}.",
                "It is {r}.",
                "The sum of {a} and {b} is {r}.",
                "Sure! {a} plus {b} is {r}.",
                "That would be {r}.",
                "Adding {a} and {b} gives {r}.",
                "{r} is the answer.",
            ],
            ["The result is {r}.", "{a} + {b} equals {r}.", "You get {r}.", "Sure, it is {r}."],
        ),
        "steps": (
            [
                "Let us work it out step by step. First, start with {a}. Then add {b} to it. That gives {r}. "
                "So the answer is {r}.",
                "Step 1: take the number {a}. Step 2: count up by {b}. Step 3: we reach {r}. The answer is {r}.",
                "We need to add two numbers. The first number is {a}. The second number is {b}. Adding them gives {r}.",
            ],
            ["First, write down {a}. Next, add {b} to it. Finally, the total is {r}."],
        ),
    },
    "sub": {
        "direct": (_DIRECT, []),
        "sentence": (
            [
                "The answer is {r}.",
                "{a} - {b} = {r}.",
                "{a} - {b} = {r}",
                "{a}-{b}={r}",
                "{a} minus {b} equals {r}.",
                "{a} minus {b} is {r}.",
                "It is {r}.",
                "The difference is {r}.",
                "Sure! {a} minus {b} is {r}.",
                "That would be {r}.",
                "Taking {b} away from {a} leaves {r}.",
                "{r} is the answer.",
            ],
            ["The result is {r}.", "{a} - {b} equals {r}.", "You get {r}.", "Sure, it is {r}."],
        ),
        "steps": (
            [
                "Let us work it out step by step. First, start with {a}. Then take away {b}. That leaves {r}. "
                "So the answer is {r}.",
                "Step 1: take the number {a}. Step 2: count down by {b}. Step 3: we reach {r}. The answer is {r}.",
                "We need to subtract one number from another. The first number is {a}. The second number is {b}. "
                "Subtracting gives {r}.",
            ],
            ["First, write down {a}. Next, take {b} away from it. Finally, what is left is {r}."],
        ),
    },
    "mul": {
        "direct": (_DIRECT, []),
        "sentence": (
            [
                "The answer is {r}.",
                "{a} * {b} = {r}.",
                "{a} * {b} = {r}",
                "{a}*{b}={r}",
                "{a} times {b} equals {r}.",
                "{a} times {b} is {r}.",
                "It is {r}.",
                "The product of {a} and {b} is {r}.",
                "Sure! {a} times {b} is {r}.",
                "That would be {r}.",
                "Multiplying {a} by {b} gives {r}.",
                "{r} is the answer.",
            ],
            ["The result is {r}.", "{a} x {b} equals {r}.", "You get {r}.", "Sure, it is {r}."],
        ),
        "steps": (
            [
                "Let us work it out step by step. First, start with {a}. Then multiply it by {b}. That gives "
                "{r}. So the answer is {r}.",
                "Step 1: take the number {a}. Step 2: multiply by {b}. Step 3: we reach {r}. The answer is {r}.",
                "We need to multiply two numbers. The first number is {a}. The second number is {b}. "
                "Multiplying them gives {r}.",
            ],
            ["First, write down {a}. Next, multiply it by {b}. Finally, the product is {r}."],
        ),
    },
    "capital": {
        "direct": (_DIRECT, []),
        "sentence": (
            [
                "The answer is {r}.",
                "The capital of {c} is {r}.",
                "{r} is the capital of {c}.",
                "It is {r}.",
                "The capital city of {c} is {r}.",
                "Sure! The capital of {c} is {r}.",
                "That would be {r}.",
                "{r} is the answer.",
            ],
            ["The result is {r}.", "{c} has {r} as its capital.", "You get {r}.", "Sure, it is {r}."],
        ),
        "steps": (
            [
                "Let us think about it step by step. First, {c} is a country. Next, we recall its capital city. "
                "That city is {r}. So the answer is {r}.",
                "Step 1: find the country {c}. Step 2: look up its capital. Step 3: we get {r}. The answer is {r}.",
                "We need a capital city. The country is {c}. Its government sits in {r}. So the capital is {r}.",
            ],
            ["First, think of {c}. Next, recall where its government sits. Finally, the capital is {r}."],
        ),
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


def answer_templates(task: str, style: str) -> list[str]:
    """Training templates, then held-out ones: a template index t is held out when t >= len(training ones)."""
    train, held = ANSWERS[task][style]
    return train + held


def is_heldout_answer(task: str, style: str, template: int) -> bool:
    return template >= len(ANSWERS[task][style][0])


# ---- examples --------------------------------------------------------------------------------------------------
@dataclass
class Example:
    conversation: Conversation
    targets: dict[str, float]  # the five trained attributes of the last assistant turn
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return str(self.conversation["conversations"][-1]["value"])


def render(conversation: Conversation, template: PromptTemplate | None = None) -> str:
    """SteerLM string that scores the LAST assistant turn (the served renderer, reward_triton.serving.prompt)."""
    return prompt.render(from_nemo(conversation), template or PromptTemplate(), "")


def n_words(text: str) -> int:
    return len(text.split())


def shuffle_words(text: str, rng: random.Random, keep_ends: bool = False) -> str:
    """Word-shuffle so that at most a third of the original adjacent word pairs survive. With `keep_ends` the
    last word (with its full stop) stays last, so the shuffle cannot be told by where the punctuation sits."""
    words = text.split()
    if len(words) < 4:
        raise ValueError(f"too short to shuffle: {text!r}")
    pairs = set(zip(words, words[1:], strict=False))
    head, tail = (words[:-1], words[-1:]) if keep_ends else (words, [])
    for _ in range(100):
        perm = head[:]
        rng.shuffle(perm)
        perm += tail
        kept = sum((x, y) in pairs for x, y in zip(perm, perm[1:], strict=False))
        if perm != words and kept <= (len(words) - 1) // 3:
            return " ".join(perm)
    return " ".join([*reversed(head), *tail])


@dataclass
class QA:
    """One question with everything needed to phrase answers to it."""

    task: str
    question: str
    values: dict[str, Any]  # a, b or c
    right: str
    q_index: int
    request: str  # none | brief | detailed
    heldout: bool = False

    def wrong_value(self, rng: random.Random) -> str:
        """A wrong value: mostly a near miss (see the module docstring)."""
        return self.wrong(rng)[0]

    def wrong(self, rng: random.Random) -> tuple[str, str]:
        """(wrong value, kind of miss)."""
        if self.task == "capital":
            others = OTHER_CITIES.get(self.values["c"], [])
            if others and rng.random() < 0.4:
                return rng.choice(others), "other city"
            return rng.choice([v for v in CAPITALS.values() if v != self.right]), "other capital"
        r, a, b = int(self.right), int(self.values["a"]), int(self.values["b"])
        kinds = ["near", "ten", "swap", "table", "random"]
        weights = [5, 2, 1, 2 if self.task == "mul" else 0, 2]
        while True:
            kind = rng.choices(kinds, weights=weights)[0]
            if kind == "near":
                w = r + rng.choice([-3, -2, -1, 1, 2, 3])
            elif kind == "ten":
                w = r + rng.choice([-10, 10])
            elif kind == "swap":
                w = int(str(r)[::-1]) if r >= 10 else r
            elif kind == "table":
                w = a * (b + rng.choice([-1, 1])) if rng.random() < 0.5 else (a + rng.choice([-1, 1])) * b
            elif self.task == "mul":
                w = rng.randint(2, 12) * rng.randint(2, 12)
            else:
                w = rng.randint(0, 198 if self.task == "add" else 99)
            if w != r and w >= 0:
                return str(w), kind

    def phrase(self, style: str, template: int, value: str) -> str:
        return answer_templates(self.task, style)[template].format(r=value, **self.values)


TASK_WEIGHTS = (3, 3, 2, 2)  # add, sub, mul, capital
CHECK_TASK_WEIGHTS = (5, 5, 1, 1)  # two-digit sums and differences need the most checking
EQUATION_TASK_WEIGHTS = (5, 5, 1, 0)  # bare equations: the times table is small, capitals are not equations


def _operands(rng: random.Random, task: str, heldout: bool) -> tuple[int, int]:
    """Operands of the split: one-digit numbers are over-represented (a newcomer types "2+2" as often as "47+38")."""
    if task == "mul":
        return rng.choice(PAIRS[("mul", heldout)])
    while True:
        a = rng.randint(0, 9) if rng.random() < 0.25 else rng.randint(10, 99)
        if task == "add":
            b = rng.randint(0, 9) if rng.random() < 0.25 else rng.randint(10, 99)
        else:
            b = rng.randint(0, min(a, 9)) if rng.random() < 0.3 else rng.randint(0, a)
        if is_heldout_pair(task, a, b) == heldout:
            return a, b


def make_qa(
    rng: random.Random,
    task: str | None = None,
    q_index: int | None = None,
    request: str | None = None,
    weights: tuple[int, ...] = TASK_WEIGHTS,
    heldout: bool = False,
) -> QA:
    task = task or rng.choices(TASKS, weights=weights)[0]
    if task == "capital":
        c = rng.choice(sorted(CAPITALS))
        values: dict[str, Any] = {"c": c}
        right = CAPITALS[c]
    else:
        a, b = _operands(rng, task, heldout)
        values = {"a": a, "b": b}
        right = str(a + b if task == "add" else a - b if task == "sub" else a * b)
    templates = QUESTIONS[(task, heldout)]
    qi = rng.randrange(len(templates)) if q_index is None else q_index
    req = request or rng.choices(["none", "brief", "detailed"], weights=[6, 2, 2])[0]
    question = templates[qi].format(**values) + rng.choice(REQUESTS[req])
    return QA(task, question, values, right, qi, req, heldout)


def pick_template(rng: random.Random, qa: QA, style: str, heldout: bool | None) -> int:
    """An answer template of this style in the requested split: training, held-out (the training ones where
    the style has none held out), or None: the training ones (unscored context turns of evaluation sets)."""
    train, held = ANSWERS[qa.task][style]
    if heldout and held:
        return len(train) + rng.randrange(len(held))
    return rng.randrange(len(train))


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
    fmt = answer_templates(qa.task, style)[template]
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
        qa = make_qa(rng, heldout=bool(heldout))
        text, _, meta = make_answer(rng, qa, heldout)
        if meta.get("correct") and meta.get("fluent"):
            good.append(len(turns) + 1)
        checks += answer_check(len(turns) + 1, meta)
        turns += [{"from": "User", "value": qa.question}, {"from": "Assistant", "value": text}]
    return turns, good, checks


ARITH_SEPARATORS = ["=", " = ", " is ", " equals "]
ArithItem = tuple[str, str, tuple[int, int], bool]  # prompt, answer, value span in the answer, value is right


def arith_items(
    n: int,
    seed: int = TRAIN_SEED + 3,
    compact: float = 0.5,
    wrong: float = 0.5,
    rng: random.Random | None = None,
    full: float = 0.0,
) -> list[ArithItem]:
    """n short items for the arithmetic phase: the model learns two-digit sums and differences and the times table,
    and to check a stated value, before it sees a whole conversation.

    A `compact` share are bare equations ("47+38=", "14 minus 9 is ") followed by the value; the rest are one
    exchange in the prompt template (training question phrasings, a bare value or a one-sentence answer, no system
    turn); a `full` share of those are scored conversations instead: a training system prompt, any answer style
    with 0..2 extra sentences, and the label prefix. A `wrong` share state a wrong value (mostly a near miss).
    Training operand pairs and templates only.
    `rng` (instead of `seed`) continues a stream."""
    rng = rng or random.Random(seed)
    t = PromptTemplate()
    out = []
    for _ in range(n):
        short = rng.random() < compact
        qa = make_qa(rng, request="none", weights=EQUATION_TASK_WEIGHTS if short else CHECK_TASK_WEIGHTS)
        right = rng.random() >= wrong
        value = qa.right if right else qa.wrong_value(rng)
        if short:
            prompt = rng.choice(EXPRESSIONS[qa.task]).format(**qa.values) + rng.choice(ARITH_SEPARATORS)
            out.append((prompt, value, (0, len(value)), right))
            continue
        if rng.random() < full:
            style = rng.choices(STYLES, weights=[2, 5, 3])[0]
            k = pick_template(rng, qa, style, heldout=False)
            text = " ".join([qa.phrase(style, k, value), *rng.sample(FILLERS, rng.choice([0, 0, 1, 2]))])
            prompt = t.system.format(rng.choice(TRAIN_SYSTEMS)) + t.user.format(qa.question)
            prompt += t.assistant.format("")[:-1]
            out.append((prompt, text + "\n" + t.label, value_span(qa, style, k, value, text), right))
            continue
        style = rng.choices(["direct", "sentence"], weights=[1, 1])[0]
        k = pick_template(rng, qa, style, heldout=False)
        text = qa.phrase(style, k, value)
        prompt = t.user.format(qa.question) + t.assistant.format("")[:-1]
        out.append((prompt, text + "\n", value_span(qa, style, k, value, text), right))
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


def _heldout_setting(
    rng: random.Random, style: str, request: str = "none", task: str | None = None
) -> tuple[str, list, QA, int]:
    system = _heldout_system(rng)
    context, _, _ = make_context(rng, heldout=None)
    qa = make_qa(rng, task=task, request=request, heldout=True)
    return system, context, qa, pick_template(rng, qa, style, heldout=True)


def correctness_pairs(n: int, seed: int = HELDOUT_SEED) -> list[tuple[Example, Example]]:
    """(right, wrong): same conversation, phrasing and extra sentences; only the stated value differs. The tasks
    take turns (n // 4 pairs each); `meta["miss"]` says what kind of wrong value the pair has."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        style = rng.choices(STYLES, weights=[2, 5, 3])[0]
        system, context, qa, t = _heldout_setting(rng, style, task=task)
        extra = rng.sample(FILLERS, rng.choice([0, 0, 1, 2]))
        wrong, miss = qa.wrong(rng)
        pair = []
        for value in (qa.right, wrong):
            text = " ".join([qa.phrase(style, t, value), *extra])
            correct = value == qa.right
            meta = {"task": qa.task, "style": style, "template": t, "correct": correct, "value": value, "miss": miss}
            pair.append(
                Example(
                    conversation(system, context, qa.question, text),
                    label_answer(qa, style, correct, True, False, text),
                    meta,
                )
            )
        pairs.append((pair[0], pair[1]))
    return pairs


def coherence_pairs(n: int, seed: int | None = None, keep_ends: bool = False) -> list[tuple[Example, Example]]:
    """(fluent, shuffled): the same correct answer, words in order vs shuffled (`keep_ends`: the last word and its
    full stop stay last; each kind has its own default seed)."""
    rng = random.Random(seed if seed is not None else HELDOUT_SEED + (4 if keep_ends else 1))
    pairs = []
    for _ in range(n):
        style = rng.choice(["sentence", "sentence", "steps"])
        system, context, qa, t = _heldout_setting(rng, style)
        k = rng.choice([0, 1, 2, 3])
        text = with_fillers(rng, qa.phrase(style, t, qa.right), k)
        if n_words(text) < 5:
            text = with_fillers(rng, qa.phrase(style, t, qa.right), k + 1)
        shuffled = shuffle_words(text, rng, keep_ends=keep_ends)
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
        t1 = pick_template(rng, qa, "sentence", heldout=True)
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
