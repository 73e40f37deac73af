"""The tokenizer port: text to token ids and back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("Tokenizer",)


class Tokenizer(Protocol):
    """Turns text into token ids and back; a Hugging Face tokenizer satisfies it.

    Pure and synchronous: no method does I/O.
    """

    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id is in ``range(vocab_size)``."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence token, if the model has one."""
        ...

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-sequence token, if the model has one."""
        ...

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The token ids of ``text``, with the model's special tokens if asked."""
        ...

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``token_ids``.

        ``decode(encode(t, add_special_tokens=False))`` gives back plain text ``t``.
        """
        ...
