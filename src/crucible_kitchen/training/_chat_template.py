"""A Hugging Face Jinja chat template, compiled and rendered the way ``transformers`` does.

``jinja2`` (installed with torch, in the ``torch`` extra) is imported only when a template is
compiled.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from crucible_kitchen.errors import ChatTemplateError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import jinja2

__all__ = ("ChatTemplate",)


class ChatTemplate:
    """A model's ``chat_template``, rendered with Hugging Face's conventions.

    The template runs in ``jinja2``'s ``ImmutableSandboxedEnvironment`` with ``trim_blocks``,
    ``lstrip_blocks`` and the loop controls, a ``tojson`` filter that keeps non-ASCII text,
    and the globals ``raise_exception(message)`` and ``strftime_now(format)``: what
    ``transformers``' ``apply_chat_template`` provides. A render sees ``messages`` (a list of
    ``{"role", "content"}`` dicts), ``add_generation_prompt``, ``tools=None``,
    ``documents=None``, the special tokens given here (``bos_token``, ``eos_token``, ...) and
    any other variables (``enable_thinking``, ``date_string``, ...), which may override them.

    Raises:
        ChatTemplateError: (when built) the template does not compile.
    """

    def __init__(self, source: str, *, special_tokens: Mapping[str, str | None]) -> None:
        import jinja2.ext
        import jinja2.sandbox

        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template: jinja2.Template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc
        self._source = source
        self._special_tokens = {k: v for k, v in special_tokens.items() if v is not None}

    @property
    def source(self) -> str:
        """The template's text."""
        return self._source

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        **variables: Any,
    ) -> str:
        """The text of ``messages``, followed by the generation prompt if asked for.

        Raises:
            ChatTemplateError: the template fails (its ``raise_exception`` included).
        """
        import jinja2

        try:
            return self._template.render(
                {
                    "tools": None,
                    "documents": None,
                    **self._special_tokens,
                    **variables,
                    "messages": [dict(message) for message in messages],
                    "add_generation_prompt": add_generation_prompt,
                }
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed: {exc}") from exc


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> NoReturn:
    import jinja2

    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)
