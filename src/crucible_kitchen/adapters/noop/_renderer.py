"""A minimal chat format over the byte tokenizer: ``<|role|>content</s>`` per message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_kitchen.adapters.noop._tokenizer import NoopTokenizer
from crucible_kitchen.errors import RenderError
from crucible_kitchen.ports import Message, ModelInput, TensorData

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports import StopCondition, TrainOnWhat

__all__ = ("NoopRenderer",)


class NoopRenderer:
    """Renders ``<s><|user|>hi</s><|assistant|>hello</s>``; an assistant reply ends at ``</s>``."""

    def __init__(self, tokenizer: NoopTokenizer | None = None) -> None:
        self._tokenizer = tokenizer or NoopTokenizer()

    def _header(self, role: str) -> list[int]:
        return self._tokenizer.encode(f"<|{role}|>", add_special_tokens=False)

    def build_generation_prompt(
        self, messages: Sequence[Message], *, role: str = "assistant"
    ) -> ModelInput:
        """``<s>``, every message, then the header of the ``role`` message to generate."""
        tokens = [self._tokenizer.bos_token_id]
        for message in messages:
            tokens += self._header(message.role) + self._body(message)
        return ModelInput.from_ints(tokens + self._header(role))

    def build_supervised_example(
        self, messages: Sequence[Message], *, train_on_what: TrainOnWhat = "last_assistant_message"
    ) -> tuple[ModelInput, TensorData]:
        """The conversation's tokens, weighted 1 on the selected messages' bodies and ``</s>``.

        Raises:
            RenderError: ``train_on_what`` selects no message.
        """
        selected = _select(messages, train_on_what)
        everything = train_on_what == "all_tokens"
        tokens = [self._tokenizer.bos_token_id]
        weights = [1.0 if everything else 0.0]
        for index, message in enumerate(messages):
            header, body = self._header(message.role), self._body(message)
            weight = 1.0 if index in selected else 0.0
            tokens += header + body
            weights += [1.0 if everything else 0.0] * len(header) + [weight] * len(body)
        return ModelInput.from_ints(tokens), TensorData(dtype="float32", data=tuple(weights))

    def get_stop_sequences(self) -> StopCondition:
        """The end-of-sequence token."""
        return (self._tokenizer.eos_token_id,)

    def parse_response(self, tokens: Sequence[int]) -> tuple[Message, bool]:
        """The text up to the first ``</s>``; ``False`` if there is none."""
        eos = self._tokenizer.eos_token_id
        ended = eos in tokens
        body = list(tokens[: list(tokens).index(eos)]) if ended else list(tokens)
        text = self._tokenizer.decode(body, skip_special_tokens=True)
        return Message(role="assistant", content=text), ended

    def _body(self, message: Message) -> list[int]:
        content = self._tokenizer.encode(message.content, add_special_tokens=False)
        return [*content, self._tokenizer.eos_token_id]


def _select(messages: Sequence[Message], train_on_what: TrainOnWhat) -> set[int]:
    if train_on_what in ("all_messages", "all_tokens"):
        selected = set(range(len(messages)))
    elif train_on_what == "all_assistant_messages":
        selected = {i for i, message in enumerate(messages) if message.role == "assistant"}
    elif messages and messages[-1].role == "assistant":
        selected = {len(messages) - 1}
    else:
        selected = set()
    if not selected:
        raise RenderError(f"train_on_what={train_on_what!r} selects no message to train on")
    return selected
