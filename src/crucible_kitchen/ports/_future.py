"""The future a backend call returns at once, so several requests can be in flight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from crucible_kitchen.ports._capabilities import Capability

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("FUTURE_DONE", "BackendFuture")

ResultT_co = TypeVar("ResultT_co", covariant=True)


class BackendFuture(Protocol[ResultT_co]):
    """The pending result of one request a backend has accepted.

    A workflow submits request k+1 before awaiting request k; the backend runs them in the
    order they were submitted.
    """

    async def result(self) -> ResultT_co:
        """Wait for the request to finish and return its result.

        May be awaited any number of times, from any task; every await returns the same
        value or raises an equal error. Cancelling a waiter does not cancel the request.

        Raises:
            TransientBackendError: the request failed without effect; re-send it with the
                same ``request_id``.
            PermanentBackendError: the request failed; re-sending cannot help.
        """
        ...


FUTURE_DONE: Final[Capability[Callable[[], bool]]] = Capability(
    "done",
    """A function telling whether the request has finished, known without a round trip to
    the backend: once it returns ``True``, :meth:`BackendFuture.result` returns at once.
    Declared by futures of in-process backends; callers then await such futures in turn
    instead of concurrently (no task per future).""",
)
