"""Optional capabilities: what an adapter (or a future) can do beyond its port's Protocol.

A port's Protocol is what every adapter must do. Some backends can do more, and a caller
that can use it should not have to guess from signatures or ``getattr``: the adapter
*declares* each extra ability under a typed key, the way anyio's typed attributes
(``extra(attribute, default)``) and httpx's ``extensions`` do it::

    class MyTrainingClient:
        @property
        def capabilities(self) -> Mapping[Capability[Any], Callable[[], Any]]:
            return {CHECKPOINT_PAYLOAD: lambda: self.checkpoint_payload}

    read = capability(client, CHECKPOINT_PAYLOAD)   # ReadCheckpointPayload | None
    if read is not None:
        payload = await read(path)

``capabilities`` maps each key to a zero-argument function that returns the value, so a
value is made only when asked for (a directory created on first use, a bound method).
Wrappers around an adapter (fault injection, simulated latency) forward its declarations.
The keys of each port live with the port (``CHECKPOINT_DIR`` with the training client,
``FUTURE_DONE`` with :class:`BackendFuture`); the conformance checks of
``crucible_kitchen.testing`` check that what an adapter declares really works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar, overload, runtime_checkable

__all__ = (
    "Capabilities",
    "Capability",
    "CapabilityProvider",
    "capability",
    "declared_capabilities",
)

T = TypeVar("T")
D = TypeVar("D")

Capabilities = Mapping["Capability[Any]", Callable[[], Any]]
"""What a :class:`CapabilityProvider` declares: each key, and how to get its value."""


class Capability(Generic[T]):
    """The typed key of one optional capability; its value is a ``T``.

    Keys compare by identity: declare each once, as a module constant, and import it.
    """

    __slots__ = ("doc", "name")

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc

    def __repr__(self) -> str:
        return f"Capability({self.name!r})"


@runtime_checkable
class CapabilityProvider(Protocol):
    """An object that declares optional capabilities (any adapter or future may)."""

    @property
    def capabilities(self) -> Capabilities:
        """Each capability this object has, mapped to a function returning its value."""
        ...


def declared_capabilities(obj: object) -> Capabilities:
    """The capabilities ``obj`` declares; empty if it declares none.

    Raises:
        TypeError: ``obj.capabilities`` is not a mapping of :class:`Capability` keys to
            zero-argument callables.
    """
    if not isinstance(obj, CapabilityProvider):
        return {}
    declared = obj.capabilities
    if not isinstance(declared, Mapping):
        raise TypeError(
            f"{type(obj).__name__}.capabilities is a {type(declared).__name__}, not a mapping"
        )
    for key, get in declared.items():
        if not isinstance(key, Capability) or not callable(get):
            raise TypeError(
                f"{type(obj).__name__}.capabilities maps {key!r} to {get!r}: each key must be "
                "a Capability and each value a zero-argument callable returning it"
            )
    return declared


@overload
def capability(obj: object, key: Capability[T]) -> T | None: ...
@overload
def capability(obj: object, key: Capability[T], default: D) -> T | D: ...
def capability(obj: object, key: Capability[T], default: object = None) -> object:
    """The value of capability ``key`` of ``obj``, or ``default`` if ``obj`` does not declare it.

    Raises:
        TypeError: ``obj`` declares its capabilities wrongly (see
            :func:`declared_capabilities`).
    """
    get = declared_capabilities(obj).get(key)
    return default if get is None else get()
