"""Files on disk that every layer shares: the atomic writers, and the names of the layouts
that more than one layer reads (a run directory's final checkpoint, a Hugging Face model
directory).

Like :mod:`crucible_kitchen.errors`, a bottom-level module: it imports nothing from
crucible-kitchen, and every layer may import it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = (
    "DIR_MODE",
    "FILE_MODE",
    "FINAL_CHECKPOINT",
    "HF_CONFIG_FILE",
    "PARTIAL_SUFFIX",
    "TEMP_PREFIX",
    "FileContents",
    "atomic_write",
    "atomic_write_directory",
    "fsync_directory",
    "is_hf_model_dir",
)

TEMP_PREFIX: Final = ".ck-tmp-"
"""Files being written start with this (``.ck-tmp-<name>.<random>``)."""

FILE_MODE: Final = 0o644
"""The permissions of every file written: readable by all, like the run's logs."""

DIR_MODE: Final = 0o755
"""The permissions of every directory written whole (:func:`atomic_write_directory`)."""

PARTIAL_SUFFIX: Final = ".partial"
"""Directories being written end with this (``.<name>.<random>.partial``)."""

FINAL_CHECKPOINT: Final = Path("checkpoints", "weights", "final")
"""Where a run directory keeps its final checkpoint (weights and optimizer state)."""

HF_CONFIG_FILE: Final = "config.json"
"""The file that makes a directory a Hugging Face model directory."""

FileContents: TypeAlias = "bytes | Callable[[Path], object]"
"""A file of :func:`atomic_write_directory`: its bytes, or a function that writes it at the
path it is given (for content too large to hold twice, or copied from another file)."""


def is_hf_model_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a Hugging Face model's)."""
    return (Path(path) / HF_CONFIG_FILE).is_file()


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


def atomic_write_directory(destination: Path, files: Mapping[str, FileContents]) -> None:
    """Create the directory ``destination`` holding ``files`` (name -> contents), all or nothing.

    The files are written into a hidden staging directory beside ``destination``
    (``.<name>.<random>.partial``), each given :data:`FILE_MODE` and fsynced; the staging
    directory gets :data:`DIR_MODE`, is fsynced and renamed to ``destination``, and the parent
    is fsynced. A reader sees the complete directory or nothing. On any error the staging
    directory is removed and ``destination`` is as it was; a crash leaves at most the
    ``.partial`` directory. Missing parent directories are created.

    Raises:
        FileExistsError: ``destination`` exists, before the write or by the time of the
            rename; it is left as it was.
        OSError: a file could not be written; nothing changed at ``destination``.
    """
    if os.path.lexists(destination):
        raise FileExistsError(f"{destination} already exists")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(
            prefix=f".{destination.name}.", suffix=PARTIAL_SUFFIX, dir=destination.parent
        )
    )
    try:
        staging.chmod(DIR_MODE)  # not mkdtemp's 0o700
        for name, contents in files.items():
            path = staging / name
            if isinstance(contents, bytes):
                path.write_bytes(contents)
            else:
                contents(path)
            os.chmod(path, FILE_MODE)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(staging)
        # rename() would replace an empty directory that appeared meanwhile: check first.
        if os.path.lexists(destination):
            raise FileExistsError(f"{destination} appeared while it was being written")
        try:
            os.rename(staging, destination)
        except OSError as exc:
            if os.path.lexists(destination):
                raise FileExistsError(f"{destination} appeared while it was being written") from exc
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(destination.parent)
