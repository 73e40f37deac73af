"""Renderers: exact tokens and weights, train_on_what masks, next-token shift, parsing."""

from __future__ import annotations

import pytest
from _spans import trained_spans

from crucible_kitchen.errors import RenderError, TrainingInputError
from crucible_kitchen.training import (
    RENDERERS,
    ByteTokenizer,
    ChatMLRenderer,
    Llama3Renderer,
    Message,
    ParseTermination,
    Qwen3DisableThinkingRenderer,
    Qwen3Renderer,
    Renderer,
    RoleColonRenderer,
    SupervisedExample,
    TrainOnWhat,
    build_text_completion_example,
    default_bpe_tokenizer,
    get_renderer,
    split_thinking,
)

BYTES = ByteTokenizer()
# ByteTokenizer ids: bytes are themselves; the default special tokens start at 256.
BOS, EOS = 257, 258
BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT = 259, 260, 261, 262
IM_START, IM_END = 263, 264
# The renderers that write the format themselves; "jinja" needs a Hugging Face tokenizer with
# a chat template (tests/training/test_chat_templates.py).
FAMILY_RENDERERS = sorted(set(RENDERERS) - {"jinja"})


def user(content: str) -> Message:
    return Message(role="user", content=content)


def assistant(content: str) -> Message:
    return Message(role="assistant", content=content)


def b(text: str) -> list[int]:
    return list(text.encode("utf-8"))


HI_YO = [user("Hi"), assistant("Yo")]
CONVERSATION = [
    Message(role="system", content="Be brief."),
    user("Q1"),
    assistant("A1"),
    user("Q2"),
    assistant("A2"),
]


# --- exact tokens and weights -------------------------------------------------------------------


def test_chatml_exact_tokens_and_weights() -> None:
    example = ChatMLRenderer(BYTES).build_supervised_example(HI_YO)
    assert example.tokens == (
        IM_START, 117, 115, 101, 114, 10, 72, 105, IM_END,  # <|im_start|>user\nHi<|im_end|>
        10, IM_START, 97, 115, 115, 105, 115, 116, 97, 110, 116, 10,  # \n<|im_start|>assistant\n
        89, 111, IM_END,  # Yo<|im_end|>
    )  # fmt: skip
    assert example.weights == (0.0,) * 21 + (1.0,) * 3
    assert example.num_loss_tokens == 3


def test_llama3_exact_tokens_and_weights() -> None:
    example = Llama3Renderer(BYTES).build_supervised_example(HI_YO)
    expected = [
        *[BEGIN_OF_TEXT, START_HEADER, *b("user"), END_HEADER, *b("\n\nHi"), EOT],
        *[START_HEADER, *b("assistant"), END_HEADER, *b("\n\n")],
        *[*b("Yo"), EOT],
    ]
    assert list(example.tokens) == expected
    assert example.weights == (0.0,) * (len(expected) - 3) + (1.0,) * 3


def test_role_colon_exact_tokens_and_weights() -> None:
    example = RoleColonRenderer(BYTES).build_supervised_example(HI_YO)
    prompt = [BOS, *b("User:"), *b(" Hi\n\n"), *b("Assistant:")]
    completion = [*b(" Yo\n\n"), *b("User:")]  # the stop overlap "User:" is trained
    assert list(example.tokens) == prompt + completion
    assert example.weights == (0.0,) * len(prompt) + (1.0,) * len(completion)


def test_role_colon_without_bos_token() -> None:
    tokenizer = ByteTokenizer(bos_token=None)
    example = RoleColonRenderer(tokenizer).build_supervised_example(HI_YO)
    assert list(example.tokens[:5]) == b("User:")


def test_next_token_shift_moves_weights_with_targets() -> None:
    example = ChatMLRenderer(BYTES).build_supervised_example(HI_YO)
    shifted = example.to_next_token_example()
    assert shifted.input_tokens == example.tokens[:-1]
    assert shifted.target_tokens == example.tokens[1:]
    assert shifted.weights == (0.0,) * 20 + (1.0,) * 3
    # the trained targets are "Yo<|im_end|>", predicted from "\n", "Y", "o"
    columns = zip(shifted.input_tokens, shifted.target_tokens, shifted.weights, strict=True)
    trained = [(i, t) for i, t, w in columns if w]
    assert trained == [(10, 89), (89, 111), (111, IM_END)]


def test_next_token_shift_truncation_and_mean_reduction() -> None:
    example = SupervisedExample(tokens=(1, 2, 3, 4, 5), weights=(0.0, 0.0, 1.0, 1.0, 1.0))
    assert example.to_next_token_example(max_length=4) == example.to_next_token_example(
        max_length=4, reduction="none"
    )
    truncated = example.to_next_token_example(max_length=4)
    assert truncated.input_tokens == (1, 2, 3)
    assert truncated.target_tokens == (2, 3, 4)
    assert truncated.weights == (0.0, 1.0, 1.0)
    mean = example.to_next_token_example(reduction="mean")
    assert mean.weights == pytest.approx((0.0, 1 / 3, 1 / 3, 1 / 3))
    assert example.to_next_token_example(max_length=100).target_tokens == (2, 3, 4, 5)
    # truncation that removes every trained token leaves all-zero weights, even with "mean"
    assert example.to_next_token_example(max_length=2, reduction="mean").weights == (0.0,)


def test_next_token_shift_errors() -> None:
    example = SupervisedExample(tokens=(1, 2), weights=(0.0, 1.0))
    with pytest.raises(TrainingInputError, match="max_length"):
        example.to_next_token_example(max_length=1)
    with pytest.raises(TrainingInputError, match="reduction"):
        example.to_next_token_example(reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(RenderError, match="at least 2 tokens"):
        SupervisedExample(tokens=(1,), weights=(1.0,)).to_next_token_example()
    with pytest.raises(RenderError, match="differ in length"):
        SupervisedExample(tokens=(1, 2), weights=(1.0,))


# --- train_on_what ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train_on_what", "spans"),
    [
        (TrainOnWhat.LAST_ASSISTANT_MESSAGE, ["A2<|im_end|>"]),
        (TrainOnWhat.LAST_ASSISTANT_TURN, ["A2<|im_end|>"]),
        (TrainOnWhat.ALL_ASSISTANT_MESSAGES, ["A1<|im_end|>", "A2<|im_end|>"]),
        (
            TrainOnWhat.ALL_MESSAGES,
            ["Be brief.<|im_end|>", "Q1<|im_end|>", "A1<|im_end|>", "Q2<|im_end|>", "A2<|im_end|>"],
        ),
        (
            TrainOnWhat.ALL_TOKENS,
            [
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
                "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
                "<|im_start|>assistant\nA2<|im_end|>"
            ],
        ),
        (
            TrainOnWhat.ALL_USER_AND_SYSTEM_MESSAGES,
            ["Be brief.<|im_end|>", "Q1<|im_end|>", "Q2<|im_end|>"],
        ),
    ],
)
def test_train_on_what_chatml(train_on_what: TrainOnWhat, spans: list[str]) -> None:
    example = ChatMLRenderer(BYTES).build_supervised_example(CONVERSATION, train_on_what)
    assert trained_spans(BYTES, example) == spans


def test_train_on_what_accepts_strings() -> None:
    renderer = ChatMLRenderer(BYTES)
    assert renderer.build_supervised_example(
        CONVERSATION,
        "all_assistant_messages",  # type: ignore[arg-type]
    ) == renderer.build_supervised_example(CONVERSATION, TrainOnWhat.ALL_ASSISTANT_MESSAGES)


def test_customized_uses_trainable_flags() -> None:
    flags = [False, False, True, True, False]
    messages = [
        Message(role=m.role, content=m.content, trainable=f)
        for m, f in zip(CONVERSATION, flags, strict=True)
    ]
    example = ChatMLRenderer(BYTES).build_supervised_example(messages, TrainOnWhat.CUSTOMIZED)
    assert trained_spans(BYTES, example) == ["A1<|im_end|>", "Q2<|im_end|>"]


def test_last_assistant_message_drops_trailing_messages() -> None:
    renderer = ChatMLRenderer(BYTES)
    with_trailing = renderer.build_supervised_example([*CONVERSATION, user("Q3")])
    assert with_trailing == renderer.build_supervised_example(CONVERSATION)


def test_last_assistant_turn_covers_every_assistant_message_after_the_last_user() -> None:
    messages = [user("Q"), assistant("A1"), Message(role="tool", content="T"), assistant("A2")]
    example = ChatMLRenderer(BYTES).build_supervised_example(
        messages, TrainOnWhat.LAST_ASSISTANT_TURN
    )
    assert trained_spans(BYTES, example) == ["A1<|im_end|>", "A2<|im_end|>"]


def test_role_colon_trains_the_stop_overlap_of_the_last_message_only() -> None:
    example = RoleColonRenderer(BYTES).build_supervised_example(
        CONVERSATION, TrainOnWhat.ALL_ASSISTANT_MESSAGES
    )
    assert trained_spans(BYTES, example) == [" A1\n\n", " A2\n\nUser:"]


def test_llama3_all_tokens_trains_everything_but_bos() -> None:
    example = Llama3Renderer(BYTES).build_supervised_example(CONVERSATION, TrainOnWhat.ALL_TOKENS)
    assert example.tokens[0] == BEGIN_OF_TEXT
    assert example.weights == (0.0,) + (1.0,) * (len(example.tokens) - 1)


def test_prompt_completion_example_trains_the_completion_only() -> None:
    renderer = ChatMLRenderer(BYTES)
    example = renderer.build_prompt_completion_example(
        CONVERSATION[:2], [assistant("A"), user("U"), assistant("B")]
    )
    assert trained_spans(BYTES, example) == [
        "A<|im_end|>",
        "U<|im_end|>",
        "B<|im_end|>",
    ]
    with pytest.raises(RenderError, match="completion has no message"):
        renderer.build_prompt_completion_example(CONVERSATION, [])


def test_text_completion_example() -> None:
    example = build_text_completion_example(BYTES, "2+2=", "4")
    assert example.tokens == (BOS, 50, 43, 50, 61, 52, EOS)
    assert example.weights == (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0)
    bare = build_text_completion_example(BYTES, "a", "b", add_bos=False, add_eos=False)
    assert bare.tokens == (97, 98)
    assert bare.weights == (0.0, 1.0)
    with pytest.raises(RenderError, match="no BOS"):
        build_text_completion_example(ByteTokenizer(bos_token=None), "a", "b")
    with pytest.raises(RenderError, match="nothing to train"):
        build_text_completion_example(BYTES, "a", "", add_eos=False)


# --- generation prompts and the extension property ----------------------------------------------


@pytest.mark.parametrize("name", FAMILY_RENDERERS)
@pytest.mark.parametrize("tokenizer_name", ["bytes", "bpe"])
def test_generation_prompt_is_a_prefix_of_the_training_example(
    name: str, tokenizer_name: str
) -> None:
    tokenizer = BYTES if tokenizer_name == "bytes" else default_bpe_tokenizer()
    renderer = get_renderer(name, tokenizer)
    full = renderer.build_supervised_example(CONVERSATION, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    for index, message in enumerate(CONVERSATION):
        if message.role != "assistant":
            continue
        prompt = renderer.build_generation_prompt(CONVERSATION[:index])
        assert list(full.tokens[: len(prompt)]) == prompt
        # the first trained token of this turn comes right after the prompt
        assert full.weights[len(prompt) - 1] == 0.0
        assert full.weights[len(prompt)] == 1.0
    assert renderer.has_extension_property


def test_generation_prompt_exact_with_prefill() -> None:
    prompt = ChatMLRenderer(BYTES).build_generation_prompt([user("Hi")], prefill="The")
    assert prompt == [IM_START, *b("user\nHi"), IM_END, 10, IM_START, *b("assistant\n"), *b("The")]
    role_colon = RoleColonRenderer(BYTES).build_generation_prompt([user("Hi")])
    assert role_colon == [BOS, *b("User: Hi\n\nAssistant:")]


def test_stop_sequences() -> None:
    assert ChatMLRenderer(BYTES).stop_sequences() == [IM_END]
    assert Llama3Renderer(BYTES).stop_sequences() == [EOT]
    assert RoleColonRenderer(BYTES).stop_sequences() == ["\n\nUser:"]


# --- parsing sampled completions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "content", "termination"),
    [
        ("4<|im_end|>", "4", ParseTermination.STOP_SEQUENCE),
        ("4<|im_end|>\n<|im_start|>", "4", ParseTermination.STOP_SEQUENCE),
        ("4 and", "4 and", ParseTermination.MALFORMED),
        ("4<|eos|>", "4", ParseTermination.EOS),
        ("4<|im_end|>5<|im_end|>", "4", ParseTermination.MALFORMED),
        (" 4 \n", " 4 \n", ParseTermination.MALFORMED),
    ],
)
def test_chatml_parse_response(
    completion: str, content: str, termination: ParseTermination
) -> None:
    parsed = ChatMLRenderer(BYTES).parse_response(BYTES.encode(completion))
    assert parsed.message == assistant(content)
    assert parsed.termination is termination
    assert parsed.termination.is_clean == (termination is not ParseTermination.MALFORMED)


def test_llama3_parse_response() -> None:
    renderer = Llama3Renderer(BYTES)
    parsed = renderer.parse_response(BYTES.encode("12<|eot_id|>"))
    assert (parsed.message.content, parsed.termination) == ("12", ParseTermination.STOP_SEQUENCE)
    truncated = renderer.parse_response(BYTES.encode("12<|im_end|>"))
    assert truncated.termination is ParseTermination.MALFORMED


@pytest.mark.parametrize(
    ("completion", "content", "termination"),
    [
        (" 4\n\nUser:", "4", ParseTermination.STOP_SEQUENCE),
        (" 4", "4", ParseTermination.MALFORMED),
        (" 4<|eos|>", "4", ParseTermination.EOS),
        (" 4\n\nUser:<|eos|>", "4", ParseTermination.MALFORMED),
        (" 4\n\nUser: x\n\nUser:", "4", ParseTermination.MALFORMED),
    ],
)
def test_role_colon_parse_response(
    completion: str, content: str, termination: ParseTermination
) -> None:
    parsed = RoleColonRenderer(BYTES).parse_response(BYTES.encode(completion))
    assert parsed.message == assistant(content)
    assert parsed.termination is termination


@pytest.mark.parametrize("name", FAMILY_RENDERERS)
def test_rendered_assistant_turn_parses_back(name: str) -> None:
    tokenizer = default_bpe_tokenizer()
    renderer = get_renderer(name, tokenizer)
    messages = [user("What is 3 + 4?"), assistant("It is 7.")]
    prompt = renderer.build_generation_prompt(messages[:1])
    full = renderer.build_supervised_example(messages)
    parsed = renderer.parse_response(list(full.tokens[len(prompt) :]))
    assert parsed.message == messages[1]
    assert parsed.termination is ParseTermination.STOP_SEQUENCE


# --- errors -------------------------------------------------------------------------------------


def test_unknown_renderer_name() -> None:
    with pytest.raises(RenderError, match="unknown renderer 'qwen9'"):
        get_renderer("qwen9", BYTES)
    assert {name: cls.name for name, cls in RENDERERS.items()} == {
        "chatml": "chatml",
        "llama3": "llama3",
        "role_colon": "role_colon",
        "qwen3": "qwen3",
        "qwen3_disable_thinking": "qwen3_disable_thinking",
        "jinja": "jinja",
    }


def test_renderer_checks_the_tokenizer_has_its_special_tokens() -> None:
    plain = ByteTokenizer(special_tokens=("<|bos|>", "<|eos|>"))
    with pytest.raises(RenderError, match="<\\|begin_of_text\\|>"):
        Llama3Renderer(plain)
    with pytest.raises(RenderError, match="<\\|im_start\\|>"):
        ChatMLRenderer(plain)
    assert isinstance(RoleColonRenderer(plain), Renderer)


@pytest.mark.parametrize(
    ("messages", "train_on_what", "match"),
    [
        ([], TrainOnWhat.ALL_MESSAGES, "empty conversation"),
        ([Message(role="a b", content="x")], TrainOnWhat.ALL_MESSAGES, "message 0: role"),
        ([user("x")], TrainOnWhat.LAST_ASSISTANT_MESSAGE, "no assistant message"),
        ([user("x")], TrainOnWhat.ALL_ASSISTANT_MESSAGES, "selects no token"),
        ([*HI_YO, user("?")], TrainOnWhat.LAST_ASSISTANT_TURN, "selects no token"),
        (
            [user("x"), Message(role="assistant", content="y", trainable=True)],
            TrainOnWhat.LAST_ASSISTANT_MESSAGE,
            "message 1: 'trainable' is set",
        ),
        (
            [Message(role="user", content="x", trainable=False), assistant("y")],
            TrainOnWhat.CUSTOMIZED,
            "message 1: train_on_what=customized needs 'trainable'",
        ),
    ],
)
def test_build_supervised_example_errors(
    messages: list[Message], train_on_what: TrainOnWhat, match: str
) -> None:
    with pytest.raises(RenderError, match=match):
        ChatMLRenderer(BYTES).build_supervised_example(messages, train_on_what)


def test_content_must_be_text() -> None:
    bad = Message(role="user", content=["not", "text"])  # type: ignore[arg-type]
    with pytest.raises(RenderError, match="message 0: content must be a string"):
        RoleColonRenderer(BYTES).build_generation_prompt([bad])
    with pytest.raises(RenderError, match="message 1: role"):
        RoleColonRenderer(BYTES).build_generation_prompt([user("x")], role="")


def test_unknown_train_on_what() -> None:
    with pytest.raises(RenderError, match="unknown train_on_what 'everything'"):
        ChatMLRenderer(BYTES).build_supervised_example(HI_YO, "everything")  # type: ignore[arg-type]


# --- Qwen3: thinking blocks, and thinking disabled ------------------------------------------------

THINKING = [user("What is 2+2?"), assistant("<think>add them</think>4")]


def test_qwen3_exact_tokens_and_weights_with_a_thinking_block() -> None:
    # Qwen3's template frames the block as "<think>\n{reasoning}\n</think>\n\n{answer}".
    example = Qwen3Renderer(BYTES).build_supervised_example(THINKING)
    output = [*b("<think>\nadd them\n</think>\n\n4"), IM_END]
    assert example.tokens == (
        IM_START, *b("user\nWhat is 2+2?"), IM_END,
        *b("\n"), IM_START, *b("assistant\n"),
        *output,
    )  # fmt: skip
    assert example.weights == (0.0,) * (len(example.tokens) - len(output)) + (1.0,) * len(output)
    assert BYTES.decode(list(example.tokens)) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>"
    )


@pytest.mark.parametrize(
    ("content", "rendered"),
    [
        # No reasoning: the template still opens an empty block.
        ("4", "<think>\n\n</think>\n\n4"),
        # Newlines around the reasoning and before the answer are framing, normalized.
        ("<think>\n\nadd\n</think>\n4", "<think>\nadd\n</think>\n\n4"),
        ("<think></think>4", "<think>\n\n</think>\n\n4"),
    ],
)
def test_qwen3_frames_every_assistant_reply_as_the_template_does(
    content: str, rendered: str
) -> None:
    example = Qwen3Renderer(BYTES).build_supervised_example([user("Q"), assistant(content)])
    assert trained_spans(BYTES, example) == [rendered + "<|im_end|>"]


def test_qwen3_keeps_thinking_in_the_history_so_turns_extend() -> None:
    renderer = Qwen3Renderer(BYTES)
    conversation = [*THINKING, user("And 3+3?"), assistant("<think>again</think>6")]
    example = renderer.build_supervised_example(conversation, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    assert trained_spans(BYTES, example) == [
        "<think>\nadd them\n</think>\n\n4<|im_end|>",
        "<think>\nagain\n</think>\n\n6<|im_end|>",
    ]
    prompt = renderer.build_generation_prompt(conversation[:3])
    assert BYTES.decode(prompt).endswith(
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert list(example.tokens[: len(prompt)]) == prompt


def test_qwen3_disable_thinking_exact_tokens_and_weights() -> None:
    # enable_thinking=False: an empty block after the assistant header, not trained on.
    renderer = Qwen3DisableThinkingRenderer(BYTES)
    example = renderer.build_supervised_example(HI_YO)
    assert example.tokens == (
        IM_START, *b("user\nHi"), IM_END,
        *b("\n"), IM_START, *b("assistant\n<think>\n\n</think>\n\n"),
        *b("Yo"), IM_END,
    )  # fmt: skip
    assert trained_spans(BYTES, example) == ["Yo<|im_end|>"]
    prompt = renderer.build_generation_prompt([user("Hi")])
    assert BYTES.decode(prompt) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    with pytest.raises(RenderError, match="thinking is disabled"):
        renderer.build_supervised_example([user("Q"), assistant("<think>x</think>y")])


@pytest.mark.parametrize(
    ("completion", "content", "termination"),
    [
        ("<think>\nadd\n</think>\n\n4<|im_end|>", "<think>add</think>4", "stop_sequence"),
        ("<think>\n\n</think>\n\n4<|im_end|>", "4", "stop_sequence"),
        ("<think>\nstill thinking", "<think>\nstill thinking", "malformed"),
    ],
)
def test_qwen3_parse_response_unframes_the_thinking_block(
    completion: str, content: str, termination: str
) -> None:
    parsed = Qwen3Renderer(BYTES).parse_response(BYTES.encode(completion))
    assert parsed.message == assistant(content)
    assert parsed.termination is ParseTermination(termination)


def test_split_thinking() -> None:
    assert split_thinking("<think>\nr\n</think>\n\na") == ("r", "a")
    assert split_thinking("<think></think>a") == ("", "a")
    assert split_thinking("just an answer") == (None, "just an answer")
