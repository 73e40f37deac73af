"""A Hugging Face tokenizer read from a model directory: ``tokenizer.json`` through the
``tokenizers`` library, special tokens and the chat template from ``tokenizer_config.json``.

``tokenizers`` (part of the ``torch`` extra) is imported only when a tokenizer is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from crucible_kitchen.errors import TokenizerFileError, TrainingInputError
from crucible_kitchen.training._bpe import BpeTokenizer

if TYPE_CHECKING:
    import os

    import tokenizers

__all__ = ("TOKENIZER_CONFIG_FILE", "TOKENIZER_FILE", "HfTokenizer", "load_hf_tokenizer")

TOKENIZER_FILE: Final = "tokenizer.json"
TOKENIZER_CONFIG_FILE: Final = "tokenizer_config.json"
_CHAT_TEMPLATE_FILE: Final = "chat_template.jinja"


class HfTokenizer(BpeTokenizer):
    """A model's own tokenizer: its ``tokenizer.json`` with the BOS, EOS and padding tokens
    and the Jinja ``chat_template`` its ``tokenizer_config.json`` names.

    ``encode`` adds no BOS/EOS (the ``post_processor`` of ``tokenizer.json`` is not applied);
    every added token, special or not (Qwen3's ``<think>``), is matched in the text. Text
    round-trips through ``encode`` and ``decode`` when the model's tokenizer is byte-level (Llama
    3, Qwen, SmolLM2); one with a normalizer or an unknown token (SentencePiece-style Llama 2,
    Mistral) may change some text, as it does in ``transformers``.
    :meth:`special_token_id` knows the tokens marked special. Build one with
    :func:`load_hf_tokenizer`.

    Satisfies :class:`~crucible_kitchen.training.ChatTokenizer`.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None,
        eos_token: str | None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        """Wrap ``backend``.

        Raises:
            TrainingInputError: ``bos_token``, ``eos_token`` or ``pad_token`` is not a token of
                ``backend`` marked special.
        """
        super().__init__(backend, bos_token=bos_token, eos_token=eos_token)
        if pad_token is not None and self.special_token_id(pad_token) is None:
            raise TrainingInputError(
                f"pad_token {pad_token!r} is not a special token of this tokenizer"
            )
        self._pad_token = pad_token
        self._chat_template = chat_template

    @property
    def bos_token(self) -> str | None:
        """The begin-of-sequence token's text (the template's ``bos_token``)."""
        return self._bos_token

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token's text (the template's ``eos_token``)."""
        return self._eos_token

    @property
    def pad_token(self) -> str | None:
        """The padding token's text, if the model names one."""
        return self._pad_token

    @property
    def pad_token_id(self) -> int | None:
        """Id of the padding token, if any."""
        return None if self._pad_token is None else self.special_token_id(self._pad_token)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template, if the model has one."""
        return self._chat_template

    @classmethod
    def from_json(
        cls,
        text: str,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> HfTokenizer:
        """Rebuild a tokenizer from ``tokenizer.json`` text and its configuration.

        Raises:
            TrainingInputError: the text is not a valid tokenizer, or lacks a named token.
        """
        backend = BpeTokenizer.from_json(text, bos_token=None, eos_token=None).backend
        return cls(
            backend,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            chat_template=chat_template,
        )

    def __repr__(self) -> str:
        return f"HfTokenizer(vocab_size={self.vocab_size}, bos={self._bos_token!r}, " + (
            f"eos={self._eos_token!r})"
        )


def load_hf_tokenizer(path: str | os.PathLike[str]) -> HfTokenizer:
    """Read a Hugging Face tokenizer: a model directory or its ``tokenizer.json``.

    From a directory, ``tokenizer.json`` and ``tokenizer_config.json`` are both required;
    given a ``tokenizer.json`` file, a ``tokenizer_config.json`` beside it is read if there is
    one. The configuration gives ``bos_token``, ``eos_token``, ``pad_token`` (each a string or
    an ``AddedToken`` object), ``added_tokens_decoder`` (tokens by id, each special or not as
    it says, added when ``tokenizer.json`` lacks them, as ``transformers`` does) and
    ``chat_template`` (a string, or a list of named templates of
    which ``"default"`` is taken); a ``chat_template.jinja`` file beside it is read when the
    configuration has none (newer ``transformers`` write the template there).

    Raises:
        TokenizerFileError: a required file is missing, unreadable or not what it should be
            (not JSON, not a tokenizer, a named token that is not special, an added token
            whose id differs); names the file.
    """
    location = Path(path)
    if location.is_dir():
        tokenizer_file = location / TOKENIZER_FILE
        required_config = location / TOKENIZER_CONFIG_FILE
        if not required_config.is_file():
            raise TokenizerFileError("no such file", path=str(required_config))
        config_file: Path | None = required_config
    else:
        tokenizer_file = location
        config_file = location.with_name(TOKENIZER_CONFIG_FILE)
        if not config_file.is_file():
            config_file = None
    text = _read_text(tokenizer_file)
    config = {} if config_file is None else _read_config(config_file)
    template = _chat_template(config, config_file)
    try:
        backend = BpeTokenizer.from_json(text, bos_token=None, eos_token=None).backend
    except TrainingInputError as exc:
        raise TokenizerFileError(str(exc), path=str(tokenizer_file)) from exc
    if config_file is not None:
        _add_tokens(backend, config.get("added_tokens_decoder", {}), config_file)
    try:
        return HfTokenizer(
            backend,
            bos_token=_token_text(config, "bos_token", config_file),
            eos_token=_token_text(config, "eos_token", config_file),
            pad_token=_token_text(config, "pad_token", config_file),
            chat_template=template,
        )
    except TrainingInputError as exc:
        raise TokenizerFileError(str(exc), path=str(config_file or tokenizer_file)) from exc


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerFileError("no such file", path=str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerFileError(f"cannot be read: {exc}", path=str(file)) from exc


def _read_config(file: Path) -> dict[str, Any]:
    try:
        config = json.loads(_read_text(file))
    except ValueError as exc:
        raise TokenizerFileError(f"not valid JSON: {exc}", path=str(file)) from exc
    if not isinstance(config, dict):
        raise TokenizerFileError("not a JSON object", path=str(file))
    return config


def _add_tokens(backend: tokenizers.Tokenizer, entries: Any, file: Path) -> None:
    """Make ``backend`` hold each ``{id: {"content", "special", ...}}`` entry at its id."""
    from tokenizers import AddedToken

    if not isinstance(entries, dict):
        raise TokenizerFileError("added_tokens_decoder must be an object", path=str(file))
    present = backend.get_added_tokens_decoder()
    for key, entry in entries.items():
        try:
            token_id, content = int(key), entry["content"]
            special = bool(entry.get("special", False))
            token = AddedToken(
                content,
                special=special,
                single_word=bool(entry.get("single_word", False)),
                lstrip=bool(entry.get("lstrip", False)),
                rstrip=bool(entry.get("rstrip", False)),
                normalized=bool(entry.get("normalized", not special)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenizerFileError(
                f"added_tokens_decoder entry {key!r} is not a token: {exc!r}", path=str(file)
            ) from exc
        known = present.get(token_id)
        if known is not None and (known.content, known.special) == (content, special):
            continue
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        actual = backend.token_to_id(content)
        if actual != token_id:
            raise TokenizerFileError(
                f"added token {content!r} has id {actual} in tokenizer.json, not {token_id}",
                path=str(file),
            )


def _token_text(config: dict[str, Any], key: str, file: Path | None) -> str | None:
    """A special token of the configuration: a string, or an ``AddedToken``'s ``content``."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise TokenizerFileError(f"{key} must be a string, got {value!r}", path=str(file))


def _chat_template(config: dict[str, Any], file: Path | None) -> str | None:
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {
            entry.get("name"): entry.get("template") for entry in value if isinstance(entry, dict)
        }
        value = named.get("default")
    if value is None and file is not None:
        jinja_file = file.with_name(_CHAT_TEMPLATE_FILE)
        if jinja_file.is_file():
            return _read_text(jinja_file)
    if value is None or isinstance(value, str):
        return value
    raise TokenizerFileError(
        "chat_template must be a string or a list of named templates with a 'default'",
        path=str(file),
    )
