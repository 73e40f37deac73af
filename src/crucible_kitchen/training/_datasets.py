"""Small bundled datasets, generated deterministically, and their loaders.

- **Chat tasks** (SFT): short questions with one-word or one-number answers: single-digit
  addition and subtraction, the next number, and spelling tasks on common words. A tiny model
  learns the format, then the easy tasks, within a minute on a laptop CPU.
- **Arithmetic problems** (RL): questions with an integer answer and a verifiable reward.
- **Preference pairs** (DPO): the chat tasks with a correct (chosen) and a plausible wrong
  (rejected) answer.

Each bundled file in ``data/`` is exactly what its generator returns with default arguments,
serialized with :func:`to_jsonl`; a test keeps the two equal. Regenerate them all with
``write_bundled_data("src/crucible_kitchen/training/data")``.
"""

from __future__ import annotations

import os
import random
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from crucible_kitchen.errors import DataError
from crucible_kitchen.training._corpus import CORPUS_FILE_NAME, WORDS, generate_corpus
from crucible_kitchen.training._renderers import Message

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = (
    "ARITHMETIC_FILE_NAME",
    "CHAT_TASKS",
    "CHAT_TASKS_FILE_NAME",
    "PREFERENCE_FILE_NAME",
    "ArithmeticProblem",
    "ChatExample",
    "PreferencePair",
    "arithmetic_reward",
    "extract_integer_answer",
    "generate_arithmetic_problems",
    "generate_chat_examples",
    "generate_preference_pairs",
    "load_arithmetic_problems",
    "load_chat_examples",
    "load_preference_pairs",
    "to_jsonl",
    "write_bundled_data",
)

CHAT_TASKS_FILE_NAME = "chat_tasks.jsonl"
ARITHMETIC_FILE_NAME = "arithmetic_rl.jsonl"
PREFERENCE_FILE_NAME = "preference_tasks.jsonl"

CHAT_TASKS: tuple[str, ...] = (
    "addition",
    "subtraction",
    "next_number",
    "uppercase",
    "reverse",
    "count_letters",
    "first_letter",
)

_CHAT_SEED = 1
_ARITHMETIC_SEED = 2
_PREFERENCE_SEED = 3


class ChatExample(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One conversation (user question, assistant answer) and the task it exercises."""

    task: str
    messages: tuple[Message, ...]

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a chat example needs at least one message")


class ArithmeticProblem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A question whose answer is an integer; see :func:`arithmetic_reward`."""

    question: str
    answer: int


class PreferencePair(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A prompt and two completions, ``chosen`` preferred over ``rejected`` (TRL's
    conversational preference format)."""

    task: str
    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]

    def __post_init__(self) -> None:
        if not (self.prompt and self.chosen and self.rejected):
            raise ValueError("prompt, chosen and rejected each need at least one message")


def _task_question_answer(task: str, rng: random.Random) -> tuple[str, str]:
    if task == "addition":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"What is {a} + {b}?", str(a + b)
    if task == "subtraction":
        a = rng.randint(0, 9)
        b = rng.randint(0, a)
        return f"What is {a} - {b}?", str(a - b)
    if task == "next_number":
        n = rng.randint(0, 98)
        return f"What number comes after {n}?", str(n + 1)
    word = rng.choice(WORDS)
    if task == "uppercase":
        return f"Write '{word}' in capital letters.", word.upper()
    if task == "reverse":
        return f"Spell '{word}' backwards.", word[::-1]
    if task == "count_letters":
        return f"How many letters are in '{word}'?", str(len(word))
    if task == "first_letter":
        return f"What is the first letter of '{word}'?", word[0]
    raise AssertionError(f"unknown task {task!r}")


def generate_chat_examples(count: int = 560, *, seed: int = _CHAT_SEED) -> list[ChatExample]:
    """``count`` single-turn chat examples, the tasks of :data:`CHAT_TASKS` in equal shares,
    in shuffled order. The same arguments always give the same examples."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        task = CHAT_TASKS[index % len(CHAT_TASKS)]
        question, answer = _task_question_answer(task, rng)
        messages = (
            Message(role="user", content=question),
            Message(role="assistant", content=answer),
        )
        examples.append(ChatExample(task=task, messages=messages))
    rng.shuffle(examples)
    return examples


def generate_arithmetic_problems(
    count: int = 256, *, seed: int = _ARITHMETIC_SEED
) -> list[ArithmeticProblem]:
    """``count`` addition and subtraction questions over 0..12, phrased like the chat tasks
    (``"What is 7 + 5?"``); subtraction never goes below zero."""
    rng = random.Random(seed)
    problems = []
    for _ in range(count):
        a, b = rng.randint(0, 12), rng.randint(0, 12)
        if rng.random() < 0.5:
            problems.append(ArithmeticProblem(question=f"What is {a} + {b}?", answer=a + b))
        else:
            high, low = max(a, b), min(a, b)
            problems.append(
                ArithmeticProblem(question=f"What is {high} - {low}?", answer=high - low)
            )
    return problems


def _wrong_answer(task: str, question: str, answer: str, rng: random.Random) -> str:
    if answer.isdigit():
        candidates = [int(answer) + d for d in (-2, -1, 1, 2) if int(answer) + d >= 0]
        return str(rng.choice(candidates))
    word = question.split("'")[1]
    if task in ("uppercase", "reverse"):
        return word
    # first_letter: another letter of the same word
    return rng.choice([c for c in word if c != answer])


def generate_preference_pairs(
    count: int = 280, *, seed: int = _PREFERENCE_SEED
) -> list[PreferencePair]:
    """``count`` preference pairs over the chat tasks: the correct answer is chosen, a
    plausible wrong one (off by one or two, the word unchanged, another letter) rejected."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        task = CHAT_TASKS[index % len(CHAT_TASKS)]
        question, answer = _task_question_answer(task, rng)
        wrong = _wrong_answer(task, question, answer, rng)
        pairs.append(
            PreferencePair(
                task=task,
                prompt=(Message(role="user", content=question),),
                chosen=(Message(role="assistant", content=answer),),
                rejected=(Message(role="assistant", content=wrong),),
            )
        )
    rng.shuffle(pairs)
    return pairs


_INTEGER = re.compile(r"-?\d+")


def extract_integer_answer(response: str) -> int | None:
    """The last integer written in ``response`` (``"7 + 5 = 12"`` gives 12), or ``None``."""
    matches = _INTEGER.findall(response)
    return int(matches[-1]) if matches else None


def arithmetic_reward(response: str, answer: int) -> float:
    """1.0 if the last integer in ``response`` equals ``answer``, else 0.0."""
    return 1.0 if extract_integer_answer(response) == answer else 0.0


_ENCODER = msgspec.json.Encoder()


def to_jsonl(items: Iterable[msgspec.Struct]) -> str:
    """One compact JSON object per line, fields in declaration order, each line ending in
    ``\\n``: the exact format of the bundled files."""
    return "".join(_ENCODER.encode(item).decode("utf-8") + "\n" for item in items)


_T = TypeVar("_T", bound=msgspec.Struct)


def _load_jsonl(path: str | os.PathLike[str] | None, default_name: str, kind: type[_T]) -> list[_T]:
    if path is None:
        source = (
            resources.files("crucible_kitchen.training").joinpath("data").joinpath(default_name)
        )
        text, where = source.read_text(encoding="utf-8"), f"bundled {default_name}"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), os.fspath(path)
    decoder = msgspec.json.Decoder(kind)
    items = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(decoder.decode(line))
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise DataError(f"{where}, line {line_number}: {exc}") from exc
    return items


def load_chat_examples(path: str | os.PathLike[str] | None = None) -> list[ChatExample]:
    """Chat examples from a JSONL file (by default the bundled ``chat_tasks.jsonl``).

    Raises:
        DataError: a line is not a valid example; the message names the file, the line and
            the field.
        OSError: the file cannot be read.
    """
    return _load_jsonl(path, CHAT_TASKS_FILE_NAME, ChatExample)


def load_arithmetic_problems(
    path: str | os.PathLike[str] | None = None,
) -> list[ArithmeticProblem]:
    """Arithmetic problems from a JSONL file (by default the bundled ``arithmetic_rl.jsonl``).

    Raises:
        DataError: a line is not a valid problem; the message names the line and the field.
        OSError: the file cannot be read.
    """
    return _load_jsonl(path, ARITHMETIC_FILE_NAME, ArithmeticProblem)


def load_preference_pairs(path: str | os.PathLike[str] | None = None) -> list[PreferencePair]:
    """Preference pairs from a JSONL file (by default the bundled ``preference_tasks.jsonl``).

    Raises:
        DataError: a line is not a valid pair; the message names the line and the field.
        OSError: the file cannot be read.
    """
    return _load_jsonl(path, PREFERENCE_FILE_NAME, PreferencePair)


def write_bundled_data(directory: str | os.PathLike[str]) -> list[Path]:
    """Write the corpus and the three JSONL files, as bundled, into ``directory``."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    contents: dict[str, Callable[[], str]] = {
        CORPUS_FILE_NAME: generate_corpus,
        CHAT_TASKS_FILE_NAME: lambda: to_jsonl(generate_chat_examples()),
        ARITHMETIC_FILE_NAME: lambda: to_jsonl(generate_arithmetic_problems()),
        PREFERENCE_FILE_NAME: lambda: to_jsonl(generate_preference_pairs()),
    }
    written = []
    for name, make in contents.items():
        path = target / name
        path.write_text(make(), encoding="utf-8", newline="")
        written.append(path)
    return written
