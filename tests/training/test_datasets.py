"""Bundled data: files equal their generators, answers are right, loaders report bad rows."""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from typing import TYPE_CHECKING

import msgspec
import pytest

from crucible_kitchen.errors import DataError
from crucible_kitchen.training import (
    CHAT_TASKS,
    ChatExample,
    Message,
    TrainOnWhat,
    arithmetic_reward,
    default_bpe_tokenizer,
    extract_integer_answer,
    generate_arithmetic_problems,
    generate_chat_examples,
    generate_preference_pairs,
    get_renderer,
    load_arithmetic_problems,
    load_chat_examples,
    load_preference_pairs,
)
from crucible_kitchen.training._corpus import bundled_corpus, generate_corpus
from crucible_kitchen.training._datasets import to_jsonl, write_bundled_data

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def bundled_text(name: str) -> str:
    data = resources.files("crucible_kitchen.training").joinpath("data").joinpath(name)
    return data.read_text(encoding="utf-8")


def expected_answer(task: str, question: str) -> str:
    """Solve a chat task from its question alone, independently of the generator."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    word = question.split("'")[1] if "'" in question else ""
    solvers: dict[str, Callable[[], str]] = {
        "addition": lambda: str(numbers[0] + numbers[1]),
        "subtraction": lambda: str(numbers[0] - numbers[1]),
        "next_number": lambda: str(numbers[0] + 1),
        "uppercase": word.upper,
        "reverse": lambda: "".join(reversed(word)),
        "count_letters": lambda: str(len(word)),
        "first_letter": lambda: word[:1],
    }
    return solvers[task]()


# --- bundled files equal their generators -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "generate"),
    [
        ("corpus.txt", generate_corpus),
        ("chat_tasks.jsonl", lambda: to_jsonl(generate_chat_examples())),
        ("arithmetic_rl.jsonl", lambda: to_jsonl(generate_arithmetic_problems())),
        ("preference_tasks.jsonl", lambda: to_jsonl(generate_preference_pairs())),
    ],
)
def test_bundled_file_equals_its_generator(name: str, generate: object) -> None:
    assert callable(generate)
    assert bundled_text(name) == generate()


def test_write_bundled_data_reproduces_every_file(tmp_path: Path) -> None:
    for path in write_bundled_data(tmp_path):
        assert path.read_text(encoding="utf-8") == bundled_text(path.name)


def test_corpus_is_small_english_text() -> None:
    corpus = bundled_corpus()
    assert 100_000 < len(corpus.encode("utf-8")) < 300_000
    assert corpus.isascii()
    assert "A language model reads a sequence of tokens" in corpus


# --- chat tasks ---------------------------------------------------------------------------------


def test_chat_examples_are_balanced_and_correct() -> None:
    examples = load_chat_examples()
    assert examples == generate_chat_examples()
    assert len(examples) == 560
    assert Counter(e.task for e in examples) == dict.fromkeys(CHAT_TASKS, 80)
    for example in examples:
        question, answer = example.messages
        assert (question.role, answer.role) == ("user", "assistant")
        assert answer.content == expected_answer(example.task, question.content)


def test_chat_generator_is_seeded() -> None:
    assert generate_chat_examples(20, seed=5) == generate_chat_examples(20, seed=5)
    assert generate_chat_examples(20, seed=5) != generate_chat_examples(20, seed=6)
    assert generate_chat_examples(0) == []


def test_chat_examples_fit_a_tiny_model_context() -> None:
    tokenizer = default_bpe_tokenizer()
    renderer = get_renderer("role_colon", tokenizer)
    lengths = [
        len(renderer.build_supervised_example(list(e.messages)).tokens)
        for e in load_chat_examples()
    ]
    assert max(lengths) <= 32


# --- RL arithmetic ------------------------------------------------------------------------------


def test_arithmetic_problems_are_correct() -> None:
    problems = load_arithmetic_problems()
    assert problems == generate_arithmetic_problems()
    assert len(problems) == 256
    operators: Counter[str] = Counter()
    for problem in problems:
        match = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", problem.question)
        assert match is not None
        a, operator, b = int(match[1]), match[2], int(match[3])
        operators[operator] += 1
        assert problem.answer == (a + b if operator == "+" else a - b)
        assert problem.answer >= 0
    assert min(operators.values()) > 100


@pytest.mark.parametrize(
    ("response", "extracted", "reward"),
    [
        ("12", 12, 1.0),
        ("The answer is 12.", 12, 1.0),
        ("7 + 5 = 12", 12, 1.0),
        ("12 or 13", 13, 0.0),
        ("13", 13, 0.0),
        ("-12", -12, 0.0),
        ("twelve", None, 0.0),
        ("", None, 0.0),
    ],
)
def test_arithmetic_reward(response: str, extracted: int | None, reward: float) -> None:
    assert extract_integer_answer(response) == extracted
    assert arithmetic_reward(response, 12) == reward


# --- preference pairs ---------------------------------------------------------------------------


def test_preference_pairs_prefer_the_correct_answer() -> None:
    pairs = load_preference_pairs()
    assert pairs == generate_preference_pairs()
    assert Counter(p.task for p in pairs) == dict.fromkeys(CHAT_TASKS, 40)
    for pair in pairs:
        (question,), (chosen,), (rejected,) = pair.prompt, pair.chosen, pair.rejected
        assert chosen.content == expected_answer(pair.task, question.content)
        assert rejected.content != chosen.content
        assert rejected.role == chosen.role == "assistant"


def test_preference_pairs_render_as_prompt_completion() -> None:
    renderer = get_renderer("chatml", default_bpe_tokenizer())
    pair = load_preference_pairs()[0]
    chosen = renderer.build_prompt_completion_example(pair.prompt, pair.chosen)
    rejected = renderer.build_prompt_completion_example(pair.prompt, pair.rejected)
    prompt_length = len(renderer.build_generation_prompt(pair.prompt))
    assert chosen.tokens[:prompt_length] == rejected.tokens[:prompt_length]
    assert chosen.tokens != rejected.tokens


# --- loaders ------------------------------------------------------------------------------------


def test_loader_reads_a_user_file_and_skips_blank_lines(tmp_path: Path) -> None:
    examples = generate_chat_examples(3)
    path = tmp_path / "chat.jsonl"
    path.write_text(to_jsonl(examples[:2]) + "\n\n" + to_jsonl(examples[2:]), encoding="utf-8")
    assert load_chat_examples(path) == examples


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (
            '{"task": "t", "messages": [{"role": "user", "content": 3}]}',
            r"\$\.messages\[0\]\.content",
        ),
        ('{"task": "t", "messages": [{"role": "user", "text": "x"}]}', "text"),
        ('{"task": "t", "messages": []}', "at least one message"),
        ('{"task": "t"', "line 2"),
    ],
)
def test_loader_names_the_bad_line_and_field(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(to_jsonl(generate_chat_examples(1)) + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=match) as info:
        load_chat_examples(path)
    assert f"{path}, line 2" in str(info.value)


def test_arithmetic_loader_rejects_non_integer_answers(tmp_path: Path) -> None:
    path = tmp_path / "rl.jsonl"
    path.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: Expected `int`, got `str` - at `\$\.answer`"):
        load_arithmetic_problems(path)


def test_messages_round_trip_through_json_without_defaults() -> None:
    example = ChatExample(task="t", messages=(Message(role="user", content="hi"),))
    encoded = msgspec.json.encode(example)
    assert encoded == b'{"task":"t","messages":[{"role":"user","content":"hi"}]}'
    assert msgspec.json.decode(encoded, type=ChatExample) == example
    trainable = Message(role="user", content="hi", trainable=True)
    assert msgspec.json.decode(msgspec.json.encode(trainable), type=Message) == trainable


def test_bundled_chat_examples_render_with_every_renderer() -> None:
    tokenizer = default_bpe_tokenizer()
    examples = load_chat_examples()[:20]
    for name in ("role_colon", "llama3", "chatml"):
        renderer = get_renderer(name, tokenizer)
        for example in examples:
            rendered = renderer.build_supervised_example(
                list(example.messages), TrainOnWhat.LAST_ASSISTANT_MESSAGE
            )
            assert rendered.num_loss_tokens >= 2
