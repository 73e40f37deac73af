"""A dataset store of synthetic arithmetic rows, or of rows given in memory."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.noop._determinism import mix, text_key
from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.errors import InvalidRequest, ResourceNotFound
from crucible_kitchen.ports import DatasetInfo

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters
    from crucible_kitchen.ports import DatasetRow

__all__ = ("NoopDatasetStore",)

_PORT: Final = "dataset_store"
SYNTHETIC_COLUMNS: Final = ("id", "question", "answer", "messages", "prompt", "chosen", "rejected")


class NoopDatasetStore:
    """Implements :class:`~crucible_kitchen.ports.DatasetStore` from memory.

    Without ``datasets``, each of ``names`` (by default, every name) is a synthetic dataset
    of additions, with splits
    ``"train"`` (``num_rows`` rows) and ``"test"`` (a quarter of that). Each row serves every
    workflow: ``messages`` (a user question and the assistant's answer) for supervised
    training, ``question``/``answer`` for RL, ``prompt``/``chosen``/``rejected`` for DPO.

    Args:
        seed: determines the synthetic rows.
        num_rows: size of each synthetic ``"train"`` split.
        names: the synthetic datasets that exist; ``None`` for every name.
        datasets: serve exactly these instead: name, then split, then rows.
        faults: faults to inject into this store's calls.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        num_rows: int = 64,
        names: Collection[str] | None = None,
        datasets: Mapping[str, Mapping[str, Sequence[DatasetRow]]] | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self._seed = seed
        self._names = None if names is None else frozenset(names)
        self._num_rows = num_rows
        self._datasets = datasets
        self._ledger = RequestLedger(_PORT, faults)

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    async def describe(self, name: str) -> DatasetInfo:
        """See :meth:`crucible_kitchen.ports.DatasetStore.describe`."""
        return await self._ledger.call("describe", lambda: self._describe("describe", name))

    async def read_rows(
        self, name: str, *, split: str = "train", indices: Sequence[int] | None = None
    ) -> list[DatasetRow]:
        """See :meth:`crucible_kitchen.ports.DatasetStore.read_rows`."""

        def effect() -> list[DatasetRow]:
            info = self._describe("read_rows", name)
            size = info.splits.get(split)
            if size is None:
                raise ResourceNotFound(
                    f"read_rows: dataset {name!r} has no split {split!r}; "
                    f"splits: {', '.join(info.splits)}",
                    port=_PORT,
                    operation="read_rows",
                    resource=f"{name}/{split}",
                )
            wanted = range(size) if indices is None else indices
            for index in wanted:
                if type(index) is not int or not 0 <= index < size:
                    raise InvalidRequest(
                        f"read_rows: index {index!r} out of range for {size} rows "
                        f"of {name!r}/{split!r}",
                        port=_PORT,
                        operation="read_rows",
                    )
            return [self._row(name, split, index) for index in wanted]

        return await self._ledger.call("read_rows", effect)

    def _describe(self, operation: str, name: str) -> DatasetInfo:
        if self._datasets is None and (self._names is None or name in self._names):
            splits = {"train": self._num_rows, "test": max(1, self._num_rows // 4)}
            return DatasetInfo(name=name, splits=splits, columns=SYNTHETIC_COLUMNS)
        dataset = None if self._datasets is None else self._datasets.get(name)
        if dataset is None:
            raise ResourceNotFound(
                f"{operation}: no dataset {name!r}",
                port=_PORT,
                operation=operation,
                resource=name,
            )
        columns = sorted({column for rows in dataset.values() for row in rows for column in row})
        splits = {split: len(rows) for split, rows in dataset.items()}
        return DatasetInfo(name=name, splits=splits, columns=tuple(columns))

    def _row(self, name: str, split: str, index: int) -> DatasetRow:
        if self._datasets is not None:
            return copy.deepcopy(dict(self._datasets[name][split][index]))
        key = mix(self._seed, text_key(name), text_key(split), index)
        a, b = mix(key, 1) % 100, mix(key, 2) % 100
        question, answer = f"What is {a} + {b}?", str(a + b)
        return {
            "id": index,
            "question": question,
            "answer": answer,
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ],
            "prompt": question,
            "chosen": answer,
            "rejected": str(a + b + 1 + mix(key, 3) % 9),
        }
