"""Policy chat formats → messages (gateway/chat_formats.py) and request weights (client/weights.py).

The texts are written out by hand as each policy's chat template produces them (not with the module's own
`render`), so a parser bug cannot cancel out against a renderer bug; one round-trip test covers `render` too.
"""

from __future__ import annotations

import pytest

from client.api import ModelMetadata, Score
from client.weights import WeightsError, parse_option, resolve, weighted_reward
from gateway import chat_formats as cf

SYSTEM, USER, ANSWER = "Be brief.", "What is 2+2?", "It is 4."
EXPECTED = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": ANSWER},
]

# what each policy's tokenizer.apply_chat_template(...) + the generated response decode to (with its EOS)
WRITTEN = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\nIt is 4.<|im_end|>",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 4.<|eot_id|>",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] It is 4. </s>",
    "gemma": "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n"
    "<start_of_turn>model\nIt is 4.<end_of_turn>\n",
    "steerlm": "<extra_id_0>System\nBe brief.\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\nIt is 4.\n"
    "<extra_id_2>",
}
# the policy's padding / EOS text around a decoded sequence (left-padded prompt, right-padded response)
PADDING = {
    "chatml": ("<|endoftext|><|endoftext|>", "<|endoftext|><|endoftext|>"),
    "llama3": ("<|finetune_right_pad_id|>", "<|end_of_text|><|finetune_right_pad_id|><|finetune_right_pad_id|>"),
    "llama2": ("<unk><unk>", "</s></s>"),
    "gemma": ("<pad><pad>", "<eos><pad><pad>"),
    "steerlm": ("", "<pad><pad>"),
}


def expected(fmt: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """What reading back gives: Gemma's template has put the system prompt at the head of the first user turn."""
    if fmt != "gemma" or messages[0]["role"] != "system":
        return messages
    first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [first, *messages[2:]]


@pytest.mark.parametrize("fmt", cf.FORMATS)
def test_each_format_is_detected_and_parsed(fmt: str) -> None:
    parsed = cf.parse(WRITTEN[fmt])
    assert parsed.format == fmt
    assert parsed.conversation() == {"messages": expected(fmt, EXPECTED)}


@pytest.mark.parametrize("fmt", cf.FORMATS)
def test_padding_and_eos_around_the_sequence_are_tolerated(fmt: str) -> None:
    left, right = PADDING[fmt]
    extra = ["<unk>"] if fmt == "llama2" else []  # a pad text the caller names (--strip-token)
    parsed = cf.parse(left + WRITTEN[fmt] + right, extra_noise=extra)
    assert parsed.conversation() == {"messages": expected(fmt, EXPECTED)}
    if fmt == "llama2":
        with pytest.raises(cf.ChatFormatError, match="expected '\\[INST\\]'.*character 0.*<unk>"):
            cf.parse(left + WRITTEN[fmt])


@pytest.mark.parametrize("fmt", cf.FORMATS)
def test_a_response_cut_at_the_length_limit_has_no_end_marker(fmt: str) -> None:
    cut = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": " </s>", "gemma": "<end_of_turn>\n",
           "steerlm": "\n<extra_id_2>"}[fmt]  # fmt: skip
    text = WRITTEN[fmt][: -len(cut)]
    assert cf.parse(text + PADDING[fmt][1]).conversation() == {"messages": expected(fmt, EXPECTED)}


def test_multi_turn_and_no_system() -> None:
    text = (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nsee you<|im_end|>\n"
    )
    assert [m.to_dict() for m in cf.parse(text).messages] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    mistral = "<s>[INST] hi [/INST] hello</s>[INST] bye [/INST] see you</s>"
    assert [m.content for m in cf.parse(mistral).messages] == ["hi", "hello", "bye", "see you"]


def test_content_is_kept_verbatim_inside_a_turn() -> None:
    # special-looking text inside a turn is content, and the turn's own whitespace stays
    text = "<|im_start|>user\n  say </s> and [INST]\n<|im_end|>\n<|im_start|>assistant\n</s> ok\n\n<|im_end|>"
    assert [m.content for m in cf.parse(text).messages] == ["  say </s> and [INST]\n", "</s> ok\n\n"]


def test_forced_format_and_detection_by_first_marker() -> None:
    chatml_mentioning_inst = "<|im_start|>user\nwhat does [INST] mean?<|im_end|>\n<|im_start|>assistant\nA tag."
    assert cf.parse(chatml_mentioning_inst).format == "chatml"
    with pytest.raises(cf.ChatFormatError, match=r"expected '\[INST\]' \(a llama2 turn\) at character 0"):
        cf.parse(chatml_mentioning_inst, "llama2")
    with pytest.raises(cf.ChatFormatError, match="unknown chat format 'phi3'"):
        cf.parse(WRITTEN["chatml"], "phi3")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just text, no template", "no known chat format found"),
        ("<|im_start|>user\nhi<|im_end|>\n", "chatml: conversation has no assistant turn"),
        ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nq", "is from the user"),
        ("<|im_start|>tool\nx<|im_end|>\n<|im_start|>assistant\ny", "role 'tool' at character 0 is not supported"),
        ("<|im_start|>user\nhi<|im_end|>\nstray<|im_start|>assistant\ny", "at character 30, found 'stray"),
        ("<|im_start|>user\nhi\n<|im_start|>assistant\ny", "has no '<|im_end|>' before the next turn"),
        ("<|im_start|>user hi<|im_end|>", "malformed turn header at character 0"),
        ("[INST] hi", "has no closing [/INST]"),
        ("<extra_id_1>Robot\nhi\n<extra_id_2>", "turn name 'Robot'"),
        ("<|im_start|>user\nhi<|im_end|><|im_start|>assistant\na<|im_end|><|im_start|>system\ns<|im_end|>", "system"),
    ],
)
def test_unparseable_text_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(cf.ChatFormatError) as e:
        cf.parse(text)
    assert message in str(e.value)


def test_render_round_trips() -> None:
    messages = [*EXPECTED, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."}]
    for fmt in cf.FORMATS:
        assert cf.parse(cf.render(messages, fmt)).conversation() == {"messages": expected(fmt, messages)}, fmt
    assert cf.render(EXPECTED, "gemma") == WRITTEN["gemma"]
    assert cf.render(EXPECTED, "steerlm") == WRITTEN["steerlm"]
    assert cf.render(EXPECTED, "llama2") + " It is 4. </s>" != WRITTEN["llama2"]  # render ends after the assistant


# ---- weights -------------------------------------------------------------------------------------------------
NAMES = (
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
)
META = ModelMetadata(NAMES, NAMES[4:], (0, 0, 0, 0, 0.3, 0.74, 0.46, 0.47, -0.33))
SCORE = Score(scores=dict(zip(NAMES, (9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 0.5), strict=True)), reward=0.0,
              num_input_tokens=1, truncated=False, trained_attributes=NAMES[4:])  # fmt: skip


def test_weights_forms_resolve_to_one_weight_per_output() -> None:
    assert resolve([1, 2, 3, 4, 5], META) == (0, 0, 0, 0, 1, 2, 3, 4, 5)
    assert resolve(list(range(9)), META) == tuple(float(i) for i in range(9))
    assert resolve({"correctness": 1, "verbosity": -1}, META) == (0, 0, 0, 0, 0, 1, 0, 0, -1)
    # hand-computed: 1*1 + 2*1 + 4*0.5 - 0.5*2 = 4.0 ; model card weights: .3+1.48+1.38+1.88-.165 = 4.875
    assert weighted_reward(SCORE, META, resolve([1, 1, 0, 0.5, -2], META)) == 4.0
    assert weighted_reward(SCORE, META, resolve(list(META.scalar_weights), META)) == pytest.approx(4.875, abs=1e-6)
    # the untrained outputs (9.0 here) never count in the trained-only forms
    assert weighted_reward(SCORE, META, resolve({"helpfulness": 1}, META)) == 1.0


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1, 2, 3], "weights has 3 values; this model takes 5 (one per trained attribute: helpfulness, correctness"),
        ([1, 2, 3], "or 9 (one per model output: quality"),
        ({"helpful": 1}, "unknown attribute(s) 'helpful'"),
        ([1, 2, float("nan"), 4, 5], "weights[2] must be a finite number"),
        ([1, 2, True, 4, 5], "weights[2] must be a finite number"),
    ],
)
def test_bad_weights_name_the_expected_counts(weights: object, message: str) -> None:
    with pytest.raises(WeightsError) as e:
        resolve(weights, META)  # type: ignore[arg-type]
    assert message in str(e.value)


def test_weights_option_text() -> None:
    assert parse_option("0.3,0.74, 0.46,0.47,-0.33") == [0.3, 0.74, 0.46, 0.47, -0.33]
    assert parse_option("helpfulness=1,verbosity=-0.5") == {"helpfulness": 1.0, "verbosity": -0.5}
    assert parse_option('{"helpfulness": 2}') == {"helpfulness": 2}
    for bad, message in (("1,a", "must be a number"), ("a=1,2", "mixes"), ("[1,", "not valid JSON"), ("", "empty")):
        with pytest.raises(WeightsError, match=message):
            parse_option(bad)
