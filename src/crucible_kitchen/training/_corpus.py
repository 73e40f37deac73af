"""A small English corpus, generated deterministically, for training the BPE tokenizer.

The text comes from templates and word lists written for this package (no third-party text).
``data/corpus.txt`` is exactly ``generate_corpus()``; a test keeps the two equal.
"""

from __future__ import annotations

import random
from importlib import resources

from crucible_kitchen.errors import TrainingInputError

__all__ = (
    "CORPUS_FILE_NAME",
    "CORPUS_SEED",
    "WORDS",
    "bundled_corpus",
    "generate_corpus",
    "number_to_words",
)

CORPUS_FILE_NAME = "corpus.txt"
CORPUS_SEED = 20251128

WORDS: tuple[str, ...] = (
    "apple", "bird", "boat", "book", "bread", "cake", "cat", "chair", "cloud", "coat",
    "cup", "desk", "dog", "door", "duck", "egg", "farm", "fish", "flag", "frog",
    "game", "gate", "goat", "hat", "hill", "horse", "house", "jam", "key", "kite",
    "lamp", "leaf", "lion", "map", "milk", "moon", "mouse", "nest", "note", "owl",
    "pen", "pig", "plant", "rain", "ring", "river", "road", "rock", "rose", "sand",
    "seed", "ship", "shoe", "sock", "star", "stone", "sun", "table", "tree", "wolf",
)  # fmt: skip
"""Short, common English nouns; the chat tasks draw their words from this list too."""

_ADJECTIVES = (
    "big", "small", "red", "blue", "green", "old", "new", "quick", "slow", "happy",
    "quiet", "loud", "bright", "dark", "warm", "cold", "soft", "round", "tall", "tiny",
)  # fmt: skip
_VERBS_PAST = (
    "saw", "found", "liked", "carried", "painted", "moved", "watched", "kept", "lost",
    "cleaned", "counted", "named", "drew", "held", "followed", "visited",
)  # fmt: skip
_PLACES = (
    "in the garden", "near the river", "on the hill", "by the road", "at the farm",
    "under the tree", "in the kitchen", "next to the door", "behind the house",
    "on the table", "in the forest", "at the market",
)  # fmt: skip
_NAMES = (
    "Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade",
    "Kai", "Lena", "Milo", "Nora", "Omar", "Pia", "Rosa", "Sam", "Tara", "Uma",
)  # fmt: skip
_TIMES = (
    "In the morning", "At noon", "Later that day", "In the evening", "After lunch",
    "Before dinner", "On Monday", "On Friday", "Every day", "Once a week",
)  # fmt: skip
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

# Prose written for this package, mixed in between the generated paragraphs.
_ESSAYS = (
    "A language model reads a sequence of tokens and predicts the next one. Training "
    "makes the predicted token more likely when it matches the text. After many small "
    "steps the model learns the patterns that the data repeats.",
    "Supervised fine-tuning shows the model a conversation and trains it on the answers. "
    "The questions are part of the input, but only the answer tokens carry weight in the "
    "loss, so the model learns to answer rather than to ask.",
    "Reinforcement learning lets the model try several answers to the same question. A "
    "reward function checks each answer. Answers that score better than the group average "
    "are made more likely, and answers that score worse are made less likely.",
    "Preference training compares two answers to one prompt. The chosen answer should "
    "become more likely than the rejected one, measured against a frozen reference model, "
    "so that the policy does not drift too far from where it started.",
    "Distillation asks a teacher model to score the tokens that a student model wrote. "
    "Where the teacher disagrees, the student is pushed toward the teacher. The student "
    "learns from its own mistakes instead of from text it would never write.",
    "A learning rate schedule decides how large each update is. A short warmup starts "
    "small, then the rate decays linearly or along a cosine curve until the last step.",
    "A tokenizer turns text into numbers. A byte level tokenizer uses one number for each "
    "byte. A byte pair encoding merges frequent pairs into new tokens, so common words "
    "need fewer numbers.",
)


def number_to_words(n: int) -> str:
    """English words for ``0 <= n < 1000``, e.g. ``342`` -> ``"three hundred forty-two"``."""
    if not 0 <= n < 1000:
        raise TrainingInputError(f"number_to_words supports 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    head = f"{_ONES[hundreds]} hundred"
    return head if rest == 0 else f"{head} {number_to_words(rest)}"


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _story(rng: random.Random) -> str:
    name, other = rng.sample(_NAMES, 2)
    noun, thing = rng.sample(WORDS, 2)
    adjective, quality = rng.sample(_ADJECTIVES, 2)
    count = rng.randint(2, 12)
    sentences = [
        f"{rng.choice(_TIMES)}, {name} {rng.choice(_VERBS_PAST)} "
        f"{_with_article(adjective + ' ' + noun)} {rng.choice(_PLACES)}.",
        f"The {noun} was {quality}, and {name} told {other} about it.",
        f"{other} {rng.choice(_VERBS_PAST)} {number_to_words(count)} {thing}s "
        f"{rng.choice(_PLACES)}.",
        f"Together they had {count} {thing}s and one {noun}.",
    ]
    return " ".join(sentences[: rng.randint(2, 4)])


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    high, low = max(a, b), min(a, b)
    choices = (
        f"{a} + {b} = {a + b}.",
        f"{number_to_words(a).capitalize()} plus {number_to_words(b)} is {number_to_words(a + b)}.",
        f"{high} - {low} = {high - low}.",
        f"If you take {low} from {high}, you are left with {high - low}.",
        f"Question: What is {a} + {b}? Answer: {a + b}.",
        f"The number after {a} is {a + 1}, and the number before {b + 1} is {b}.",
        f"{max(a, b)} is larger than {min(a, b)}." if a != b else f"{a} is equal to {b}.",
    )
    return rng.choice(choices)


def _word_play(rng: random.Random) -> str:
    word = rng.choice(WORDS)
    choices = (
        f"The word {word} has {len(word)} letters.",
        f"Spelled backwards, {word} is {word[::-1]}.",
        f"In capital letters, {word} is written {word.upper()}.",
        f"The first letter of {word} is {word[0]}, and the last letter is {word[-1]}.",
        f"User: Spell '{word}' backwards.\n\nAssistant: {word[::-1]}",
        f"User: Write '{word}' in capital letters.\n\nAssistant: {word.upper()}",
    )
    return rng.choice(choices)


def generate_corpus(*, seed: int = CORPUS_SEED, num_paragraphs: int = 800) -> str:
    """The corpus text: paragraphs of stories, arithmetic and word play, plus short essays.

    The same arguments always give the same text (``random.Random`` with an int seed is
    stable across Python versions for the calls used here).
    """
    rng = random.Random(seed)
    makers = (_story, _arithmetic, _word_play)
    paragraphs: list[str] = []
    for index in range(num_paragraphs):
        if index % 50 == 0:
            paragraphs.append(_ESSAYS[(index // 50) % len(_ESSAYS)])
        paragraphs.append(" ".join(rng.choice(makers)(rng) for _ in range(rng.randint(2, 5))))
    return "\n\n".join(paragraphs) + "\n"


def bundled_corpus() -> str:
    """The text of the packaged ``data/corpus.txt`` (equal to ``generate_corpus()``)."""
    data = resources.files("crucible_kitchen.training").joinpath("data").joinpath(CORPUS_FILE_NAME)
    return data.read_text(encoding="utf-8")
