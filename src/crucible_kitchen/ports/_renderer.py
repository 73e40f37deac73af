"""The renderer port: conversations to model inputs and completions back to messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports._types import (
        Message,
        ModelInput,
        StopCondition,
        TensorData,
        TrainOnWhat,
    )

__all__ = ("Renderer",)


class Renderer(Protocol):
    """Applies one chat format (tinker-cookbook: ``Renderer``). Pure and synchronous."""

    def build_generation_prompt(
        self, messages: Sequence[Message], *, role: str = "assistant"
    ) -> ModelInput:
        """The prompt that asks the model for the next ``role`` message."""
        ...

    def build_supervised_example(
        self, messages: Sequence[Message], *, train_on_what: TrainOnWhat = "last_assistant_message"
    ) -> tuple[ModelInput, TensorData]:
        """The whole conversation as tokens, and a float32 weight for each token.

        ``weights[i]`` is the weight of token ``i`` of the model input: 1 on the tokens
        ``train_on_what`` selects (including their end-of-message tokens), else 0.

        Raises:
            RenderError: the conversation has nothing ``train_on_what`` could select.
        """
        ...

    def get_stop_sequences(self) -> StopCondition:
        """What ends an assistant message, as stop strings or stop token ids."""
        ...

    def parse_response(self, tokens: Sequence[int]) -> tuple[Message, bool]:
        """The assistant message in sampled ``tokens``, and whether it ended properly.

        The flag is ``False`` when the completion was cut off or malformed; the message
        then holds whatever text there was.
        """
        ...
