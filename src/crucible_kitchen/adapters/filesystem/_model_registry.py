"""A model registry in a directory: one JSON file per registered model."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio.to_thread
import msgspec

from crucible_kitchen._files import TEMP_PREFIX, atomic_write
from crucible_kitchen.adapters.filesystem._files import RequestLedger, os_error
from crucible_kitchen.errors import InvalidRequest, PermanentBackendError, ResourceNotFound
from crucible_kitchen.ports import ModelArtifact, RegisteredModel

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

__all__ = ("FilesystemModelRegistry",)

_PORT: Final = "model_registry"
_SUFFIX: Final = ".json"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Entry(msgspec.Struct, frozen=True, kw_only=True):
    """What a registry file holds: the model, its registration order and the request."""

    seq: int
    request_id: str
    model: RegisteredModel


class FilesystemModelRegistry:
    """Implements :class:`~crucible_kitchen.ports.ModelRegistry` with files under ``root``.

    A model's id is ``<name>-<version>-<12 hex digits>`` (name and version made
    filename-safe, the digits a sha256 of both), and its file ``root/<id>.json``, created
    atomically and never replaced. ``list_models`` orders models by registration number
    (then id). A ``register`` re-sent with its ``request_id`` gets its first answer, also
    from a new process (the id is stored with the model). Several processes may read one
    registry; registering from several at once may give two models the same number.

    Args:
        root: the registry's directory; created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        self._root = Path(os.path.realpath(root))
        self._ledger = RequestLedger(_PORT)
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The registry's directory, resolved."""
        return self._root

    async def register(self, artifact: ModelArtifact, *, request_id: str) -> RegisteredModel:
        """See :meth:`crucible_kitchen.ports.ModelRegistry.register`."""
        if not isinstance(artifact, ModelArtifact):
            raise InvalidRequest(
                f"register: artifact is a {type(artifact).__name__}",
                port=_PORT,
                operation="register",
            )
        model_id = _model_id(artifact)
        encoded = msgspec.json.encode(artifact)
        fingerprint = hashlib.blake2b(encoded, digest_size=16).digest()

        def work() -> RegisteredModel:
            path = self._root / f"{model_id}{_SUFFIX}"
            with self._lock:
                if path.exists():
                    entry = self._read(path)
                    if entry.request_id == request_id and entry.model.artifact == artifact:
                        return entry.model  # this very request, from an earlier process
                    raise InvalidRequest(
                        f"register: {artifact.name!r} version {artifact.version!r} is already "
                        f"registered as {model_id!r}",
                        port=_PORT,
                        operation="register",
                        request_id=request_id,
                    )
                seq = 1 + max((entry.seq for entry in self._entries()), default=0)
                model = RegisteredModel(model_id=model_id, artifact=artifact)
                entry = _Entry(seq=seq, request_id=request_id, model=model)
                try:
                    atomic_write(path, msgspec.json.encode(entry), exclusive=True)
                except FileExistsError as exc:
                    raise InvalidRequest(
                        f"register: {model_id!r} was registered concurrently",
                        port=_PORT,
                        operation="register",
                        request_id=request_id,
                    ) from exc
                except OSError as exc:
                    raise os_error(
                        exc, port=_PORT, operation="register", request_id=request_id
                    ) from exc
                return model

        return await self._ledger.run(
            "register", work, request_id=request_id, fingerprint=fingerprint
        )

    async def get(self, model_id: str) -> RegisteredModel:
        """See :meth:`crucible_kitchen.ports.ModelRegistry.get`."""

        def work() -> RegisteredModel:
            path = self._root / f"{model_id}{_SUFFIX}"
            if not (
                isinstance(model_id, str) and _ID_PATTERN.fullmatch(model_id) and path.is_file()
            ):
                raise ResourceNotFound(
                    f"get: no model {model_id!r}", port=_PORT, operation="get", resource=model_id
                )
            return self._read(path).model

        return await self._io("get", work)

    async def list_models(self, *, name: str | None = None) -> list[RegisteredModel]:
        """See :meth:`crucible_kitchen.ports.ModelRegistry.list_models`."""

        def work() -> list[RegisteredModel]:
            entries = sorted(self._entries(), key=lambda e: (e.seq, e.model.model_id))
            return [e.model for e in entries if name is None or e.model.artifact.name == name]

        return await self._io("list_models", work)

    async def _io(self, operation: str, work: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(work)
        except OSError as exc:
            raise os_error(exc, port=_PORT, operation=operation) from exc

    def _entries(self) -> list[_Entry]:
        return [
            self._read(path)
            for path in self._root.glob(f"*{_SUFFIX}")
            if not path.name.startswith(TEMP_PREFIX)
        ]

    def _read(self, path: Path) -> _Entry:
        try:
            return msgspec.json.decode(path.read_bytes(), type=_Entry)
        except msgspec.DecodeError as exc:
            raise PermanentBackendError(
                f"model registry: {path} is corrupt: {exc}", port=_PORT, operation="read"
            ) from exc


def _model_id(artifact: ModelArtifact) -> str:
    digest = hashlib.sha256(f"{artifact.name}\x00{artifact.version}".encode()).hexdigest()[:12]
    name = _UNSAFE.sub("_", artifact.name).strip("._-")[:48] or "model"
    version = _UNSAFE.sub("_", artifact.version).strip("._-")[:24] or "v"
    return f"{name}-{version}-{digest}"
