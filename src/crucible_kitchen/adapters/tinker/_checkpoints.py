"""The run's Tinker checkpoints, recorded on this machine so that a new process can resume.

The weights and optimizer state stay on the server (``tinker://<run>/weights/<name>``); the
run directory keeps, for each ``save_state``, a record ``<directory>/weights/<name>/remote.json``
holding that path and the payload saved with it (the run's position). ``kitchen resume``
lists those directories, reads the payload through ``CHECKPOINT_PAYLOAD``, and hands the
directory to ``load_state``, which loads the remote checkpoint it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import msgspec

from crucible_kitchen._files import atomic_write
from crucible_kitchen.errors import CheckpointCorrupted, CheckpointError, ResourceNotFound

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crucible_kitchen.ports import BackendFuture, SaveStateResponse

__all__ = ("CheckpointRecords", "RecordedSave", "RemoteCheckpoint")

RECORD_FILE: Final = "remote.json"
_PORT: Final = "training_client"


class RemoteCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One ``save_state`` of the run: the server's path, and the payload saved with it."""

    tinker_path: str
    user_payload: dict[str, Any] | None = None


class CheckpointRecords:
    """The records of one run's remote checkpoints under ``directory`` (blocking I/O)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, tinker_path: str, user_payload: Mapping[str, Any] | None) -> Path:
        """Record the checkpoint at ``tinker_path`` (all or nothing); its record directory.

        Raises:
            CheckpointError: ``tinker_path`` is not a ``tinker://`` checkpoint path, or the
                record cannot be written.
        """
        record = self._record_dir(tinker_path)
        remote = RemoteCheckpoint(
            tinker_path=tinker_path,
            user_payload=None if user_payload is None else dict(user_payload),
        )
        try:
            atomic_write(record / RECORD_FILE, msgspec.json.encode(remote))
        except OSError as exc:
            raise CheckpointError(
                f"{record}: cannot record the checkpoint {tinker_path}: {exc}", path=str(record)
            ) from exc
        return record

    def read(self, path: str) -> tuple[Path, RemoteCheckpoint]:
        """The record of ``path``: a record directory, or the ``tinker://`` path recorded.

        Raises:
            ResourceNotFound: no checkpoint is recorded there.
            CheckpointCorrupted: the record is unreadable.
        """
        record = self._record_dir(path) if path.startswith("tinker://") else Path(path)
        try:
            data = (record / RECORD_FILE).read_bytes()
        except FileNotFoundError:
            raise ResourceNotFound(
                f"no Tinker checkpoint is recorded at {path}",
                port=_PORT,
                operation="checkpoint_payload",
                resource=path,
            ) from None
        except OSError as exc:
            raise CheckpointCorrupted(f"{record}: unreadable: {exc}", path=str(record)) from exc
        try:
            remote = msgspec.json.decode(data, type=RemoteCheckpoint)
        except msgspec.DecodeError as exc:
            raise CheckpointCorrupted(
                f"{record / RECORD_FILE}: not a Tinker checkpoint record: {exc}", path=str(record)
            ) from exc
        if path.startswith("tinker://") and remote.tinker_path != path:
            raise ResourceNotFound(
                f"no Tinker checkpoint is recorded at {path} ({record} records "
                f"{remote.tinker_path})",
                port=_PORT,
                operation="checkpoint_payload",
                resource=path,
            )
        return record, remote

    def _record_dir(self, tinker_path: str) -> Path:
        parts = tinker_path.removeprefix("tinker://").split("/")
        if not tinker_path.startswith("tinker://") or len(parts) != 3 or "" in parts:
            raise CheckpointError(
                f"{tinker_path!r} is not a tinker://<run>/<kind>/<name> checkpoint path",
                path=tinker_path,
            )
        _, kind, name = parts
        if name in (".", "..") or kind in (".", ".."):
            raise CheckpointError(f"{tinker_path!r}: not a checkpoint name", path=tinker_path)
        return self.directory / kind / name


class RecordedSave:
    """A ``save_state`` future whose result is returned once the checkpoint is recorded."""

    def __init__(
        self,
        saved: BackendFuture[SaveStateResponse],
        records: CheckpointRecords,
        user_payload: Mapping[str, Any] | None,
    ) -> None:
        self._saved = saved
        self._records = records
        self._user_payload = user_payload
        self._recorded = False
        self._lock = anyio.Lock()

    async def result(self) -> SaveStateResponse:
        """See :meth:`crucible_kitchen.ports.BackendFuture.result`.

        Raises:
            CheckpointError: the checkpoint was saved on the server but cannot be recorded.
        """
        response = await self._saved.result()
        async with self._lock:
            if not self._recorded:
                await anyio.to_thread.run_sync(
                    self._records.write, response.path, self._user_payload
                )
                self._recorded = True
        return response
