"""Hypothesis strategies built from msgspec Struct definitions, honouring their constraints."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import msgspec
from hypothesis import strategies as st

_INT64 = (-(2**63), 2**63 - 1)


def _constraints(annotation: Any) -> tuple[Any, list[msgspec.Meta]]:
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, [m for m in extras if isinstance(m, msgspec.Meta)]
    return annotation, []


def for_type(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of ``annotation`` that msgspec will accept back when decoding."""
    base, metas = _constraints(annotation)
    bounds = {
        k: getattr(m, k)
        for m in metas
        for k in ("ge", "gt", "le", "lt", "min_length", "max_length")
        if getattr(m, k) is not None
    }
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        return st.one_of(*(for_type(arg) for arg in typing.get_args(base)))
    if origin is Literal:
        return st.sampled_from(typing.get_args(base))
    if origin in (list, tuple) and origin is list:
        (item,) = typing.get_args(base)
        return st.lists(
            for_type(item),
            max_size=bounds.get("max_length", 5),
            min_size=bounds.get("min_length", 0),
        )
    if origin is dict:
        key, value = typing.get_args(base)
        return st.dictionaries(for_type(key), for_type(value), max_size=4)
    if base is type(None):
        return st.none()
    if base is bool:
        return st.booleans()
    if base is int:
        low = bounds.get("ge", bounds["gt"] + 1 if "gt" in bounds else _INT64[0])
        high = bounds.get("le", bounds["lt"] - 1 if "lt" in bounds else _INT64[1])
        return st.integers(low, high)
    if base is float:
        return st.floats(
            min_value=bounds.get("ge", bounds.get("gt")),
            max_value=bounds.get("le", bounds.get("lt")),
            exclude_min="gt" in bounds,
            exclude_max="lt" in bounds,
            allow_nan=False,
            allow_infinity=False,
        )
    if base is str:
        return st.text(max_size=20)
    if base is bytes:
        return st.binary(max_size=20)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return from_struct(base)
    raise NotImplementedError(f"no strategy for {annotation!r}")


def from_struct(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of a msgspec Struct class, with every field drawn from its annotation."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: for_type(hints[f.name]) for f in msgspec.structs.fields(cls)}
    return st.builds(cls, **fields)
