"""Runs of earlier service processes, read from their run directories under the root.

A run directory ``<root>/<run_id>`` holds ``config.json`` (written when the run started),
``summary.json`` (its :class:`RunResult`, written when it ended), and its metrics history and
events, a JSON object a line (``metrics.jsonl``, ``events.jsonl``). A run id from a request is
checked before it names a directory: it must be one path segment of the characters run ids
are made of, so that it can never reach outside the root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from crucible_kitchen.errors import RunDirectoryError
from crucible_kitchen.kitchen import (
    EVENTS_FILE,
    METRICS_FILE,
    RunRecord,
    RunResult,
    read_run_record,
    read_run_summary,
)

from ._problems import Problem
from ._schema import RunView

if TYPE_CHECKING:
    from pathlib import Path

__all__ = (
    "PastRun",
    "StoredEvent",
    "read_event_lines",
    "read_metrics_rows",
    "read_past_run",
    "run_directory",
    "scan_past_runs",
)

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
INTERRUPTED = "the service stopped before this run ended (it has no summary.json)"


@dataclass(frozen=True)
class PastRun:
    """A run found on disk: its start record, and its result if it ended with one."""

    record: RunRecord
    result: RunResult | None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def adapters(self) -> str | None:
        return self.record.adapters

    @property
    def status(self) -> Literal["completed", "failed", "cancelled"]:
        """Its final status; a run without ``summary.json`` was interrupted: ``cancelled``."""
        return "cancelled" if self.result is None else self.result.status

    def view(self) -> RunView:
        record, result = self.record, self.result
        return RunView(
            run_id=record.run_id,
            recipe=record.recipe,
            workflow=record.workflow,
            adapters=record.adapters,
            status=self.status,
            created=record.created,
            stage=None,
            steps=0 if result is None else result.steps,
            metrics={} if result is None else dict(result.metrics),
            artifacts={} if result is None else dict(result.artifacts),
            error=INTERRUPTED if result is None else result.error,
            failed_stage=None if result is None else result.failed_stage,
        )


def run_directory(root: Path, run_id: str) -> Path:
    """``<root>/<run_id>``, once ``run_id`` is known to be a plain run id.

    Raises:
        Problem: ``run_id`` is not one (404: no run can have it).
    """
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise Problem(404, "unknown-run", f"no run with id {run_id!r}")
    return root / run_id


def read_past_run(directory: Path) -> PastRun | None:
    """The run in ``directory``, or ``None`` when it holds no readable ``config.json``
    whose run id is the directory's name. An unreadable ``summary.json`` counts as none."""
    try:
        record = read_run_record(directory)
    except RunDirectoryError:
        return None
    if record.run_id != directory.name:
        return None
    return PastRun(record=record, result=read_run_summary(directory))


def scan_past_runs(root: Path) -> list[PastRun]:
    """Every run directory directly under ``root``, oldest first (none if ``root`` is not
    there)."""
    try:
        directories = [path for path in root.iterdir() if path.is_dir()]
    except OSError:
        return []
    runs = [run for path in directories if (run := read_past_run(path)) is not None]
    return sorted(runs, key=lambda run: (run.record.created, run.run_id))


class StoredEvent(NamedTuple):
    """One telemetry event as an event stream sends it: its number, name and JSON."""

    seq: int
    name: str
    data: bytes


class _EventHead(msgspec.Struct):
    event: str
    seq: int


_HEAD = msgspec.json.Decoder(_EventHead)
_ROW: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])


def _lines(path: Path) -> list[bytes]:
    """The complete lines of a JSON-lines file (none if it is missing; a last line that
    was cut short is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]


def read_event_lines(directory: Path, after: int = 0) -> list[StoredEvent]:
    """The events in ``directory``'s ``events.jsonl`` numbered after ``after``, in order,
    each as written (a line that is not an event is skipped)."""
    stored = []
    for line in _lines(directory / EVENTS_FILE):
        try:
            head = _HEAD.decode(line)
        except msgspec.DecodeError:
            continue
        if head.seq > after:
            stored.append(StoredEvent(head.seq, head.event, line))
    return stored


def read_metrics_rows(directory: Path) -> list[dict[str, Any]]:
    """The rows of ``directory``'s ``metrics.jsonl``, in order."""
    rows = []
    for line in _lines(directory / METRICS_FILE):
        try:
            rows.append(_ROW.decode(line))
        except msgspec.DecodeError:
            continue
    return rows
