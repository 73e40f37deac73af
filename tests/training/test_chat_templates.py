"""Hugging Face tokenizers and chat templates: our renderers against the models' own templates.

Every model directory here is written by the test: a byte-level BPE ``tokenizer.json`` trained
with ``tokenizers`` on a few sentences, carrying each family's special tokens, and a
``tokenizer_config.json`` with the family's real chat template (``_chat_templates.py``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from _chat_templates import LLAMA_3, LLAMA_3_2, MISTRAL, QWEN_2_5, QWEN_3, SMOLLM2
from _spans import trained_spans

from crucible_kitchen.errors import ChatTemplateError, RenderError, TokenizerFileError
from crucible_kitchen.training import (
    SPECIAL_TOKENS,
    ChatMLRenderer,
    ChatTemplate,
    HfTokenizer,
    JinjaRenderer,
    Llama3Renderer,
    Message,
    ParseTermination,
    Qwen3DisableThinkingRenderer,
    Qwen3Renderer,
    TrainOnWhat,
    load_hf_tokenizer,
    renderer_for_chat_template,
    train_bpe_tokenizer,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

# the byte tokenizer's special tokens (Llama 3's and ChatML's among them), and Qwen's and Mistral's
SPECIAL = (*SPECIAL_TOKENS, "<|endoftext|>", "<s>", "</s>")
CORPUS = [
    "You are a helpful assistant. Be brief.",
    "What is the capital of France? Paris is the capital of France.",
    "Cutting Knowledge Date: December 2023. Today Date: 26 Jul 2024.",
    "system user assistant think reasoning answer question",
    "Add the numbers: 2 + 2 = 4, 3 + 4 = 7. Thank you!",
] * 4

# Each family: its template and tokenizer_config.json special tokens, as the models ship them.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": {
        "chat_template": LLAMA_3,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "llama3.2": {
        "chat_template": LLAMA_3_2,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "qwen2.5": {
        "chat_template": QWEN_2_5,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    },
    "qwen3": {
        "chat_template": QWEN_3,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    },
    "smollm2": {
        "chat_template": SMOLLM2,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
    },
    "mistral": {"chat_template": MISTRAL, "bos_token": "<s>", "eos_token": "</s>"},
}
DATE = "26 Jul 2024"  # Llama 3.2's template reads date_string before strftime_now


def system(content: str) -> Message:
    return Message(role="system", content=content)


def user(content: str) -> Message:
    return Message(role="user", content=content)


def assistant(content: str) -> Message:
    return Message(role="assistant", content=content)


CONVERSATION = [
    system("Be brief."),
    user("What is 2 + 2?"),
    assistant("It is 4."),
    user("And 3 + 4?"),
    assistant("7, thank you!"),
]


def write_model_dir(path: Path, family: str, **overrides: Any) -> Path:
    """A model directory's tokenizer files: tokenizer.json and tokenizer_config.json."""
    from tokenizers import AddedToken

    tokenizer = train_bpe_tokenizer(
        CORPUS, vocab_size=400, special_tokens=SPECIAL, bos_token=None, eos_token=None
    )
    # Qwen3's thinking markers are added tokens that are not special
    tokenizer.backend.add_tokens([AddedToken(t, normalized=False) for t in ("<think>", "</think>")])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.backend.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **FAMILIES[family], **overrides}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tokenizers_of(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HfTokenizer]:
    root = tmp_path_factory.mktemp("models")
    return {
        family: load_hf_tokenizer(write_model_dir(root / family, family)) for family in FAMILIES
    }


def template_tokens(
    tokenizer: HfTokenizer,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    **variables: Any,
) -> list[int]:
    """What apply_chat_template(tokenize=True) gives: the rendered text, encoded whole."""
    assert tokenizer.chat_template is not None
    template = ChatTemplate(
        tokenizer.chat_template,
        special_tokens={"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token},
    )
    rendered = template.render(
        [{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
    return tokenizer.encode(rendered)


# --- the tokenizer -----------------------------------------------------------------------------


def test_hf_tokenizer_round_trips_and_reads_its_special_tokens(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    llama, qwen3 = tokenizers_of["llama3"], tokenizers_of["qwen3"]
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHé, 2 + 2?<|eot_id|>"
    ids = llama.encode(text)
    assert llama.decode(ids) == text
    assert ids[:2] == [llama.special_token_id(t) for t in SPECIAL[3:5]]
    assert llama.encode("Paris") == llama.backend.encode("Paris", add_special_tokens=False).ids
    assert (llama.bos_token_id, llama.eos_token_id) == (3, 6)  # trained in SPECIAL's order
    assert (llama.bos_token, llama.eos_token, llama.pad_token_id) == (
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
    )
    assert (qwen3.bos_token_id, qwen3.eos_token_id, qwen3.pad_token_id) == (None, 8, 9)
    assert qwen3.chat_template == QWEN_3
    # <think> is one added token, but not a special one
    assert len(qwen3.encode("<think>")) == 1
    assert qwen3.special_token_id("<think>") is None
    assert qwen3.special_token_id("<|im_start|>") == 7
    assert qwen3.vocab_size == llama.vocab_size == len(qwen3.backend.get_vocab())


def test_tokenizer_json_alone_and_other_template_forms(tmp_path: Path) -> None:
    bare = write_model_dir(tmp_path / "bare", "mistral")
    (bare / "tokenizer_config.json").unlink()
    alone = load_hf_tokenizer(bare / "tokenizer.json")
    assert (alone.bos_token_id, alone.eos_token_id, alone.chat_template) == (None, None, None)

    listed = write_model_dir(
        tmp_path / "listed",
        "mistral",
        chat_template=[{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}],
    )
    assert load_hf_tokenizer(listed).chat_template == "y"

    separate = write_model_dir(tmp_path / "separate", "mistral", chat_template=None)
    (separate / "chat_template.jinja").write_text(MISTRAL)
    loaded = load_hf_tokenizer(separate)
    assert (loaded.chat_template, loaded.bos_token, loaded.eos_token) == (MISTRAL, "<s>", "</s>")
    token_object = {"content": "<s>", "special": True, "lstrip": False}
    as_object = write_model_dir(tmp_path / "object", "mistral", bos_token=token_object)
    assert load_hf_tokenizer(as_object).bos_token == "<s>"


def test_added_tokens_decoder_adds_and_marks_tokens(tmp_path: Path) -> None:
    base = load_hf_tokenizer(write_model_dir(tmp_path / "base", "qwen3"))
    think, extra = base.backend.token_to_id("<think>"), base.vocab_size
    added = {
        str(think): {"content": "<think>", "special": True},
        str(extra): {"content": "<|extra|>", "special": True, "normalized": False},
        "0": {"content": SPECIAL[0], "special": True},  # as tokenizer.json has it already
    }
    model = write_model_dir(tmp_path / "model", "qwen3", added_tokens_decoder=added)
    tokenizer = load_hf_tokenizer(model)
    assert tokenizer.special_token_id("<think>") == think
    assert tokenizer.special_token_id("<|extra|>") == extra
    assert tokenizer.encode("a<|extra|>") == [*tokenizer.encode("a"), extra]
    assert tokenizer.vocab_size == base.vocab_size + 1
    wrong = {str(extra + 5): {"content": "<|extra|>", "special": True}}
    model = write_model_dir(tmp_path / "wrong", "qwen3", added_tokens_decoder=wrong)
    message = rf"'<\|extra\|>' has id {extra} in tokenizer\.json, not {extra + 5}"
    with pytest.raises(TokenizerFileError, match=message) as caught:
        load_hf_tokenizer(model)
    assert caught.value.path == str(model / "tokenizer_config.json")
    bad = write_model_dir(tmp_path / "bad", "qwen3", added_tokens_decoder={"x": {}})
    with pytest.raises(TokenizerFileError, match="entry 'x' is not a token"):
        load_hf_tokenizer(bad)


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        ("no tokenizer.json", "tokenizer.json", "no such file"),
        ("no tokenizer_config.json", "tokenizer_config.json", "no such file"),
        ("junk tokenizer.json", "tokenizer.json", "not a valid tokenizer.json"),
        ("truncated tokenizer.json", "tokenizer.json", "not a valid tokenizer.json"),
        ("junk tokenizer_config.json", "tokenizer_config.json", "not valid JSON"),
        ("list tokenizer_config.json", "tokenizer_config.json", "not a JSON object"),
        ("unknown eos_token", "tokenizer_config.json", "'<eos>' is not a special token"),
        ("numeric bos_token", "tokenizer_config.json", "bos_token must be a string"),
        ("bad chat_template", "tokenizer_config.json", "chat_template must be a string"),
    ],
)
def test_bad_tokenizer_files_are_typed_errors_naming_the_file(
    tmp_path: Path, damage: str, file: str, message: str
) -> None:
    model = write_model_dir(tmp_path / "model", "llama3")
    tokenizer_json, config_json = model / "tokenizer.json", model / "tokenizer_config.json"
    config = json.loads(config_json.read_text())
    if damage == "no tokenizer.json":
        tokenizer_json.unlink()
    elif damage == "no tokenizer_config.json":
        config_json.unlink()
    elif damage == "junk tokenizer.json":
        tokenizer_json.write_text("not json at all")
    elif damage == "truncated tokenizer.json":
        tokenizer_json.write_text(tokenizer_json.read_text()[:500])
    elif damage == "junk tokenizer_config.json":
        config_json.write_text("{oops")
    elif damage == "list tokenizer_config.json":
        config_json.write_text("[]")
    else:
        key, value = {
            "unknown eos_token": ("eos_token", "<eos>"),
            "numeric bos_token": ("bos_token", 7),
            "bad chat_template": ("chat_template", {"default": "x"}),
        }[damage]
        config_json.write_text(json.dumps({**config, key: value}))
    with pytest.raises(TokenizerFileError, match=message) as caught:
        load_hf_tokenizer(model)
    assert caught.value.path == str(model / file)
    assert str(model / file) in str(caught.value)


# --- our renderers against the models' templates --------------------------------------------


def test_llama3_renderer_matches_llama_3_template_token_for_token(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    tokenizer = tokenizers_of["llama3"]
    renderer = Llama3Renderer(tokenizer)
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        ours = renderer.build_supervised_example(conversation, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
        assert list(ours.tokens) == template_tokens(
            tokenizer, conversation, add_generation_prompt=False
        )
        for end in range(1, len(conversation) + 1):
            if conversation[end - 1].role == "assistant":
                continue
            assert renderer.build_generation_prompt(conversation[:end]) == template_tokens(
                tokenizer, conversation[:end], add_generation_prompt=True
            )


def test_llama3_renderer_matches_llama_3_2_template_given_its_system_header(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    """Llama 3.1+ templates always open with a system message holding the knowledge cutoff and
    the date: the llama3 renderer matches them when the conversation's system message does."""
    tokenizer = tokenizers_of["llama3.2"]
    renderer = Llama3Renderer(tokenizer)
    header = f"Cutting Knowledge Date: December 2023\nToday Date: {DATE}\n\n"
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        given = conversation[0].content if conversation[0].role == "system" else ""
        dated = [system(header + given), *conversation[1 if given else 0 :]]
        ours = renderer.build_supervised_example(dated, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
        assert list(ours.tokens) == template_tokens(
            tokenizer, conversation, add_generation_prompt=False, date_string=DATE
        )
        assert renderer.build_generation_prompt(dated[:-1]) == template_tokens(
            tokenizer, conversation[:-1], add_generation_prompt=True, date_string=DATE
        )


@pytest.mark.parametrize(
    ("family", "default_system"),
    [
        ("qwen2.5", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        ("smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ],
)
def test_chatml_renderer_matches_qwen2_5_and_smollm2_templates(
    tokenizers_of: dict[str, HfTokenizer], family: str, default_system: str
) -> None:
    """Token for token, but for the newline the templates write after the last turn (the
    model never writes it: sampling stops at <|im_end|>), and the default system prompt they
    add to a conversation without one."""
    tokenizer = tokenizers_of[family]
    renderer = ChatMLRenderer(tokenizer)
    newline = tokenizer.encode("\n")
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        has_system = conversation[0].role == "system"
        with_system = ([] if has_system else [system(default_system)]) + conversation
        ours = renderer.build_supervised_example(with_system, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
        assert list(ours.tokens) + newline == template_tokens(
            tokenizer, conversation, add_generation_prompt=False
        )
        for end in (2, 4):
            assert renderer.build_generation_prompt(with_system[:end]) == template_tokens(
                tokenizer, with_system[:end], add_generation_prompt=True
            )


QWEN3_SINGLE_TURNS = [
    [system("Be brief."), user("What is 2 + 2?"), assistant("<think>\nadd them\n</think>\n\n4")],
    [user("What is 2 + 2?"), assistant("<think>add them</think>4")],
    [user("What is 2 + 2?"), assistant("4")],
]


@pytest.mark.parametrize("conversation", QWEN3_SINGLE_TURNS)
def test_qwen3_renderers_match_the_qwen3_template_on_a_turn(
    tokenizers_of: dict[str, HfTokenizer], conversation: list[Message]
) -> None:
    tokenizer = tokenizers_of["qwen3"]
    newline = tokenizer.encode("\n")
    thinking = Qwen3Renderer(tokenizer)
    ours = thinking.build_supervised_example(conversation)
    assert list(ours.tokens) + newline == template_tokens(
        tokenizer, conversation, add_generation_prompt=False
    )
    assert thinking.build_generation_prompt(conversation[:-1]) == template_tokens(
        tokenizer, conversation[:-1], add_generation_prompt=True
    )
    if "</think>" in conversation[-1].content:
        return
    quiet = Qwen3DisableThinkingRenderer(tokenizer)
    ours = quiet.build_supervised_example(conversation)
    assert list(ours.tokens) + newline == template_tokens(
        tokenizer, conversation, add_generation_prompt=False, enable_thinking=False
    )
    assert quiet.build_generation_prompt(conversation[:-1]) == template_tokens(
        tokenizer, conversation[:-1], add_generation_prompt=True, enable_thinking=False
    )


def test_qwen3_renderer_keeps_the_thinking_blocks_the_template_drops_from_history(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    """The one difference on multi-turn conversations, and on purpose (prefix-stable turns)."""
    tokenizer = tokenizers_of["qwen3"]
    renderer = Qwen3Renderer(tokenizer)
    history = [*CONVERSATION[:2], assistant("<think>add</think>It is 4."), CONVERSATION[3]]
    ours = tokenizer.decode(renderer.build_generation_prompt(history))
    theirs = tokenizer.decode(template_tokens(tokenizer, history, add_generation_prompt=True))
    assert ours != theirs
    assert ours.replace("<think>\nadd\n</think>\n\n", "") == theirs


# --- the jinja renderer ------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"qwen3"}))
def test_jinja_renderer_is_the_template_token_for_token(
    tokenizers_of: dict[str, HfTokenizer], family: str
) -> None:
    tokenizer = tokenizers_of[family]
    renderer = JinjaRenderer(tokenizer, date_string=DATE)
    example = renderer.build_supervised_example(CONVERSATION, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    # all of the template's tokens but the newline ChatML templates write after the last turn
    after_last_turn = (
        tokenizer.encode("\n") if "<|im_start|>" in str(tokenizer.chat_template) else []
    )
    assert list(example.tokens) + after_last_turn == template_tokens(
        tokenizer, CONVERSATION, add_generation_prompt=False, date_string=DATE
    )
    for end in (2, 4):
        prompt = renderer.build_generation_prompt(CONVERSATION[:end])
        assert prompt == template_tokens(
            tokenizer, CONVERSATION[:end], add_generation_prompt=True, date_string=DATE
        )
        assert list(example.tokens[: len(prompt)]) == prompt


@pytest.mark.parametrize(
    ("family", "what", "spans"),
    [
        ("qwen2.5", "all_assistant_messages", ["It is 4.<|im_end|>", "7, thank you!<|im_end|>"]),
        ("qwen2.5", "last_assistant_message", ["7, thank you!<|im_end|>"]),
        (
            "qwen2.5",
            "all_messages",
            [
                "Be brief.<|im_end|>",
                "What is 2 + 2?<|im_end|>",
                "It is 4.<|im_end|>",
                "And 3 + 4?<|im_end|>",
                "7, thank you!<|im_end|>",
            ],
        ),
        (
            "qwen2.5",
            "all_user_and_system_messages",
            ["Be brief.<|im_end|>", "What is 2 + 2?<|im_end|>", "And 3 + 4?<|im_end|>"],
        ),
        ("llama3.2", "last_assistant_turn", ["7, thank you!<|eot_id|>"]),
        ("mistral", "all_assistant_messages", [" It is 4.</s>", " 7, thank you!</s>"]),
        (
            "mistral",
            "all_user_and_system_messages",
            ["What is 2 + 2? [/INST]", "And 3 + 4? [/INST]"],
        ),
    ],
)
def test_jinja_renderer_masks(
    tokenizers_of: dict[str, HfTokenizer], family: str, what: str, spans: list[str]
) -> None:
    tokenizer = tokenizers_of[family]
    example = JinjaRenderer(tokenizer, date_string=DATE).build_supervised_example(
        CONVERSATION, TrainOnWhat(what)
    )
    assert trained_spans(tokenizer, example) == spans


def test_jinja_renderer_trains_every_token_but_bos_with_all_tokens(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    for family in ("llama3.2", "smollm2", "qwen2.5"):
        tokenizer = tokenizers_of[family]
        example = JinjaRenderer(tokenizer, date_string=DATE).build_supervised_example(
            CONVERSATION, TrainOnWhat.ALL_TOKENS
        )
        bos = tokenizer.bos_token_id
        starts_with_bos = bos is not None and example.tokens[0] == bos
        assert example.weights == (0.0,) * starts_with_bos + (1.0,) * (
            len(example.tokens) - starts_with_bos
        )


def test_jinja_renderer_trains_customized_messages_and_the_default_system_prompt_is_a_header(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    tokenizer = tokenizers_of["smollm2"]
    renderer = JinjaRenderer(tokenizer)
    messages = [
        Message(role="user", content="user", trainable=True),
        Message(role="assistant", content="Hi", trainable=False),
    ]
    example = renderer.build_supervised_example(messages, TrainOnWhat.CUSTOMIZED)
    # the content equals the role's name: the last occurrence is the content
    assert trained_spans(tokenizer, example) == ["user<|im_end|>"]
    headers = renderer.build_supervised_example([user("Q"), assistant("A")])
    text = tokenizer.decode(list(headers.tokens))
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert trained_spans(tokenizer, headers) == ["A<|im_end|>"]


def test_jinja_renderer_stops_at_eos_and_parses_its_replies(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    tokenizer = tokenizers_of["mistral"]
    renderer = JinjaRenderer(tokenizer)
    assert renderer.stop_sequences() == [tokenizer.eos_token_id]
    assert not renderer.has_extension_property
    prompt = renderer.build_generation_prompt(CONVERSATION[1:2])
    full = renderer.build_supervised_example(CONVERSATION[1:3])
    parsed = renderer.parse_response(list(full.tokens[len(prompt) :]))
    assert parsed.message == assistant("It is 4.")
    assert parsed.termination is ParseTermination.STOP_SEQUENCE
    assert renderer.parse_response(tokenizer.encode("cut o")).termination is (
        ParseTermination.MALFORMED
    )
    with_prefill = renderer.build_generation_prompt(CONVERSATION[1:2], prefill="It")
    assert with_prefill == prompt + tokenizer.encode("It")


def test_qwen3_template_is_not_prefix_stable_over_several_turns(
    tokenizers_of: dict[str, HfTokenizer],
) -> None:
    tokenizer = tokenizers_of["qwen3"]
    renderer = JinjaRenderer(tokenizer)
    one_turn = renderer.build_supervised_example(QWEN3_SINGLE_TURNS[0])
    assert list(one_turn.tokens) + tokenizer.encode("\n") == template_tokens(
        tokenizer, QWEN3_SINGLE_TURNS[0], add_generation_prompt=False
    )
    with pytest.raises(ChatTemplateError, match="not prefix-stable: rendering message 3"):
        renderer.build_supervised_example(CONVERSATION)
    quiet = JinjaRenderer(tokenizer, enable_thinking=False)
    assert quiet.build_generation_prompt(CONVERSATION[:2]) == template_tokens(
        tokenizer, CONVERSATION[:2], add_generation_prompt=True, enable_thinking=False
    )
    with pytest.raises(ChatTemplateError, match="does not follow its generation prompt"):
        quiet.build_supervised_example(QWEN3_SINGLE_TURNS[0])


def test_template_failures_are_typed_errors(
    tokenizers_of: dict[str, HfTokenizer], tmp_path: Path
) -> None:
    mistral = JinjaRenderer(tokenizers_of["mistral"])
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        mistral.build_supervised_example([user("a"), user("b"), assistant("c")])
    with pytest.raises(RenderError, match="prompts only for assistant"):
        mistral.build_generation_prompt([user("a")], role="user")
    broken = write_model_dir(tmp_path / "broken", "mistral", chat_template="{% for m in %}")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        JinjaRenderer(load_hf_tokenizer(broken))
    bare = write_model_dir(tmp_path / "bare", "mistral", chat_template=None)
    with pytest.raises(RenderError, match="needs a Hugging Face tokenizer with a chat_template"):
        JinjaRenderer(load_hf_tokenizer(bare))
    sandboxed = write_model_dir(
        tmp_path / "sandboxed", "mistral", chat_template="{{ messages.__class__.__mro__ }}"
    )
    with pytest.raises(ChatTemplateError):
        JinjaRenderer(load_hf_tokenizer(sandboxed)).build_generation_prompt([user("a")])


def test_renderer_for_chat_template_picks_the_family() -> None:
    chosen = {
        name: renderer_for_chat_template(template)
        for name, template in [
            ("llama3", LLAMA_3),
            ("llama3.2", LLAMA_3_2),
            ("qwen2.5", QWEN_2_5),
            ("qwen3", QWEN_3),
            ("smollm2", SMOLLM2),
            ("mistral", MISTRAL),
            ("none", None),
        ]
    }
    assert chosen == {
        "llama3": "llama3",
        "llama3.2": "llama3",
        "qwen2.5": "chatml",
        "qwen3": "qwen3",
        "smollm2": "chatml",
        "mistral": "jinja",
        "none": "role_colon",
    }


# --- cross-check with transformers' own apply_chat_template (a test-only dependency) ---------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rendering_equals_transformers_apply_chat_template(tmp_path: Path, family: str) -> None:
    transformers = pytest.importorskip("transformers")
    model = write_model_dir(tmp_path / family, family)
    theirs = transformers.AutoTokenizer.from_pretrained(str(model))
    tokenizer = load_hf_tokenizer(model)
    conversations = [CONVERSATION[:2], CONVERSATION[1:4]]
    if family != "qwen3":
        conversations.append(CONVERSATION)
    for conversation in conversations:
        as_dicts = [{"role": m.role, "content": m.content} for m in conversation]
        for generation in (False, True):
            expected = theirs.apply_chat_template(
                as_dicts, tokenize=False, add_generation_prompt=generation, date_string=DATE
            )
            ours = JinjaRenderer(tokenizer, date_string=DATE).render_text(
                conversation, add_generation_prompt=generation
            )
            assert ours == expected
            assert tokenizer.encode(ours) == theirs.encode(expected, add_special_tokens=False)
