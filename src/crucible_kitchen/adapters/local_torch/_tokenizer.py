"""The Tokenizer port over ``training``'s byte-level, BPE and Hugging Face tokenizers, savable
with a run.

This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from crucible_kitchen._files import atomic_write, is_hf_model_dir
from crucible_kitchen.errors import ConfigError, InvalidRequest, TrainingInputError
from crucible_kitchen.training import (
    BOS_TOKEN,
    EOS_TOKEN,
    SPECIAL_TOKENS,
    BpeTokenizer,
    ByteTokenizer,
    HfTokenizer,
    default_bpe_tokenizer,
    load_hf_tokenizer,
    renderer_for_chat_template,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.training import ChatTokenizer

__all__ = ("LocalTokenizer", "default_tokenizer_for")

_PORT: Final = "tokenizer"
_FORMAT: Final = "crucible-kitchen/tokenizer"
_FORMAT_VERSION: Final = 1


class LocalTokenizer:
    """Implements :class:`~crucible_kitchen.ports.Tokenizer` over a ``training`` tokenizer.

    ``encode(text)`` adds the BOS token first (if the tokenizer has one) unless
    ``add_special_tokens=False``; special-token strings in the text become their single ids.
    ``decode`` writes special tokens as their strings unless ``skip_special_tokens``. The
    wrapped tokenizer (a :class:`~crucible_kitchen.training.ChatTokenizer`, which adds no
    BOS of its own) is :attr:`chat_tokenizer`, for renderers.

    Build one with :meth:`byte`, :meth:`bpe`, :meth:`hf` (a model's own tokenizer) or
    :meth:`load`; :meth:`save` writes it next to a run's checkpoints.
    """

    def __init__(self, inner: ByteTokenizer | BpeTokenizer) -> None:
        self._inner = inner
        self._special_ids = frozenset(
            token_id
            for token in inner.special_tokens
            if (token_id := inner.special_token_id(token)) is not None
        )
        self._spec = _spec_of(inner)
        digest = hashlib.sha256(json.dumps(self._spec, sort_keys=True).encode()).hexdigest()
        self._tokenizer_id = f"{self._spec['kind']}-{digest[:16]}"

    @classmethod
    def byte(
        cls,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        *,
        bos_token: str | None = BOS_TOKEN,
        eos_token: str | None = EOS_TOKEN,
    ) -> LocalTokenizer:
        """A byte-level tokenizer: ids 0-255 are bytes, the special tokens follow.

        Raises:
            ConfigError: the special tokens are invalid.
        """
        try:
            return cls(ByteTokenizer(special_tokens, bos_token=bos_token, eos_token=eos_token))
        except TrainingInputError as exc:
            raise ConfigError([f"tokenizer: {exc}"], source="tokenizer") from exc

    @classmethod
    def bpe(cls, path: str | os.PathLike[str] | None = None) -> LocalTokenizer:
        """A BPE tokenizer: the default one trained on the bundled corpus, or a saved one.

        ``path`` is a Hugging Face ``tokenizer.json`` (BOS ``<|bos|>``, EOS ``<|eos|>``).

        Raises:
            ConfigError: the file cannot be read or is not a tokenizer.
        """
        if path is None:
            return cls(default_bpe_tokenizer())
        try:
            return cls(BpeTokenizer.load(path))
        except (OSError, TrainingInputError) as exc:
            raise ConfigError([f"tokenizer: {path}: {exc}"], source="tokenizer") from exc

    @classmethod
    def hf(cls, path: str | os.PathLike[str]) -> LocalTokenizer:
        """A Hugging Face model's own tokenizer: its directory or its ``tokenizer.json``
        (see :func:`~crucible_kitchen.training.load_hf_tokenizer`).

        Raises:
            TokenizerFileError: a file is missing or corrupt (a :class:`ConfigError`).
        """
        return cls(load_hf_tokenizer(path))

    @classmethod
    def named(cls, name: str | os.PathLike[str]) -> LocalTokenizer:
        """``"byte"`` or ``"bpe"`` (the defaults of :meth:`byte` and :meth:`bpe`), or the path
        of a Hugging Face model directory or ``tokenizer.json`` (:meth:`hf`).

        Raises:
            ConfigError: another name, or a bad tokenizer file.
        """
        if name == "byte":
            return cls.byte()
        if name == "bpe":
            return cls.bpe()
        if Path(name).exists():
            return cls.hf(name)
        raise ConfigError(
            [
                f"tokenizer: unknown name {str(name)!r}; expected 'byte', 'bpe' or the path of a "
                "Hugging Face model directory or tokenizer.json"
            ]
        )

    @property
    def chat_tokenizer(self) -> ChatTokenizer:
        """The wrapped tokenizer, as renderers use it (no BOS added by ``encode``)."""
        return self._inner

    @property
    def chat_template(self) -> str | None:
        """The model's Jinja chat template (Hugging Face tokenizers only)."""
        return self._inner.chat_template if isinstance(self._inner, HfTokenizer) else None

    @property
    def default_renderer(self) -> str:
        """The renderer that fits this tokenizer: for a Hugging Face tokenizer, its model
        family's (:func:`~crucible_kitchen.training.renderer_for_chat_template`); otherwise
        ``"chatml"``, whose markup the byte and BPE tokenizers carry."""
        if isinstance(self._inner, HfTokenizer):
            return renderer_for_chat_template(self._inner.chat_template)
        return "chatml"

    @property
    def tokenizer_id(self) -> str:
        """A stable id of this exact tokenizer: kind plus a digest of its definition."""
        return self._tokenizer_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._inner.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence token."""
        return self._inner.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-sequence token."""
        return self._inner.eos_token_id

    def special_token_id(self, token: str) -> int | None:
        """Id of the special token spelled ``token``, or ``None``."""
        return self._inner.special_token_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """The token ids of ``text``, after the BOS token if ``add_special_tokens``."""
        ids = self._inner.encode(text)
        bos = self._inner.bos_token_id
        return [bos, *ids] if add_special_tokens and bos is not None else ids

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``token_ids``.

        Raises:
            InvalidRequest: an id is outside the vocabulary.
        """
        ids = list(token_ids)
        if skip_special_tokens:
            ids = [token for token in ids if token not in self._special_ids]
        try:
            return self._inner.decode(ids)
        except TrainingInputError as exc:
            raise InvalidRequest(str(exc), port=_PORT, operation="decode") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to ``path`` as JSON, atomically (see :func:`atomic_write`)."""
        target = Path(path)
        content = json.dumps(
            {"format": _FORMAT, "format_version": _FORMAT_VERSION, **self._spec}, indent=1
        )
        atomic_write(target, content.encode())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalTokenizer:
        """Read a tokenizer written by :meth:`save`.

        Raises:
            ConfigError: the file cannot be read, or is not a saved tokenizer.
        """
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError([f"tokenizer: {path}: {exc}"], source="tokenizer") from exc
        if not isinstance(spec, dict) or spec.get("format") != _FORMAT:
            raise ConfigError([f"tokenizer: {path} is not a saved tokenizer"], source="tokenizer")
        try:
            if spec["kind"] == "byte":
                inner: ByteTokenizer | BpeTokenizer = ByteTokenizer(
                    spec["special_tokens"], bos_token=spec["bos_token"], eos_token=spec["eos_token"]
                )
            elif spec["kind"] == "hf":
                inner = HfTokenizer.from_json(spec["tokenizer_json"], **spec["config"])
            elif spec["kind"] == "bpe":
                inner = BpeTokenizer.from_json(
                    spec["tokenizer_json"], bos_token=spec["bos_token"], eos_token=spec["eos_token"]
                )
            else:
                raise ValueError(f"unknown kind {spec['kind']!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError([f"tokenizer: {path}: {exc!r}"], source="tokenizer") from exc
        return cls(inner)

    def __repr__(self) -> str:
        return f"LocalTokenizer({self._tokenizer_id}, vocab_size={self.vocab_size})"


def _token_of(inner: ByteTokenizer | BpeTokenizer, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    for token in inner.special_tokens:
        if inner.special_token_id(token) == token_id:
            return token
    raise ValueError(f"special token id {token_id} has no string")  # pragma: no cover


def _spec_of(inner: ByteTokenizer | BpeTokenizer) -> dict[str, Any]:
    """What defines the tokenizer, JSON-ready: enough to rebuild it exactly."""
    spec: dict[str, Any] = {
        "bos_token": _token_of(inner, inner.bos_token_id),
        "eos_token": _token_of(inner, inner.eos_token_id),
    }
    if isinstance(inner, ByteTokenizer):
        return {"kind": "byte", "special_tokens": list(inner.special_tokens), **spec}
    if isinstance(inner, HfTokenizer):
        config = {
            "bos_token": inner.bos_token,
            "eos_token": inner.eos_token,
            "pad_token": inner.pad_token,
            "chat_template": inner.chat_template,
        }
        return {"kind": "hf", "tokenizer_json": inner.to_json(), "config": config}
    return {"kind": "bpe", "tokenizer_json": inner.to_json(), **spec}


def default_tokenizer_for(model: object) -> str:
    """The tokenizer a model comes with: the directory itself for a Hugging Face model
    directory (a directory with ``config.json``) that holds a ``tokenizer.json``, else
    ``"byte"``."""
    if (
        isinstance(model, str | os.PathLike)
        and is_hf_model_dir(model)
        and (Path(model) / "tokenizer.json").is_file()
    ):
        return os.fspath(model)
    return "byte"
