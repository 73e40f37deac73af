"""A dataset store over JSONL (and Parquet) files in a directory, with row validation."""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread
import msgspec

from crucible_kitchen.adapters.filesystem._files import confined_path, os_error
from crucible_kitchen.errors import (
    DataError,
    InvalidRequest,
    PermanentBackendError,
    ResourceNotFound,
)
from crucible_kitchen.ports import DatasetInfo, check_blob_key

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    from crucible_kitchen.ports import DatasetRow

    T = TypeVar("T")

__all__ = ("MESSAGE_FIELDS", "FilesystemDatasetStore")

_PORT: Final = "dataset_store"
_FORMATS: Final = (".jsonl", ".parquet")
_ENCODER: Final = msgspec.json.Encoder()

MESSAGE_FIELDS: Final = ("messages", "prompt", "completion", "chosen", "rejected")
"""Row fields that hold a conversation. ``messages`` must be a non-empty list of messages;
the others a string (plain text) or a non-empty list of messages. A message is an object
with a non-empty string ``role`` and a string ``content`` (other keys are kept)."""


@dataclass(frozen=True, slots=True)
class _Split:
    """One loaded split: each row's JSON, validated, so every read decodes fresh objects."""

    stamp: tuple[int, int]
    rows: tuple[bytes, ...]
    columns: frozenset[str]


class FilesystemDatasetStore:
    """Implements :class:`~crucible_kitchen.ports.DatasetStore` over files under ``root``.

    A dataset ``name`` (slash-separated, relative) is either a file ``root/<name>.jsonl``
    (or ``.parquet``), whose rows form the single split ``"train"``, or a directory
    ``root/<name>/`` whose files ``<split>.jsonl`` / ``<split>.parquet`` are its splits.
    Both forms at once are refused as ambiguous.

    A JSONL file has one JSON object per line (blank lines are skipped). Every row is
    checked when the file is first read: the conversation fields of
    :data:`MESSAGE_FIELDS` (chat ``{"messages": [...]}``, prompt/completion, preference
    pairs) must be well formed; other fields may hold any JSON. A bad row raises
    :class:`DataError` naming the file, the line and row, and the field's path
    (``messages[1].content``). Parquet needs ``pyarrow`` (``pip install pyarrow``).

    Files are parsed in a worker thread, once, and re-read when their size or
    modification time changes. Rows are decoded afresh for every read, so callers own them.

    Args:
        root: the directory holding the datasets; use
            :func:`~crucible_kitchen.adapters.filesystem.bundled_data_dir` for the data
            bundled with ``crucible_kitchen.training`` (``chat_tasks``, ...).
        more_roots: further directories, searched in order for a dataset that ``root``
            does not hold (e.g. where a feedback client exports its datasets).

    Raises:
        ResourceNotFound: a root is not a directory.
    """

    def __init__(self, root: str | os.PathLike[str], *more_roots: str | os.PathLike[str]) -> None:
        for directory in (root, *more_roots):
            if not Path(directory).is_dir():
                raise ResourceNotFound(
                    f"dataset store: {directory} is not a directory",
                    port=_PORT,
                    operation="__init__",
                    resource=str(directory),
                )
        self._roots = tuple(Path(os.path.realpath(d)) for d in (root, *more_roots))
        self._root = self._roots[0]
        self._lock = threading.Lock()
        self._cache: dict[Path, _Split] = {}

    @property
    def root(self) -> Path:
        """The datasets' directory, resolved."""
        return self._root

    async def describe(self, name: str) -> DatasetInfo:
        """See :meth:`crucible_kitchen.ports.DatasetStore.describe`.

        Raises:
            ResourceNotFound: no dataset is called ``name``.
            InvalidRequest: ``name`` could leave the root, or is ambiguous.
            DataError: a file of the dataset is malformed.
        """

        def work() -> DatasetInfo:
            splits = {split: self._load(path) for split, path in self._splits("describe", name)}
            columns = sorted(frozenset().union(*(split.columns for split in splits.values())))
            return DatasetInfo(
                name=name,
                splits={split: len(loaded.rows) for split, loaded in splits.items()},
                columns=tuple(columns),
            )

        return await self._io("describe", work)

    async def read_rows(
        self, name: str, *, split: str = "train", indices: Sequence[int] | None = None
    ) -> list[DatasetRow]:
        """See :meth:`crucible_kitchen.ports.DatasetStore.read_rows`.

        Raises:
            ResourceNotFound: no such dataset or split.
            InvalidRequest: an index is out of range, or ``name`` is refused.
            DataError: the split's file is malformed.
        """
        wanted = None if indices is None else list(indices)

        def work() -> list[DatasetRow]:
            paths = dict(self._splits("read_rows", name))
            path = paths.get(split)
            if path is None:
                raise ResourceNotFound(
                    f"read_rows: dataset {name!r} has no split {split!r}; "
                    f"splits: {', '.join(sorted(paths))}",
                    port=_PORT,
                    operation="read_rows",
                    resource=f"{name}/{split}",
                )
            rows = self._load(path).rows
            if wanted is None:
                return [msgspec.json.decode(row) for row in rows]
            for index in wanted:
                if type(index) is not int or not 0 <= index < len(rows):
                    raise InvalidRequest(
                        f"read_rows: index {index!r} out of range for {len(rows)} rows "
                        f"of {name!r}/{split!r}",
                        port=_PORT,
                        operation="read_rows",
                    )
            return [msgspec.json.decode(rows[index]) for index in wanted]

        return await self._io("read_rows", work)

    async def _io(self, operation: str, work: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(work)
        except OSError as exc:
            raise os_error(exc, port=_PORT, operation=operation) from exc

    # ---------------------------------------------------------------------------------------
    # Worker thread

    def _splits(self, operation: str, name: str) -> list[tuple[str, Path]]:
        """Each split of dataset ``name`` and its file, from the first root that holds it."""
        key = check_blob_key(name, operation=operation, port=_PORT, what="dataset name")
        for root in self._roots:
            found = self._splits_under(root, operation, name, key)
            if found:
                return found
        roots = ", ".join(str(root) for root in self._roots)
        raise ResourceNotFound(
            f"{operation}: no dataset {name!r} under {roots} "
            f"(looked for {name}.jsonl, {name}.parquet and {name}/<split>.jsonl)",
            port=_PORT,
            operation=operation,
            resource=name,
        )

    def _splits_under(
        self, root: Path, operation: str, name: str, key: str
    ) -> list[tuple[str, Path]]:
        base = confined_path(root, key, port=_PORT, operation=operation)
        files = [
            base.with_name(base.name + suffix)
            for suffix in _FORMATS
            if base.with_name(base.name + suffix).is_file()
        ]
        found: list[tuple[str, Path]] = [("train", path) for path in files]
        if base.is_dir():
            found += [
                (path.stem, path)
                for path in sorted(base.iterdir())
                if path.suffix in _FORMATS and path.is_file()
            ]
        splits = [split for split, _ in found]
        if len(set(splits)) != len(splits) or (files and base.is_dir()):
            raise InvalidRequest(
                f"{operation}: dataset {name!r} is ambiguous: "
                + ", ".join(str(path) for _, path in found),
                port=_PORT,
                operation=operation,
            )
        for _, path in found:
            confined_path(root, path.relative_to(root).as_posix(), port=_PORT, operation=operation)
        return found

    def _load(self, path: Path) -> _Split:
        status = path.stat()
        stamp = (status.st_mtime_ns, status.st_size)
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp:
            return cached
        rows = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
        columns: set[str] = set()
        for row in rows:
            columns.update(msgspec.json.decode(row).keys())
        loaded = _Split(stamp=stamp, rows=tuple(rows), columns=frozenset(columns))
        with self._lock:
            self._cache[path] = loaded
        return loaded


def _read_jsonl(path: Path) -> list[bytes]:
    rows: list[bytes] = []
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number} (row {len(rows)})"
            try:
                value = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise DataError(f"{where}: not valid JSON: {exc}") from exc
            _check_row(where, value)
            rows.append(line.strip())
    return rows


def _read_parquet(path: Path) -> list[bytes]:
    try:
        parquet: Any = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise PermanentBackendError(
            f"read_rows: {path} is a Parquet file; reading it needs pyarrow (pip install pyarrow)",
            port=_PORT,
            operation="read_rows",
        ) from exc
    try:
        table = parquet.read_table(path)
        values = table.to_pylist()
    except OSError:
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid and friends
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    rows: list[bytes] = []
    for index, value in enumerate(values):
        where = f"{path}, row {index}"
        _check_row(where, value)
        try:
            rows.append(_ENCODER.encode(value))
        except (TypeError, msgspec.EncodeError) as exc:
            raise DataError(f"{where}: a value cannot be represented as JSON: {exc}") from exc
    return rows


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_row(where: str, row: object) -> None:
    """Raise :class:`DataError` at the first malformed conversation field of ``row``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {_type_name(row)}")
    for field in MESSAGE_FIELDS:
        if field not in row:
            continue
        value = row[field]
        if isinstance(value, str) and field != "messages":
            continue
        if not isinstance(value, list):
            expected = "a list of messages" if field == "messages" else "a string or messages"
            raise DataError(
                f"{where}: field {field!r}: expected {expected}, got {_type_name(value)}"
            )
        if not value:
            raise DataError(f"{where}: field {field!r}: the list of messages is empty")
        for index, message in enumerate(value):
            _check_message(where, f"{field}[{index}]", message)


def _check_message(where: str, path: str, message: object) -> None:
    if not isinstance(message, dict):
        raise DataError(
            f"{where}: field {path!r}: a message must be an object, got {_type_name(message)}"
        )
    if "role" not in message:
        raise DataError(f"{where}: field '{path}.role' is missing")
    role = message["role"]
    if not isinstance(role, str) or not role:
        got = repr(role) if isinstance(role, str) else _type_name(role)
        raise DataError(f"{where}: field '{path}.role': expected a non-empty string, got {got}")
    if "content" not in message:
        raise DataError(f"{where}: field '{path}.content' is missing")
    content = message["content"]
    if not isinstance(content, str):
        raise DataError(
            f"{where}: field '{path}.content': expected a string, got {_type_name(content)}"
        )
