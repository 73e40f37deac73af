"""The Renderer port over ``training``'s chat renderers. This module does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import crucible_kitchen.training as training
from crucible_kitchen.errors import RenderError
from crucible_kitchen.ports import Message, ModelInput, TensorData

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer
    from crucible_kitchen.ports import StopCondition, TrainOnWhat

__all__ = ("LocalRenderer",)


class LocalRenderer:
    """Implements :class:`~crucible_kitchen.ports.Renderer` with a ``training`` renderer.

    Args:
        tokenizer: the tokenizer the model uses.
        name: a key of :data:`crucible_kitchen.training.RENDERERS`: ``"jinja"`` (the
            tokenizer's own chat template; stops at its EOS token), ``"chatml"`` (stops at
            the ``<|im_end|>`` token), ``"llama3"`` (``<|eot_id|>``) or ``"role_colon"``
            (stops at the string ``"\\n\\nUser:"``).

    Raises:
        RenderError: an unknown name, or a tokenizer without the format's special tokens.
    """

    def __init__(self, tokenizer: LocalTokenizer, name: str = "chatml") -> None:
        self._renderer = training.get_renderer(name, tokenizer.chat_tokenizer)
        self._name = name

    @property
    def name(self) -> str:
        """The chat format's name."""
        return self._name

    @property
    def renderer(self) -> training.Renderer:
        """The wrapped ``training`` renderer (richer: prefill, prompt/completion examples)."""
        return self._renderer

    def build_generation_prompt(
        self, messages: Sequence[Message], *, role: str = "assistant"
    ) -> ModelInput:
        """The prompt that asks the model for the next ``role`` message.

        Raises:
            RenderError: a message or ``role`` is invalid.
        """
        tokens = self._renderer.build_generation_prompt(_convert(messages), role=role)
        return ModelInput.from_ints(tokens)

    def build_supervised_example(
        self, messages: Sequence[Message], *, train_on_what: TrainOnWhat = "last_assistant_message"
    ) -> tuple[ModelInput, TensorData]:
        """The conversation's tokens and a 0/1 float32 weight per token.

        Raises:
            RenderError: the conversation is invalid or nothing would be trained.
        """
        try:
            what = training.TrainOnWhat(train_on_what)
        except ValueError:
            known = ", ".join(member.value for member in training.TrainOnWhat)
            raise RenderError(
                f"unknown train_on_what {train_on_what!r}; expected one of {known}"
            ) from None
        example = self._renderer.build_supervised_example(_convert(messages), what)
        return (
            ModelInput.from_ints(example.tokens),
            TensorData(dtype="float32", data=example.weights),
        )

    def get_stop_sequences(self) -> StopCondition:
        """The format's stop token ids, or stop strings."""
        return tuple(self._renderer.stop_sequences())

    def parse_response(self, tokens: Sequence[int]) -> tuple[Message, bool]:
        """The assistant message in ``tokens``, and whether it ended cleanly."""
        parsed = self._renderer.parse_response(tokens)
        message = Message(role=parsed.message.role, content=parsed.message.content)
        return message, parsed.termination.is_clean


def _convert(messages: Sequence[Message]) -> list[training.Message]:
    return [training.Message(role=m.role, content=m.content) for m in messages]
