"""What a renderer needs from a tokenizer, and the special tokens our own tokenizers carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = (
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "ChatTokenizer",
)

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"

SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    # Llama 3 template
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    # ChatML (Qwen) template
    "<|im_start|>",
    "<|im_end|>",
)
"""The special tokens of :class:`ByteTokenizer` and :class:`BpeTokenizer` by default, in id
order: generic padding / begin / end of sequence, then the markers of every bundled template."""


@runtime_checkable
class ChatTokenizer(Protocol):
    """The tokenizer contract renderers rely on.

    ``encode`` must turn every special-token string that occurs in the text into that single
    special id (so a renderer can write ``"<|im_start|>"`` into a template), and must add no
    BOS/EOS of its own. ``decode`` must write special tokens back as their strings, so that
    ``decode(encode(text)) == text`` for any text.
    """

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; ids are ``0 .. vocab_size - 1``."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """Id of the begin-of-sequence token, if the tokenizer has one."""
        ...

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-sequence token, if the tokenizer has one."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings become their single ids."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids``, special tokens written as their strings."""
        ...

    def special_token_id(self, token: str) -> int | None:
        """Id of the special token spelled ``token``, or ``None`` if it is not special here."""
        ...
