"""Where a resumed run continues: the newest checkpoint of its run directory that verifies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
import msgspec

from crucible_kitchen.errors import CheckpointError, RunDirectoryError
from crucible_kitchen.kitchen._run_dir import CHECKPOINTS_DIR
from crucible_kitchen.ports import CHECKPOINT_DIR, CHECKPOINT_PAYLOAD, capability
from crucible_kitchen.stages import ContextSnapshot, snapshot_from_checkpoint

if TYPE_CHECKING:
    from crucible_kitchen.kitchen._adapters import Adapters

__all__ = ("DamagedCheckpoint", "ResumePoint", "find_resume_point")

logger = logging.getLogger("crucible_kitchen.kitchen")


@dataclass(frozen=True)
class DamagedCheckpoint:
    """A checkpoint that does not verify, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from (``None``: from its first step), its context
    snapshot, and the damaged checkpoints passed over."""

    path: str | None
    snapshot: ContextSnapshot | None
    damaged: tuple[DamagedCheckpoint, ...]


async def find_resume_point(directory: Path, adapters: Adapters) -> ResumePoint:
    """The newest checkpoint with a context snapshot that verifies.

    Looks at every ``<checkpoint dir>/<kind>/<name>/`` but the hidden ones (staging and
    set-aside directories) and reads its payload through the training client's
    :data:`~crucible_kitchen.ports.CHECKPOINT_PAYLOAD` capability, which verifies the
    checkpoint. One that does not verify (a
    missing, truncated or garbage manifest, a file missing or failing its sha256 check, a
    context snapshot that does not parse) is passed over and reported in ``damaged``.

    Raises:
        RunDirectoryError: the training client keeps no checkpoints a new process can read.
    """
    client = adapters.get("training_client")
    read_payload = capability(client, CHECKPOINT_PAYLOAD)
    if read_payload is None:
        raise RunDirectoryError(
            f"{directory}: the training client ({type(client).__name__}) keeps no checkpoints "
            "that a new process can read (it declares no CHECKPOINT_PAYLOAD); cannot resume",
            path=str(directory),
        )
    root = Path(capability(client, CHECKPOINT_DIR, directory / CHECKPOINTS_DIR))
    candidates = await anyio.to_thread.run_sync(
        lambda: sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith("."))
    )
    best: tuple[str, ContextSnapshot] | None = None
    damaged: list[DamagedCheckpoint] = []
    for checkpoint in candidates:
        try:
            payload = await read_payload(str(checkpoint))
            if payload is None or "context" not in payload:
                continue  # weights for sampling, the final state: nothing to resume from
            context = payload["context"]
            if not isinstance(context, dict):
                raise msgspec.ValidationError("the context snapshot is not an object")
            snapshot = snapshot_from_checkpoint(context)
        except (CheckpointError, msgspec.ValidationError) as exc:
            logger.warning("passing over damaged checkpoint %s: %s", checkpoint, exc)
            damaged.append(DamagedCheckpoint(str(checkpoint), str(exc)))
            continue
        if best is None or snapshot.step > best[1].step:
            best = (str(checkpoint), snapshot)
    if best is None:
        return ResumePoint(None, None, tuple(damaged))
    return ResumePoint(best[0], best[1], tuple(damaged))
