"""Writing files all or nothing: the one atomic writer every layer uses.

Like :mod:`crucible_kitchen.errors`, a bottom-level module: it imports nothing from
crucible-kitchen, and every layer may import it.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ("FILE_MODE", "TEMP_PREFIX", "atomic_write", "fsync_directory")

TEMP_PREFIX: Final = ".ck-tmp-"
"""Files being written start with this (``.ck-tmp-<name>.<random>``)."""

FILE_MODE: Final = 0o644
"""The permissions of every file written: readable by all, like the run's logs."""


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries to disk (where the platform allows it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` all or nothing: temporary file, fsync, rename, fsync dir.

    Missing parent directories are created. The file gets :data:`FILE_MODE` whatever the
    umask allows. A reader sees the old content or the new one, never a mix; a crash leaves
    at most a ``.ck-tmp-*`` file behind. With ``exclusive`` an existing ``path`` is never
    replaced.

    Raises:
        FileExistsError: ``exclusive`` and ``path`` exists.
        OSError: the write failed; nothing changed at ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
    try:
        with open(temporary, "xb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)  # atomic, and fails if path exists
            temporary.unlink()
        else:
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
