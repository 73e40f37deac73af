"""The files of a run directory: ``config.json`` (the run record), ``summary.json`` and the logs.

See the layout in :mod:`crucible_kitchen.kitchen`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from crucible_kitchen._files import atomic_write
from crucible_kitchen.errors import RunDirectoryError
from crucible_kitchen.kitchen._results import RunResult

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = (
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "EVENTS_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "TRACES_FILE",
    "RunDir",
    "RunRecord",
    "check_unfinished",
    "drop_partial_lines",
    "package_version",
    "read_run_record",
    "read_run_summary",
    "removed_on_failure",
    "write_json",
)

RunDir = str | os.PathLike[str] | bool | None
"""Where a run keeps its files: a directory; ``True`` for ``<runs_root>/<run_id>``; ``False``
for none; ``None`` for the recipe's default (``Recipe.writes_run_dir``)."""

CONFIG_FILE: Final = "config.json"
EVENTS_FILE: Final = "events.jsonl"
METRICS_FILE: Final = "metrics.jsonl"
TRACES_FILE: Final = "traces.jsonl"
SUMMARY_FILE: Final = "summary.json"
CHECKPOINTS_DIR: Final = "checkpoints"
RUN_FORMAT: Final = "crucible-kitchen/run"
RUN_FORMAT_VERSION: Final = 1


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A run directory's ``config.json``: what it takes to start the run again."""

    format: str = RUN_FORMAT
    format_version: int = RUN_FORMAT_VERSION
    run_id: str
    recipe: str | None
    workflow: str
    seed: int
    adapters: str | None
    """The adapter set the Kitchen built by name (rebuilt the same way on resume), or ``None``
    for adapters the caller built (an ``Adapters`` or a mapping: pass them again to resume)."""
    config: dict[str, Any]
    version: str
    """The crucible-kitchen version that started the run."""
    created: float


def read_run_record(run_dir: str | os.PathLike[str]) -> RunRecord:
    """The ``config.json`` of a run directory.

    Raises:
        RunDirectoryError: no run directory there, or its ``config.json`` is unreadable.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        record = msgspec.json.decode(path.read_bytes(), type=RunRecord)
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{run_dir} is not a run directory: it has no {CONFIG_FILE}", path=str(run_dir)
        ) from None
    except (OSError, msgspec.DecodeError) as exc:
        raise RunDirectoryError(f"cannot read {path}: {exc}", path=str(run_dir)) from exc
    if record.format != RUN_FORMAT or record.format_version != RUN_FORMAT_VERSION:
        raise RunDirectoryError(
            f"{path}: format {record.format!r} version {record.format_version} is not "
            f"{RUN_FORMAT!r} version {RUN_FORMAT_VERSION}",
            path=str(run_dir),
        )
    return record


def write_json(path: Path, value: msgspec.Struct) -> None:
    """Write ``value`` to ``path`` as indented JSON, atomically."""
    atomic_write(path, msgspec.json.format(msgspec.json.encode(value), indent=2))


def read_run_summary(run_dir: str | os.PathLike[str]) -> RunResult | None:
    """The ``summary.json`` of a run directory: how the run ended; ``None`` when it has no
    readable one (the run has not ended, or its process was killed)."""
    try:
        return msgspec.json.decode((Path(run_dir) / SUMMARY_FILE).read_bytes(), type=RunResult)
    except (OSError, msgspec.DecodeError):
        return None


def check_unfinished(directory: Path, record: RunRecord) -> None:
    """Refuse to resume a run whose ``summary.json`` says it completed.

    Raises:
        RunDirectoryError: the run completed already.
    """
    summary = read_run_summary(directory)
    if summary is not None and summary.status == "completed":
        raise RunDirectoryError(
            f"run {record.run_id!r} in {directory} completed already; nothing to resume",
            path=str(directory),
        )


def drop_partial_lines(run_dir: Path) -> None:
    """Cut a line that a killed process left half-written at the end of a run's logs, so
    that a resumed run appends whole lines after whole lines."""
    for name in (EVENTS_FILE, METRICS_FILE, TRACES_FILE):
        try:
            with open(run_dir / name, "r+b") as file:
                size = file.seek(0, os.SEEK_END)
                if size == 0:
                    continue
                file.seek(max(0, size - (1 << 20)))
                tail = file.read()
                if tail.endswith(b"\n"):
                    continue
                cut = tail.rfind(b"\n") + 1
                file.truncate(size - len(tail) + cut if cut else max(0, size - len(tail)))
        except FileNotFoundError:
            continue


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` that ``torchrun`` (or a launcher using its variables) set; 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1")


def writes_run_files() -> bool:
    """Whether this process writes run directories and telemetry: always, except under a
    ``torchrun`` with several ranks, where rank 0 alone does."""
    return launched_world_size() <= 1 or int(os.environ.get("RANK", "0") or "0") == 0


def shared_run_id(recipe: str, directory: RunDir) -> str | None:
    """The run id every rank of a ``torchrun`` job agrees on (request ids derive from it):
    the run directory's name, else the launcher's rendezvous id; ``None`` outside torchrun.

    Raises:
        RunDirectoryError: under torchrun with neither (plain ``--nproc-per-node``).
    """
    if launched_world_size() <= 1:
        return None
    if directory is not None and not isinstance(directory, bool):
        return Path(directory).name
    rendezvous = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rendezvous not in ("", "none"):
        return f"{recipe}-{rendezvous[:12]}"
    raise RunDirectoryError(
        "under torchrun every rank must name the same run: pass --run-dir DIR, or launch "
        "with torchrun --standalone (or --rdzv-id ID)",
        path="",
    )


@contextlib.contextmanager
def removed_on_failure(directory: Path | None) -> Iterator[None]:
    """Undo what a start-up that fails (or is interrupted) wrote to a new run's directory.

    A directory that did not exist is removed; in one that did, the entries that appeared
    are. So a run whose config or adapters fail validation, or that Ctrl-C interrupts
    before it has started, leaves no half-made run directory behind.
    """
    if directory is None or not writes_run_files():
        yield
        return
    existed = directory.is_dir()
    before = set(directory.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)
        elif directory.is_dir():
            for entry in set(directory.iterdir()) - before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def package_version() -> str:
    """The installed crucible-kitchen version, or ``"unknown"``."""
    try:
        return importlib.metadata.version("crucible-kitchen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
