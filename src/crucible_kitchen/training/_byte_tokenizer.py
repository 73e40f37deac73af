"""A byte-level tokenizer: ids 0-255 are the UTF-8 bytes, special tokens follow."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.training._tokenizer import BOS_TOKEN, EOS_TOKEN, SPECIAL_TOKENS

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("ByteTokenizer",)

_NUM_BYTES = 256


class ByteTokenizer:
    """Tokenizes text into its UTF-8 bytes; needs no training and no files.

    Ids ``0..255`` are the bytes, ids ``256..`` the special tokens in the order given. Special
    token strings found in the text are encoded as their single ids (longest match first).
    Decoding an id sequence that cuts a multi-byte character yields U+FFFD for the broken
    bytes, the usual behaviour for sampled text.

    Satisfies :class:`~crucible_kitchen.training.ChatTokenizer`.
    """

    def __init__(
        self,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        *,
        bos_token: str | None = BOS_TOKEN,
        eos_token: str | None = EOS_TOKEN,
    ) -> None:
        """Build the tokenizer.

        Raises:
            TrainingInputError: a special token is empty or repeated, or ``bos_token`` /
                ``eos_token`` is not one of the special tokens.
        """
        if any(not token for token in special_tokens):
            raise TrainingInputError("special tokens must be non-empty strings")
        if len(set(special_tokens)) != len(special_tokens):
            raise TrainingInputError(f"special tokens must be unique: {list(special_tokens)}")
        self._special_ids = {token: _NUM_BYTES + i for i, token in enumerate(special_tokens)}
        self._special_strings = tuple(special_tokens)
        for role, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if token is not None and token not in self._special_ids:
                raise TrainingInputError(f"{role} {token!r} is not one of the special tokens")
        self._bos_token_id = None if bos_token is None else self._special_ids[bos_token]
        self._eos_token_id = None if eos_token is None else self._special_ids[eos_token]
        # Longest first, so a special token that contains another one wins.
        by_length = sorted(special_tokens, key=len, reverse=True)
        self._special_pattern = (
            re.compile("|".join(re.escape(token) for token in by_length)) if by_length else None
        )

    @property
    def vocab_size(self) -> int:
        """256 byte ids plus the special tokens."""
        return _NUM_BYTES + len(self._special_strings)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The special tokens, in id order (the first one has id 256)."""
        return self._special_strings

    @property
    def bos_token_id(self) -> int | None:
        """Id of the begin-of-sequence token, if any."""
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-sequence token, if any."""
        return self._eos_token_id

    def special_token_id(self, token: str) -> int | None:
        """Id of the special token ``token``, or ``None``."""
        return self._special_ids.get(token)

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``, with every special-token string replaced by its id."""
        if self._special_pattern is None:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        position = 0
        for match in self._special_pattern.finditer(text):
            ids.extend(text[position : match.start()].encode("utf-8"))
            ids.append(self._special_ids[match.group()])
            position = match.end()
        ids.extend(text[position:].encode("utf-8"))
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``; special ids become their strings.

        Raises:
            TrainingInputError: an id is outside ``[0, vocab_size)``.
        """
        parts: list[str] = []
        pending = bytearray()
        for position, token_id in enumerate(token_ids):
            if 0 <= token_id < _NUM_BYTES:
                pending.append(token_id)
            elif _NUM_BYTES <= token_id < self.vocab_size:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                parts.append(self._special_strings[token_id - _NUM_BYTES])
            else:
                raise TrainingInputError(
                    f"token id {token_id} at position {position} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"
