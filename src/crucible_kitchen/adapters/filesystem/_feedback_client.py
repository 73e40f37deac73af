"""A feedback client over files: a deployment's feedback as JSONL, exports as datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio.to_thread
import msgspec

from crucible_kitchen._files import atomic_write
from crucible_kitchen.adapters.filesystem._files import RequestLedger, confined_path, os_error
from crucible_kitchen.errors import DataError, InvalidRequest, ResourceNotFound
from crucible_kitchen.ports import CuratedExample, FeedbackExport, FeedbackTrigger, check_blob_key

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    from crucible_kitchen.ports import ExportFormat

    T = TypeVar("T")

__all__ = ("FilesystemFeedbackClient",)

_PORT: Final = "feedback_client"
EXPORTS_DIR: Final = "exports"
"""Where the exports go under the client's root: a dataset store root of their own."""
_DECODER: Final = msgspec.json.Decoder(CuratedExample)


class FilesystemFeedbackClient:
    """Implements :class:`~crucible_kitchen.ports.FeedbackClient` over files under ``root``.

    - ``root/<deployment_id>.jsonl`` holds the deployment's feedback, one
      :class:`~crucible_kitchen.ports.CuratedExample` a line (``example_id``, ``prompt``,
      ``response``, ``source``, ``score``);
    - the trigger ``"data_volume"`` fires when it holds at least ``min_feedback`` examples;
    - :meth:`curate` returns them best score first (ties by id);
    - :meth:`export` writes the examples as the dataset ``feedback-<deployment_id>-<key>``
      (split ``"train"``, chat ``messages`` rows) under ``root/exports``, atomically; ``key``
      comes from the request id, so a re-sent export writes the same dataset. Give a
      :class:`FilesystemDatasetStore` that directory as one of its roots to read exports back;
    - :meth:`update_baseline` writes ``root/<deployment_id>.baseline.json``
      (``{"model_id": ...}``); :meth:`baseline` reads it.

    Args:
        root: the feedback directory (created if missing).
        min_feedback: examples at which the ``"data_volume"`` trigger fires.

    Raises:
        ValueError: ``min_feedback`` < 1.
    """

    def __init__(self, root: str | os.PathLike[str], *, min_feedback: int = 1) -> None:
        if min_feedback < 1:
            raise ValueError(f"min_feedback {min_feedback} must be >= 1")
        self._root = Path(root)
        (self._root / EXPORTS_DIR).mkdir(parents=True, exist_ok=True)
        self._min_feedback = min_feedback
        self._ledger = RequestLedger(_PORT)

    @property
    def exports_dir(self) -> Path:
        """Where the exported datasets are written (a dataset store root)."""
        return self._root / EXPORTS_DIR

    async def check_triggers(self, deployment_id: str) -> list[FeedbackTrigger]:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.check_triggers`.

        Raises:
            ResourceNotFound: no feedback file for ``deployment_id``.
            DataError: a line of it is not a feedback example.
        """
        examples = await self._io("check_triggers", lambda: self._feedback(deployment_id))
        if len(examples) < self._min_feedback:
            return []
        return [
            FeedbackTrigger(
                kind="data_volume",
                value=float(len(examples)),
                threshold=float(self._min_feedback),
                detail=f"{len(examples)} feedback examples",
            )
        ]

    async def curate(self, deployment_id: str, *, limit: int | None = None) -> list[CuratedExample]:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.curate`."""
        if limit is not None and limit < 0:
            raise InvalidRequest(
                f"curate: limit {limit} must be >= 0", port=_PORT, operation="curate"
            )
        examples = await self._io("curate", lambda: self._feedback(deployment_id))
        examples.sort(key=lambda example: (-example.score, example.example_id))
        return examples if limit is None else examples[:limit]

    async def export(
        self,
        deployment_id: str,
        examples: Sequence[CuratedExample],
        *,
        format: ExportFormat = "jsonl",
        request_id: str,
    ) -> FeedbackExport:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.export` (JSONL only).

        Raises:
            InvalidRequest: no examples, or ``format`` other than ``"jsonl"``.
        """
        if not examples:
            raise InvalidRequest(
                "export: there are no examples to export", port=_PORT, operation="export"
            )
        if format != "jsonl":
            raise InvalidRequest(
                f"export: format {format!r}: the filesystem feedback client writes jsonl",
                port=_PORT,
                operation="export",
            )
        key = hashlib.sha256(request_id.encode()).hexdigest()[:12]
        dataset = f"feedback-{self._deployment_key(deployment_id, 'export')}-{key}"
        lines = [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": example.prompt},
                        {"role": "assistant", "content": example.response},
                    ],
                    "example_id": example.example_id,
                    "source": example.source,
                }
            )
            + "\n"
            for example in examples
        ]
        path = self.exports_dir / dataset / "train.jsonl"

        def work() -> FeedbackExport:
            atomic_write(path, "".join(lines).encode())
            return FeedbackExport(
                dataset=dataset, split="train", num_examples=len(lines), format=format
            )

        fingerprint = hashlib.sha256(("".join(lines) + deployment_id).encode()).digest()
        try:
            return await self._ledger.run(
                "export", work, request_id=request_id, fingerprint=fingerprint
            )
        except OSError as exc:
            raise os_error(exc, port=_PORT, operation="export", request_id=request_id) from exc

    async def update_baseline(self, deployment_id: str, model_id: str, *, request_id: str) -> None:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.update_baseline`."""
        path = self._file(deployment_id, ".baseline.json", "update_baseline")
        data = json.dumps({"model_id": model_id}).encode()
        try:
            await self._ledger.run(
                "update_baseline",
                lambda: atomic_write(path, data),
                request_id=request_id,
                fingerprint=hashlib.sha256(data).digest(),
            )
        except OSError as exc:
            raise os_error(
                exc, port=_PORT, operation="update_baseline", request_id=request_id
            ) from exc

    async def baseline(self, deployment_id: str) -> str | None:
        """The model id of the deployment's baseline; ``None`` before any update."""
        path = self._file(deployment_id, ".baseline.json", "baseline")

        def work() -> str | None:
            if not path.is_file():
                return None
            return str(json.loads(path.read_text())["model_id"])

        return await self._io("baseline", work)

    # ---------------------------------------------------------------------------------------

    def _deployment_key(self, deployment_id: str, operation: str) -> str:
        return check_blob_key(deployment_id, operation=operation, port=_PORT, what="deployment id")

    def _file(self, deployment_id: str, suffix: str, operation: str) -> Path:
        key = self._deployment_key(deployment_id, operation) + suffix
        return confined_path(self._root, key, port=_PORT, operation=operation)

    def _feedback(self, deployment_id: str) -> list[CuratedExample]:
        path = self._file(deployment_id, ".jsonl", "read")
        if not path.is_file():
            raise ResourceNotFound(
                f"no feedback for deployment {deployment_id!r} (expected {path})",
                port=_PORT,
                operation="read",
                resource=deployment_id,
            )
        examples = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                examples.append(_DECODER.decode(line))
            except msgspec.DecodeError as exc:
                raise DataError(f"{path}, line {number}: {exc}") from exc
        return examples

    async def _io(self, operation: str, work: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(work)
        except OSError as exc:
            raise os_error(exc, port=_PORT, operation=operation) from exc
