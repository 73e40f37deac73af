"""A byte-level tokenizer: every UTF-8 byte is one token, after four special tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen.errors import InvalidRequest

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("NoopTokenizer",)

_SPECIALS: Final = ("<pad>", "<s>", "</s>", "<unk>")
_OFFSET: Final = len(_SPECIALS)


class NoopTokenizer:
    """Token ``b + 4`` is byte ``b``; 0-3 are pad, bos, eos and unk. Exactly invertible."""

    @property
    def vocab_size(self) -> int:
        """260: four special tokens and 256 bytes."""
        return _OFFSET + 256

    @property
    def pad_token_id(self) -> int:
        """0."""
        return 0

    @property
    def bos_token_id(self) -> int:
        """1."""
        return 1

    @property
    def eos_token_id(self) -> int:
        """2."""
        return 2

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The UTF-8 bytes of ``text`` as tokens, after a bos token if ``add_special_tokens``."""
        tokens = [byte + _OFFSET for byte in text.encode()]
        return [self.bos_token_id, *tokens] if add_special_tokens else tokens

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``token_ids``; special tokens read ``<s>``, ``</s>``, ... unless skipped.

        Raises:
            InvalidRequest: a token id is outside the vocabulary.
        """
        pieces: list[str] = []
        run = bytearray()
        for index, token in enumerate(token_ids):
            if not 0 <= token < self.vocab_size:
                raise InvalidRequest(
                    f"token {index} is {token}, outside the vocabulary of {self.vocab_size}",
                    port="tokenizer",
                    operation="decode",
                )
            if token >= _OFFSET:
                run.append(token - _OFFSET)
                continue
            pieces.append(run.decode(errors="replace"))
            run.clear()
            if not skip_special_tokens:
                pieces.append(_SPECIALS[token])
        pieces.append(run.decode(errors="replace"))
        return "".join(pieces)
