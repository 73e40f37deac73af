"""The JSON form of a run's config, shared by ``config.json`` and the run-start event.

A bottom-level module like :mod:`crucible_kitchen.errors`: it imports nothing from
crucible-kitchen, and every layer may import it.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ("config_json",)


def config_json(config: Any) -> dict[str, Any]:
    """``config`` as a JSON object.

    A pydantic model gives its JSON dump, a mapping what JSON makes of it (string keys, lists
    for tuples, ``null`` for non-finite floats); any other value is wrapped as
    ``{"config": value}``. Values that JSON cannot hold become their ``repr``.
    """
    dump = getattr(config, "model_dump", None)
    value = dump(mode="json") if callable(dump) else config
    value = msgspec.json.decode(msgspec.json.encode(value, enc_hook=repr))
    return value if isinstance(value, dict) else {"config": value}
