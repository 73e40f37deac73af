"""The dataset store port: named datasets of JSON-like rows, read by index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports._types import DatasetInfo, DatasetRow

__all__ = ("DatasetStore",)


class DatasetStore(Protocol):
    """Read-only access to named datasets, split into ``"train"``, ``"test"``, ...

    Rows are read by index, so a workflow owns the data order (shuffling, epochs, resume)
    and never depends on the store for it. Reads are repeatable: the same request returns
    equal rows.
    """

    async def describe(self, name: str) -> DatasetInfo:
        """The dataset's splits with their sizes, and its columns.

        Raises:
            ResourceNotFound: no dataset is called ``name``.
        """
        ...

    async def read_rows(
        self, name: str, *, split: str = "train", indices: Sequence[int] | None = None
    ) -> list[DatasetRow]:
        """The rows at ``indices``, in that order (repeats allowed), or all rows if ``None``.

        The caller owns the returned rows; changing them does not change the store.

        Raises:
            ResourceNotFound: no such dataset or split.
            InvalidRequest: an index is out of range.
        """
        ...
