"""A Hugging Face tokenizer (what the SDK's ``get_tokenizer`` returns) as the Tokenizer port."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("HfTokenizer",)


class HfTokenizer:
    """Implements :class:`~crucible_kitchen.ports.Tokenizer` over a ``transformers`` tokenizer.

    ``vocab_size`` counts the added tokens too (``len(tokenizer)``), as the port requires
    every id to be below it.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def vocab_size(self) -> int:
        """See :attr:`crucible_kitchen.ports.Tokenizer.vocab_size`."""
        return len(self.inner)

    @property
    def bos_token_id(self) -> int | None:
        """See :attr:`crucible_kitchen.ports.Tokenizer.bos_token_id`."""
        token_id = self.inner.bos_token_id
        return None if token_id is None else int(token_id)

    @property
    def eos_token_id(self) -> int | None:
        """See :attr:`crucible_kitchen.ports.Tokenizer.eos_token_id`."""
        token_id = self.inner.eos_token_id
        return None if token_id is None else int(token_id)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """See :meth:`crucible_kitchen.ports.Tokenizer.encode`."""
        return [int(t) for t in self.inner.encode(text, add_special_tokens=add_special_tokens)]

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """See :meth:`crucible_kitchen.ports.Tokenizer.decode`."""
        return str(self.inner.decode(list(token_ids), skip_special_tokens=skip_special_tokens))
