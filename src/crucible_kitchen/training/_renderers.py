"""Chat renderers: conversations to tokens and loss weights, and sampled tokens back to messages.

A renderer splits each message into a *header* (role markup the model reads but does not
write), an *output* (the content plus end-of-turn markup: what the model writes) and, for the
role-colon format only, a *stop overlap* (the part of the stop sequence that the next header
would repeat). The family renderers (:class:`MessageRenderer`) write each message themselves
and encode each piece separately, so the tokens of a generation prompt are always a prefix of
the tokens of the supervised example for the same conversation. :class:`JinjaRenderer` runs
the model's own chat template instead and finds the pieces by rendering the conversation's
prefixes.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import msgspec

from crucible_kitchen.errors import ChatTemplateError, RenderError, TrainingInputError
from crucible_kitchen.training._chat_template import ChatTemplate
from crucible_kitchen.training._hf_tokenizer import HfTokenizer

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crucible_kitchen.training._tokenizer import ChatTokenizer

__all__ = (
    "RENDERERS",
    "ChatMLRenderer",
    "JinjaRenderer",
    "Llama3Renderer",
    "Message",
    "MessageRenderer",
    "NextTokenExample",
    "ParseTermination",
    "ParsedResponse",
    "Qwen3DisableThinkingRenderer",
    "Qwen3Renderer",
    "RenderedMessage",
    "Renderer",
    "RoleColonRenderer",
    "SupervisedExample",
    "TrainOnWhat",
    "build_text_completion_example",
    "get_renderer",
    "renderer_for_chat_template",
    "split_thinking",
)

_ROLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class Message(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """One chat message.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"``, ``"tool"`` or another identifier.
        content: The text.
        trainable: Whether the message is trained on; used only by
            ``TrainOnWhat.CUSTOMIZED``, and must be left ``None`` otherwise.

    Decoding JSON into a ``Message`` rejects unknown fields (``tool_calls``, ``name``, ...)
    rather than silently dropping them. ``trainable`` is omitted when encoding if ``None``.
    """

    role: str
    content: str
    trainable: bool | None = None


class TrainOnWhat(StrEnum):
    """Which tokens of a conversation get loss weight 1 (all others get 0).

    Headers (role markup) are trained only with ``ALL_TOKENS``; BOS never is.
    """

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    """The last assistant message; messages after it are dropped from the example (they
    could not change its loss). tinker-cookbook instead trains nothing when the conversation
    does not end with an assistant message."""
    LAST_ASSISTANT_TURN = "last_assistant_turn"
    """Every assistant message after the last user message."""
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    """Every assistant message."""
    ALL_MESSAGES = "all_messages"
    """The content of every message, but not the headers."""
    ALL_TOKENS = "all_tokens"
    """Every token but BOS, headers included."""
    ALL_USER_AND_SYSTEM_MESSAGES = "all_user_and_system_messages"
    """Every user and system message."""
    CUSTOMIZED = "customized"
    """The messages whose ``trainable`` is true; every message must set it."""


class ParseTermination(StrEnum):
    """How a sampled completion ended."""

    STOP_SEQUENCE = "stop_sequence"
    """It ended with the renderer's stop sequence, as a well-formed turn does."""
    EOS = "eos"
    """It ended with the tokenizer's EOS token instead (still a clean end)."""
    MALFORMED = "malformed"
    """No clean end: cut off by ``max_tokens``, several stop sequences, or stop then EOS."""

    @property
    def is_clean(self) -> bool:
        """Whether the completion ended the way a finished turn ends."""
        return self is not ParseTermination.MALFORMED


class ParsedResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A sampled completion parsed back into an assistant message."""

    message: Message
    termination: ParseTermination


class RenderedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message as text pieces; see the module docstring for what each piece is."""

    header: str
    output: str
    stop_overlap: str = ""


class NextTokenExample(msgspec.Struct, frozen=True, kw_only=True):
    """Aligned inputs and targets for next-token prediction: position ``i`` of
    ``input_tokens`` predicts ``target_tokens[i]``, whose loss weight is ``weights[i]``."""

    input_tokens: tuple[int, ...]
    target_tokens: tuple[int, ...]
    weights: tuple[float, ...]


class SupervisedExample(msgspec.Struct, frozen=True, kw_only=True):
    """A rendered sequence and one loss weight per token (weight of predicting that token)."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.weights):
            raise RenderError(
                f"tokens and weights differ in length: {len(self.tokens)} != {len(self.weights)}"
            )

    @property
    def num_loss_tokens(self) -> int:
        """How many tokens have a non-zero weight."""
        return sum(1 for w in self.weights if w != 0)

    def to_next_token_example(
        self,
        *,
        max_length: int | None = None,
        reduction: Literal["none", "mean"] = "none",
    ) -> NextTokenExample:
        """Shift by one token for next-token prediction, after truncating to ``max_length``.

        ``tokens[:max_length]`` is split into ``input_tokens = tokens[:-1]`` and
        ``target_tokens = tokens[1:]``; the weights move with the targets
        (``weights[1:]``), as in tinker-cookbook's ``datum_from_tokens_weights``. With
        ``reduction="mean"`` the weights are scaled to sum to 1, so a ``cross_entropy``
        (sum) loss over a batch is the sum of per-example mean NLLs; with ``"none"`` they are
        kept as they are. Truncation can remove every trained token; check
        ``sum(weights)`` if that matters.

        Raises:
            TrainingInputError: ``max_length < 2`` or an unknown ``reduction``.
            RenderError: fewer than two tokens remain.
        """
        if max_length is not None and max_length < 2:
            raise TrainingInputError(f"max_length must be at least 2, got {max_length}")
        if reduction not in ("none", "mean"):
            raise TrainingInputError(f"reduction must be 'none' or 'mean', got {reduction!r}")
        tokens = self.tokens[:max_length]
        if len(tokens) < 2:
            raise RenderError(f"next-token prediction needs at least 2 tokens, got {len(tokens)}")
        weights = self.weights[1 : len(tokens)]
        if reduction == "mean":
            total = sum(weights)
            if total > 0:
                weights = tuple(w / total for w in weights)
        return NextTokenExample(input_tokens=tokens[:-1], target_tokens=tokens[1:], weights=weights)


def _check_messages(messages: Sequence[Message]) -> None:
    for index, message in enumerate(messages):
        if not isinstance(message, Message):
            raise RenderError(f"message {index}: expected a Message, got {type(message).__name__}")
        if not _ROLE_PATTERN.fullmatch(message.role):
            raise RenderError(f"message {index}: role {message.role!r} is not an identifier")
        if not isinstance(message.content, str):
            raise RenderError(
                f"message {index}: content must be a string, got {type(message.content).__name__}"
            )


def _parse_train_on_what(value: TrainOnWhat | str) -> TrainOnWhat:
    try:
        return TrainOnWhat(value)
    except ValueError:
        raise RenderError(
            f"unknown train_on_what {value!r}; expected one of "
            f"{', '.join(m.value for m in TrainOnWhat)}"
        ) from None


def _check_trainable(messages: Sequence[Message], train_on_what: TrainOnWhat) -> None:
    """``trainable`` is set on every message with ``customized``, and on none without."""
    customized = train_on_what is TrainOnWhat.CUSTOMIZED
    for index, message in enumerate(messages):
        if customized and message.trainable is None:
            raise RenderError(
                f"message {index}: train_on_what=customized needs 'trainable' on every message"
            )
        if not customized and message.trainable is not None:
            raise RenderError(
                f"message {index}: 'trainable' is set but train_on_what={train_on_what.value}"
                "; use train_on_what=customized"
            )


def _select_trained(
    messages: Sequence[Message], train_on_what: TrainOnWhat
) -> tuple[Sequence[Message], list[bool]]:
    """The messages to render (the conversation, cut after its last assistant message for
    ``last_assistant_message``) and whether each is trained on."""
    roles = [m.role for m in messages]
    if train_on_what is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
        if "assistant" not in roles:
            raise RenderError("train_on_what=last_assistant_message: no assistant message")
        last_assistant = len(roles) - 1 - roles[::-1].index("assistant")
        return messages[: last_assistant + 1], [
            i == last_assistant for i in range(last_assistant + 1)
        ]
    if train_on_what is TrainOnWhat.LAST_ASSISTANT_TURN:
        last_user = max((i for i, r in enumerate(roles) if r == "user"), default=-1)
        return messages, [r == "assistant" and i > last_user for i, r in enumerate(roles)]
    if train_on_what is TrainOnWhat.ALL_ASSISTANT_MESSAGES:
        return messages, [r == "assistant" for r in roles]
    if train_on_what in (TrainOnWhat.ALL_MESSAGES, TrainOnWhat.ALL_TOKENS):
        return messages, [True] * len(roles)
    if train_on_what is TrainOnWhat.ALL_USER_AND_SYSTEM_MESSAGES:
        return messages, [r in ("user", "system") for r in roles]
    return messages, [bool(m.trainable) for m in messages]


class Renderer(ABC):
    """Renders conversations for training and sampling, and parses sampled completions.

    Subclasses define :meth:`build_generation_prompt`, ``_build_example`` (the tokens and
    weights of a conversation whose trained messages are chosen), :meth:`stop_sequences` and
    :meth:`parse_response`, and list in ``required_special_tokens`` the markup that must be a
    single special token of the tokenizer (checked when the renderer is built).
    """

    name: ClassVar[str]
    required_special_tokens: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        """Bind the renderer to ``tokenizer``.

        Raises:
            RenderError: the tokenizer lacks one of ``required_special_tokens``.
        """
        missing = [t for t in self.required_special_tokens if tokenizer.special_token_id(t) is None]
        if missing:
            raise RenderError(
                f"renderer {self.name!r} needs special tokens {missing} that the tokenizer "
                "does not have"
            )
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> ChatTokenizer:
        """The tokenizer the renderer encodes with."""
        return self._tokenizer

    @property
    def has_extension_property(self) -> bool:
        """Whether each turn's prompt is a token prefix of the next turn's (history is never
        rewritten), so a multi-turn trajectory fits in one datum. True for every renderer here
        but :class:`JinjaRenderer`."""
        return True

    def _special_id(self, token: str) -> int:
        token_id = self._tokenizer.special_token_id(token)
        if token_id is None:
            raise RenderError(f"the tokenizer has no special token {token!r}")
        return token_id

    def bos_tokens(self) -> list[int]:
        """Tokens that open every sequence (empty by default)."""
        return []

    @abstractmethod
    def stop_sequences(self) -> list[int] | list[str]:
        """What the sampler should stop at: token ids or strings (Tinker's ``stop``)."""

    @abstractmethod
    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """Parse a sampled completion into an assistant message.

        ``tokens`` are the sampled tokens including the stop sequence, as a sampler returns
        them when it stops at one of :meth:`stop_sequences`.
        """

    @abstractmethod
    def build_generation_prompt(
        self, messages: Sequence[Message], *, role: str = "assistant", prefill: str | None = None
    ) -> list[int]:
        """Tokens to sample the next ``role`` message from: the conversation, then the
        header of the new message and the ``prefill`` text, if any.

        Raises:
            RenderError: a message or ``role`` is invalid.
        """

    def build_supervised_example(
        self,
        messages: Sequence[Message],
        train_on_what: TrainOnWhat = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    ) -> SupervisedExample:
        """Tokens of the conversation and a 0/1 weight per token, chosen by ``train_on_what``.

        The tokens are BOS, then for each message its header and output; the last message
        also gets its stop overlap (weighted like its output), so the model learns to emit
        the whole stop sequence.

        Raises:
            RenderError: ``train_on_what`` is unknown, the conversation is empty or invalid,
                ``trainable`` is set (or missing) against ``train_on_what``, or no token would
                be trained.
        """
        train_on_what = _parse_train_on_what(train_on_what)
        _check_messages(messages)
        if not messages:
            raise RenderError("cannot build a supervised example from an empty conversation")
        _check_trainable(messages, train_on_what)
        messages, trained = _select_trained(messages, train_on_what)
        return self._build_example(
            messages,
            trained,
            train_headers=train_on_what is TrainOnWhat.ALL_TOKENS,
            what=f"train_on_what={train_on_what.value}",
        )

    def build_prompt_completion_example(
        self, prompt: Sequence[Message], completion: Sequence[Message]
    ) -> SupervisedExample:
        """A supervised example trained on the ``completion`` messages only (TRL's
        ``completion_only_loss`` for conversational prompt/completion data).

        Raises:
            RenderError: ``completion`` is empty, a message is invalid or sets ``trainable``.
        """
        if not completion:
            raise RenderError("prompt/completion example: the completion has no message")
        messages = [*prompt, *completion]
        _check_messages(messages)
        for index, message in enumerate(messages):
            if message.trainable is not None:
                raise RenderError(
                    f"message {index}: 'trainable' is not used by prompt/completion examples"
                )
        trained = [False] * len(prompt) + [True] * len(completion)
        return self._build_example(messages, trained, train_headers=False, what="completion")

    @abstractmethod
    def _build_example(
        self,
        messages: Sequence[Message],
        trained: Sequence[bool],
        *,
        train_headers: bool,
        what: str,
    ) -> SupervisedExample:
        """The example of ``messages``, checked already: the outputs of the messages whose
        ``trained`` is true get weight 1, headers too if ``train_headers``, BOS never.

        Raises:
            RenderError: no token would be trained (``what`` says what was asked for).
        """

    def _parse_at_stop_token(self, tokens: Sequence[int], stop_token: str) -> ParsedResponse:
        """Parse a completion that should end with one ``stop_token``; the content is the
        text before it (the first one, if several)."""
        stop_id = self._special_id(stop_token)
        eos_id = self._tokenizer.eos_token_id
        tokens = list(tokens)
        if stop_id in tokens:
            end = tokens.index(stop_id)
            termination = (
                ParseTermination.STOP_SEQUENCE
                if tokens.count(stop_id) == 1
                else ParseTermination.MALFORMED
            )
        elif eos_id is not None and tokens and tokens[-1] == eos_id:
            end, termination = len(tokens) - 1, ParseTermination.EOS
        else:
            end, termination = len(tokens), ParseTermination.MALFORMED
        content = self._tokenizer.decode(tokens[:end])
        return ParsedResponse(
            message=Message(role="assistant", content=content), termination=termination
        )


class MessageRenderer(Renderer):
    """A renderer that writes each message on its own, as :class:`RenderedMessage` pieces
    (see the module docstring), and encodes each piece separately.

    Subclasses define :meth:`render_message`, :meth:`stop_sequences` and
    :meth:`parse_response`.
    """

    @abstractmethod
    def render_message(self, message: Message, *, index: int) -> RenderedMessage:
        """Split ``message``, the ``index``-th of its conversation, into text pieces."""

    def build_generation_prompt(
        self, messages: Sequence[Message], *, role: str = "assistant", prefill: str | None = None
    ) -> list[int]:
        """Tokens to sample the next ``role`` message from: BOS, every message, then the
        header of the new message and the ``prefill`` text, if any.

        Raises:
            RenderError: a message or ``role`` is invalid.
        """
        _check_messages([*messages, Message(role=role, content="")])
        tokens = self.bos_tokens()
        for index, message in enumerate(messages):
            rendered = self.render_message(message, index=index)
            tokens += self._tokenizer.encode(rendered.header)
            tokens += self._tokenizer.encode(rendered.output)
        header = self.render_message(Message(role=role, content=""), index=len(messages)).header
        tokens += self._tokenizer.encode(header)
        if prefill:
            tokens += self._tokenizer.encode(prefill)
        return tokens

    def _build_example(
        self,
        messages: Sequence[Message],
        trained: Sequence[bool],
        *,
        train_headers: bool,
        what: str,
    ) -> SupervisedExample:
        tokens = self.bos_tokens()
        weights = [0.0] * len(tokens)

        def add(text: str, weight: bool) -> None:
            piece = self._tokenizer.encode(text)
            tokens.extend(piece)
            weights.extend([1.0 if weight else 0.0] * len(piece))

        for index, (message, is_trained) in enumerate(zip(messages, trained, strict=True)):
            rendered = self.render_message(message, index=index)
            add(rendered.header, train_headers)
            add(rendered.output, is_trained)
            if index == len(messages) - 1:
                add(rendered.stop_overlap, is_trained)
        if not any(weights):
            raise RenderError(f"{what} selects no token of this conversation to train on")
        return SupervisedExample(tokens=tuple(tokens), weights=tuple(weights))


class RoleColonRenderer(MessageRenderer):
    """``User: <content>\\n\\nAssistant: <content>\\n\\n`` (tinker-cookbook's ``role_colon``).

    The stop sequence is the string ``"\\n\\nUser:"``; the ``"User:"`` part is the stop
    overlap of an assistant message. Content is stripped of surrounding whitespace when
    parsed. BOS is the tokenizer's own BOS token, if it has one.
    """

    name = "role_colon"
    stop_string: ClassVar[str] = "\n\nUser:"

    def bos_tokens(self) -> list[int]:
        """The tokenizer's BOS token, if it has one."""
        bos = self._tokenizer.bos_token_id
        return [] if bos is None else [bos]

    def render_message(self, message: Message, *, index: int) -> RenderedMessage:
        """``"Role:"`` / ``" content\\n\\n"`` / ``"User:"`` for assistant messages."""
        return RenderedMessage(
            header=message.role.capitalize() + ":",
            output=" " + message.content + "\n\n",
            stop_overlap="User:" if message.role == "assistant" else "",
        )

    def stop_sequences(self) -> list[str]:
        """``["\\n\\nUser:"]``."""
        return [self.stop_string]

    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """Split the text at ``"\\n\\nUser:"``.

        One delimiter: ``STOP_SEQUENCE``. None but a final EOS token: ``EOS``. Otherwise
        (none, several, or a delimiter followed by EOS): ``MALFORMED``. The content is the
        stripped text before the first delimiter.
        """
        tokens = list(tokens)
        eos_id = self._tokenizer.eos_token_id
        ended_with_eos = eos_id is not None and bool(tokens) and tokens[-1] == eos_id
        if ended_with_eos:
            tokens = tokens[:-1]
        pieces = self._tokenizer.decode(tokens).split(self.stop_string)
        if len(pieces) == 1:
            termination = ParseTermination.EOS if ended_with_eos else ParseTermination.MALFORMED
        elif len(pieces) == 2 and not ended_with_eos:
            termination = ParseTermination.STOP_SEQUENCE
        else:
            termination = ParseTermination.MALFORMED
        return ParsedResponse(
            message=Message(role="assistant", content=pieces[0].strip()), termination=termination
        )


class Llama3Renderer(MessageRenderer):
    """The Llama 3 chat template, as tinker-cookbook renders it::

        <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>
        <|start_header_id|>assistant<|end_header_id|>\\n\\nHello<|eot_id|>

    (without the line break). A ``tool`` message is rendered with role ``ipython`` and
    content ``{"output": ...}``. Sampling stops at ``<|eot_id|>``.
    """

    name = "llama3"
    required_special_tokens = (
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    )

    def bos_tokens(self) -> list[int]:
        """``<|begin_of_text|>``."""
        return [self._special_id("<|begin_of_text|>")]

    def render_message(self, message: Message, *, index: int) -> RenderedMessage:
        """Header ``<|start_header_id|>role<|end_header_id|>\\n\\n``; output content +
        ``<|eot_id|>``."""
        is_tool = message.role == "tool"
        role = "ipython" if is_tool else message.role
        content = json.dumps({"output": message.content}) if is_tool else message.content
        return RenderedMessage(
            header=f"<|start_header_id|>{role}<|end_header_id|>\n\n",
            output=content + "<|eot_id|>",
        )

    def stop_sequences(self) -> list[int]:
        """The id of ``<|eot_id|>``."""
        return [self._special_id("<|eot_id|>")]

    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """Content before ``<|eot_id|>``: ``STOP_SEQUENCE`` if there is exactly one, ``EOS``
        if there is none but the last token is EOS, ``MALFORMED`` otherwise."""
        return self._parse_at_stop_token(tokens, "<|eot_id|>")


class ChatMLRenderer(MessageRenderer):
    """The ChatML template used by Qwen models (no thinking blocks)::

        <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>

    The newline between messages belongs to the next header, as in tinker-cookbook's Qwen
    renderers. A ``tool`` message is rendered as a ``user`` message wrapped in
    ``<tool_response>`` tags. There is no BOS. Sampling stops at ``<|im_end|>``.
    """

    name = "chatml"
    required_special_tokens = ("<|im_start|>", "<|im_end|>")

    def render_message(self, message: Message, *, index: int) -> RenderedMessage:
        """Header ``[\\n]<|im_start|>role\\n``; output content + ``<|im_end|>``."""
        is_tool = message.role == "tool"
        role = "user" if is_tool else message.role
        content = (
            f"<tool_response>\n{message.content}\n</tool_response>" if is_tool else message.content
        )
        newline = "\n" if index > 0 else ""
        return RenderedMessage(
            header=f"{newline}<|im_start|>{role}\n", output=content + "<|im_end|>"
        )

    def stop_sequences(self) -> list[int]:
        """The id of ``<|im_end|>``."""
        return [self._special_id("<|im_end|>")]

    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """Content before ``<|im_end|>``: ``STOP_SEQUENCE`` if there is exactly one, ``EOS``
        if there is none but the last token is EOS, ``MALFORMED`` otherwise."""
        return self._parse_at_stop_token(tokens, "<|im_end|>")


_THINK_OPEN: Final = "<think>"
_THINK_CLOSE: Final = "</think>"
_EMPTY_THINKING: Final = f"{_THINK_OPEN}\n\n{_THINK_CLOSE}\n\n"


def split_thinking(content: str) -> tuple[str | None, str]:
    """A Qwen3 reply's reasoning and its answer: the text inside ``<think>...</think>``
    (stripped of surrounding newlines) and the text after it (stripped of leading newlines),
    or ``None`` and the content as it is when it has no ``</think>``."""
    if _THINK_CLOSE not in content:
        return None, content
    before, _, after = content.partition(_THINK_CLOSE)
    return before.rpartition(_THINK_OPEN)[2].strip("\n"), after.lstrip("\n")


class Qwen3Renderer(ChatMLRenderer):
    """Qwen3's chat template with thinking enabled: ChatML, and an assistant reply opens
    with a ``<think>`` block::

        <|im_start|>user\nWhat is 2+2?<|im_end|>
        <|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>

    The block is written the way the template frames it: ``<think>\n{reasoning}\n</think>\n\n``
    then the answer, with ``reasoning`` stripped of surrounding newlines and the answer of
    leading ones; a reply without reasoning gets the empty block ``<think>\n\n</think>\n\n``
    (tinker-cookbook's ``Qwen3Renderer``). The reasoning is part of the message's content,
    written inline as ``<think>...</think>``.

    Every assistant turn keeps its block, also in the history (tinker-cookbook's
    ``strip_thinking_from_history=False``, the setting for multi-turn RL): each turn's
    prompt is then a prefix of the next, where Hugging Face's template, which drops the
    blocks of turns before the last user message, is not. The generation prompt ends with
    the assistant header; the model writes its ``<think>`` block itself. Parsing undoes the
    framing: a reply with reasoning reads ``<think>{reasoning}</think>{answer}``, one with an
    empty block just ``{answer}`` (:func:`split_thinking` separates the two), so parsing a
    rendered message gives it back.
    """

    name = "qwen3"

    def render_message(self, message: Message, *, index: int) -> RenderedMessage:
        """ChatML's pieces, the assistant output opened by its framed thinking block."""
        rendered = super().render_message(message, index=index)
        if message.role != "assistant":
            return rendered
        reasoning, answer = split_thinking(message.content)
        block = f"{_THINK_OPEN}\n{reasoning or ''}\n{_THINK_CLOSE}\n\n"
        return RenderedMessage(header=rendered.header, output=block + answer + "<|im_end|>")

    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """ChatML's parse, with the thinking block unframed (see the class docstring); a
        reply cut off inside its block keeps its text as it is."""
        parsed = super().parse_response(tokens)
        reasoning, answer = split_thinking(parsed.message.content)
        if reasoning is None:
            return parsed
        content = f"{_THINK_OPEN}{reasoning}{_THINK_CLOSE}{answer}" if reasoning else answer
        return ParsedResponse(
            message=Message(role="assistant", content=content), termination=parsed.termination
        )


class Qwen3DisableThinkingRenderer(ChatMLRenderer):
    """Qwen3's chat template with thinking disabled (Hugging Face's
    ``enable_thinking=False``; tinker-cookbook's ``Qwen3DisableThinkingRenderer``)::

        <|im_start|>user\nHi<|im_end|>
        <|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>

    The empty thinking block is part of every assistant header, so the generation prompt
    already holds it and the model answers directly; it is not trained on. The answer is
    stripped of leading newlines, as the template does.

    Raises:
        RenderError: (when rendering) an assistant message holds a ``</think>`` block.
    """

    name = "qwen3_disable_thinking"

    def render_message(self, message: Message, *, index: int) -> RenderedMessage:
        """ChatML's pieces; an assistant header ends with the empty thinking block."""
        rendered = super().render_message(message, index=index)
        if message.role != "assistant":
            return rendered
        if _THINK_CLOSE in message.content:
            raise RenderError(
                f"message {index}: a thinking block in an assistant message, but thinking is "
                "disabled; use the 'qwen3' renderer"
            )
        return RenderedMessage(
            header=rendered.header + _EMPTY_THINKING,
            output=message.content.lstrip("\n") + "<|im_end|>",
        )


class JinjaRenderer(Renderer):
    """The model's own Jinja ``chat_template`` (for families without a renderer of their own).

    Needs an :class:`~crucible_kitchen.training.HfTokenizer` with a chat template and an EOS
    token; the template is rendered as ``transformers``' ``apply_chat_template`` renders it
    (see :class:`ChatTemplate`), with ``template_variables`` (``enable_thinking=False``, ...)
    passed to every render. The generation prompt is the template's own
    (``add_generation_prompt=True``), so only ``role="assistant"`` is prompted for. Sampling
    stops at the EOS token, and a reply is the text before it.

    Supervised examples are the template's text encoded as a whole, so their tokens are
    ``apply_chat_template``'s, up to the last message's EOS token (the newline, say, that a
    template writes after it is left out: the model stops before it). The pieces that
    ``train_on_what`` weighs are found by rendering every prefix of the conversation:
    message ``i`` is what rendering ``i + 1`` messages adds to rendering ``i``. An assistant
    message's header is what the generation prompt adds; another message's header is its
    text up to the last occurrence of its (stripped) content, or nothing if the template
    does not write the content as it is. The output runs to the first EOS token after the
    header (what the model writes, the stop token included); the text after it (before the
    next message) is weighted like a header; a leading BOS token is never trained. A parsed
    reply is stripped of surrounding whitespace.

    The template must be *prefix-stable*: rendering a longer conversation keeps the text (and
    tokens) of a shorter one, and an assistant message follows the generation prompt. Qwen3's
    template, which drops the reasoning of earlier turns, is not for multi-turn
    conversations; its :class:`Qwen3Renderer` is.

    Raises:
        RenderError: (when built) the tokenizer has no chat template or no EOS token.
        ChatTemplateError: the template does not compile.
    """

    name = "jinja"

    def __init__(self, tokenizer: ChatTokenizer, **template_variables: Any) -> None:
        """Bind the renderer to ``tokenizer`` and its chat template."""
        super().__init__(tokenizer)
        if not isinstance(tokenizer, HfTokenizer) or tokenizer.chat_template is None:
            raise RenderError(
                "the 'jinja' renderer needs a Hugging Face tokenizer with a chat_template"
            )
        if tokenizer.eos_token is None:
            raise RenderError("the 'jinja' renderer needs an EOS token to stop sampling at")
        self._stop_token = tokenizer.eos_token
        self._bos_token = tokenizer.bos_token
        self._template = ChatTemplate(
            tokenizer.chat_template,
            special_tokens={
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "pad_token": tokenizer.pad_token,
            },
        )
        self._variables = template_variables

    @property
    def template(self) -> ChatTemplate:
        """The chat template."""
        return self._template

    @property
    def has_extension_property(self) -> bool:
        """False: a template may rewrite the history (only checked per conversation)."""
        return False

    def render_text(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        """The template's text of ``messages``.

        Raises:
            ChatTemplateError: the template fails.
        """
        return self._template.render(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            **self._variables,
        )

    def stop_sequences(self) -> list[int]:
        """The id of the EOS token."""
        return [self._special_id(self._stop_token)]

    def parse_response(self, tokens: Sequence[int]) -> ParsedResponse:
        """Content before the EOS token, stripped of surrounding whitespace (which templates
        add around the content, or trim from it): ``STOP_SEQUENCE`` if there is exactly one
        EOS, ``MALFORMED`` otherwise."""
        parsed = self._parse_at_stop_token(tokens, self._stop_token)
        content = parsed.message.content.strip()
        return ParsedResponse(
            message=Message(role="assistant", content=content), termination=parsed.termination
        )

    def build_generation_prompt(
        self, messages: Sequence[Message], *, role: str = "assistant", prefill: str | None = None
    ) -> list[int]:
        """The template's text with its generation prompt, then ``prefill``, encoded.

        Raises:
            RenderError: a message is invalid, or ``role`` is not ``"assistant"``.
            ChatTemplateError: the template fails.
        """
        _check_messages(messages)
        if role != "assistant":
            raise RenderError(
                f"the 'jinja' renderer prompts only for assistant messages, not {role!r}"
            )
        tokens = self._tokenizer.encode(self.render_text(messages, add_generation_prompt=True))
        if prefill:
            tokens += self._tokenizer.encode(prefill)
        return tokens

    def _pieces(self, messages: Sequence[Message]) -> list[RenderedMessage]:
        """Each message's header, output and trailing text (as ``stop_overlap``), found by
        rendering the conversation's prefixes.

        Raises:
            ChatTemplateError: the template fails or is not prefix-stable.
        """
        pieces: list[RenderedMessage] = []
        previous = ""
        for index, message in enumerate(messages):
            text = self.render_text(messages[: index + 1], add_generation_prompt=False)
            if not text.startswith(previous):
                raise ChatTemplateError(
                    f"the chat template is not prefix-stable: rendering message {index} "
                    f"({message.role}) changes the text of the messages before it"
                )
            if message.role == "assistant":
                prompt = self.render_text(messages[:index], add_generation_prompt=True)
                if not (prompt.startswith(previous) and text.startswith(prompt)):
                    raise ChatTemplateError(
                        f"the chat template is not prefix-stable: message {index} (assistant) "
                        "does not follow its generation prompt"
                    )
                header_end = len(prompt)
            else:
                content = message.content.strip()
                found = text.rfind(content, len(previous)) if content else -1
                header_end = found if found >= 0 else len(previous)
            stop = text.find(self._stop_token, header_end)
            output_end = len(text) if stop < 0 else stop + len(self._stop_token)
            pieces.append(
                RenderedMessage(
                    header=text[len(previous) : header_end],
                    output=text[header_end:output_end],
                    stop_overlap=text[output_end:],
                )
            )
            previous = text
        return pieces

    def _build_example(
        self,
        messages: Sequence[Message],
        trained: Sequence[bool],
        *,
        train_headers: bool,
        what: str,
    ) -> SupervisedExample:
        segments: list[tuple[str, bool]] = []
        for piece, is_trained in zip(self._pieces(messages), trained, strict=True):
            segments += [
                (piece.header, train_headers),
                (piece.output, is_trained),
                (piece.stop_overlap, train_headers),
            ]
        segments.pop()  # the text after the last stop token, which the model never writes
        first = next((i for i, (segment, _) in enumerate(segments) if segment), None)
        if first is None:
            raise RenderError("the chat template renders this conversation as no text at all")
        bos, (segment, weight) = self._bos_token, segments[first]
        if bos and segment.startswith(bos):
            segments[first : first + 1] = [(bos, False), (segment[len(bos) :], weight)]
        tokens: list[int] = []
        weights: list[float] = []
        text = ""
        for segment, weight in segments:
            if not segment:
                continue
            text += segment
            encoded = self._tokenizer.encode(text)
            if encoded[: len(tokens)] != tokens:
                raise ChatTemplateError(
                    f"the chat template's text does not split into tokens at {segment!r}: a "
                    "token spans two pieces of the conversation"
                )
            weights += [1.0 if weight else 0.0] * (len(encoded) - len(tokens))
            tokens = encoded
        if not any(weights):
            raise RenderError(f"{what} selects no token of this conversation to train on")
        return SupervisedExample(tokens=tuple(tokens), weights=tuple(weights))


def renderer_for_chat_template(chat_template: str | None) -> str:
    """The renderer to use for a model with this chat template: ``"llama3"`` for Llama 3's
    headers (``<|start_header_id|>``), ``"qwen3"`` for ChatML with ``<think>`` blocks,
    ``"chatml"`` for ChatML (``<|im_start|>``: Qwen2, SmolLM2), ``"jinja"`` for any other
    template, ``"role_colon"`` for a model without one."""
    if chat_template is None:
        return RoleColonRenderer.name
    if "<|start_header_id|>" in chat_template:
        return Llama3Renderer.name
    if "<|im_start|>" in chat_template:
        return Qwen3Renderer.name if "<think>" in chat_template else ChatMLRenderer.name
    return JinjaRenderer.name


RENDERERS: Mapping[str, type[Renderer]] = {
    cls.name: cls
    for cls in (
        RoleColonRenderer,
        Llama3Renderer,
        ChatMLRenderer,
        Qwen3Renderer,
        Qwen3DisableThinkingRenderer,
        JinjaRenderer,
    )
}
"""Every renderer by name."""


def get_renderer(name: str, tokenizer: ChatTokenizer) -> Renderer:
    """The renderer called ``name`` (a key of :data:`RENDERERS`), bound to ``tokenizer``.

    Raises:
        RenderError: no renderer has that name, or the tokenizer lacks its special tokens.
    """
    try:
        renderer_class = RENDERERS[name]
    except KeyError:
        raise RenderError(
            f"unknown renderer {name!r}; expected one of {', '.join(sorted(RENDERERS))}"
        ) from None
    return renderer_class(tokenizer)


def build_text_completion_example(
    tokenizer: ChatTokenizer,
    prompt: str,
    completion: str,
    *,
    add_bos: bool = True,
    add_eos: bool = True,
) -> SupervisedExample:
    """A plain-text (non-chat) prompt/completion example, trained on the completion only.

    Tokens: ``[BOS] + encode(prompt) + encode(completion) + [EOS]``; weight 1 on the
    completion and EOS, 0 elsewhere.

    Raises:
        RenderError: BOS/EOS is asked for but the tokenizer has none, or nothing is trained.
    """
    tokens: list[int] = []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise RenderError("add_bos=True but the tokenizer has no BOS token")
        tokens.append(tokenizer.bos_token_id)
    tokens += tokenizer.encode(prompt)
    num_prompt_tokens = len(tokens)
    tokens += tokenizer.encode(completion)
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise RenderError("add_eos=True but the tokenizer has no EOS token")
        tokens.append(tokenizer.eos_token_id)
    if len(tokens) == num_prompt_tokens:
        raise RenderError("the completion is empty and add_eos=False: nothing to train on")
    weights = [0.0] * num_prompt_tokens + [1.0] * (len(tokens) - num_prompt_tokens)
    return SupervisedExample(tokens=tuple(tokens), weights=tuple(weights))
