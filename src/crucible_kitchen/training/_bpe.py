"""A byte-level BPE tokenizer trained locally with the ``tokenizers`` library.

``tokenizers`` (part of the ``torch`` extra) is imported only when a BPE tokenizer is trained
or loaded, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from crucible_kitchen._files import atomic_write
from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.training._corpus import bundled_corpus
from crucible_kitchen.training._tokenizer import BOS_TOKEN, EOS_TOKEN, SPECIAL_TOKENS

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Sequence

    import tokenizers

__all__ = ("DEFAULT_BPE_VOCAB_SIZE", "BpeTokenizer", "default_bpe_tokenizer", "train_bpe_tokenizer")

DEFAULT_BPE_VOCAB_SIZE = 1024


class BpeTokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) backed by a ``tokenizers.Tokenizer``.

    Any text round-trips: ``decode(encode(text)) == text``. Special tokens are matched in the
    text and written back by ``decode``. The file format is the Hugging Face
    ``tokenizer.json``, so a saved tokenizer also loads with ``tokenizers.Tokenizer.from_file``;
    that format does not record which special token is BOS or EOS, so :meth:`load` takes them
    as arguments.

    Satisfies :class:`~crucible_kitchen.training.ChatTokenizer`.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = BOS_TOKEN,
        eos_token: str | None = EOS_TOKEN,
    ) -> None:
        """Wrap a trained ``tokenizers.Tokenizer``.

        Raises:
            TrainingInputError: ``bos_token`` or ``eos_token`` is not a special token of
                ``backend``.
        """
        self._backend = backend
        self._special_ids = {
            added.content: token_id
            for token_id, added in backend.get_added_tokens_decoder().items()
            if added.special
        }
        for role, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if token is not None and token not in self._special_ids:
                raise TrainingInputError(
                    f"{role} {token!r} is not a special token of this tokenizer; "
                    f"its special tokens are {sorted(self._special_ids)}"
                )
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._vocab_size

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The special tokens, in id order."""
        return tuple(sorted(self._special_ids, key=self._special_ids.__getitem__))

    @property
    def bos_token_id(self) -> int | None:
        """Id of the begin-of-sequence token, if any."""
        return None if self._bos_token is None else self._special_ids[self._bos_token]

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-sequence token, if any."""
        return None if self._eos_token is None else self._special_ids[self._eos_token]

    def special_token_id(self, token: str) -> int | None:
        """Id of the special token ``token``, or ``None``."""
        return self._special_ids.get(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings become their ids; no BOS/EOS added."""
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``, special tokens included.

        Raises:
            TrainingInputError: an id is outside ``[0, vocab_size)``.
        """
        for position, token_id in enumerate(token_ids):
            if not 0 <= token_id < self._vocab_size:
                raise TrainingInputError(
                    f"token id {token_id} at position {position} is outside the vocabulary "
                    f"[0, {self._vocab_size})"
                )
        return self._backend.decode(list(token_ids), skip_special_tokens=False)

    def to_json(self) -> str:
        """The tokenizer as Hugging Face ``tokenizer.json`` text (deterministic)."""
        return self._backend.to_str(pretty=True)

    @classmethod
    def from_json(
        cls, text: str, *, bos_token: str | None = BOS_TOKEN, eos_token: str | None = EOS_TOKEN
    ) -> BpeTokenizer:
        """Rebuild a tokenizer from :meth:`to_json` text.

        Raises:
            TrainingInputError: the text is not a valid tokenizer, or lacks the BOS/EOS tokens.
        """
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TrainingInputError(f"not a valid tokenizer.json: {exc}") from exc
        return cls(backend, bos_token=bos_token, eos_token=eos_token)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to ``path`` atomically (see :func:`atomic_write`)."""
        target = Path(path)
        atomic_write(target, self.to_json().encode())
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        bos_token: str | None = BOS_TOKEN,
        eos_token: str | None = EOS_TOKEN,
    ) -> BpeTokenizer:
        """Read a tokenizer written by :meth:`save` (or any byte-level ``tokenizer.json``).

        Raises:
            TrainingInputError: the file is not a valid tokenizer, or lacks the BOS/EOS tokens.
            OSError: the file cannot be read.
        """
        return cls.from_json(
            Path(path).read_text(encoding="utf-8"), bos_token=bos_token, eos_token=eos_token
        )

    def __repr__(self) -> str:
        return f"BpeTokenizer(vocab_size={self.vocab_size})"


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = DEFAULT_BPE_VOCAB_SIZE,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    bos_token: str | None = BOS_TOKEN,
    eos_token: str | None = EOS_TOKEN,
) -> BpeTokenizer:
    """Train a byte-level BPE tokenizer; deterministic for the same texts and arguments.

    Ids ``0 .. len(special_tokens) - 1`` are the special tokens in the order given, the next
    256 ids the byte alphabet, then the merges in the order learned. Training stops early,
    with a smaller vocabulary, when no pair occurs ``min_frequency`` times any more.

    Args:
        texts: Training texts; by default the bundled corpus, one paragraph per text.
        vocab_size: Upper bound on the vocabulary, special tokens and bytes included.
        min_frequency: A pair must occur this often to be merged.
        special_tokens: Strings that always encode to one id and are never merged.
        bos_token: Which special token is BOS (``None`` for none).
        eos_token: Which special token is EOS (``None`` for none).

    Raises:
        TrainingInputError: ``vocab_size`` cannot hold the special tokens and the 256 bytes,
            the special tokens are empty or repeated, or BOS/EOS is not among them.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if any(not token for token in special_tokens):
        raise TrainingInputError("special tokens must be non-empty strings")
    if len(set(special_tokens)) != len(special_tokens):
        raise TrainingInputError(f"special tokens must be unique: {list(special_tokens)}")
    minimum = len(special_tokens) + 256
    if vocab_size < minimum:
        raise TrainingInputError(
            f"vocab_size must be at least {minimum} (the special tokens plus 256 bytes), "
            f"got {vocab_size}"
        )
    corpus = list(texts) if texts is not None else bundled_corpus().split("\n\n")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return BpeTokenizer(backend, bos_token=bos_token, eos_token=eos_token)


@functools.cache
def default_bpe_tokenizer() -> BpeTokenizer:
    """The BPE tokenizer trained with default arguments on the bundled corpus.

    Trained once per process (about 0.1 s) and shared: do not mutate its ``backend``.
    """
    return train_bpe_tokenizer()
