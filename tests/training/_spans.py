"""Reading the trained tokens of a supervised example back as text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crucible_kitchen.training import ChatTokenizer, SupervisedExample


def trained_spans(tokenizer: ChatTokenizer, example: SupervisedExample) -> list[str]:
    """The decoded runs of consecutive tokens with weight 1."""
    spans: list[list[int]] = []
    previous = 0.0
    for token, weight in zip(example.tokens, example.weights, strict=True):
        assert weight in (0.0, 1.0)
        if weight and not previous:
            spans.append([])
        if weight:
            spans[-1].append(token)
        previous = weight
    return [tokenizer.decode(span) for span in spans]
