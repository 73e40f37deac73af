"""The filesystem adapters at once, keyed by port name."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import crucible_kitchen.training
from crucible_kitchen.adapters.filesystem._blob_store import FilesystemBlobStore
from crucible_kitchen.adapters.filesystem._dataset_store import FilesystemDatasetStore
from crucible_kitchen.adapters.filesystem._feedback_client import FilesystemFeedbackClient
from crucible_kitchen.adapters.filesystem._model_registry import FilesystemModelRegistry

if TYPE_CHECKING:
    import os

    from crucible_kitchen.ports import PortName

__all__ = ("bundled_data_dir", "filesystem_adapters")

BLOBS_DIR = "blobs"
REGISTRY_DIR = "registry"


def bundled_data_dir() -> Path:
    """The directory of the data bundled with ``crucible_kitchen.training``.

    Its datasets: ``chat_tasks`` (chat SFT), ``arithmetic_rl`` (RL), ``preference_tasks``
    (DPO), each a single ``"train"`` split.
    """
    return Path(crucible_kitchen.training.__file__).parent / "data"


def filesystem_adapters(
    *,
    data_root: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    feedback_root: str | os.PathLike[str] | None = None,
) -> dict[PortName, object]:
    """Adapters for ``dataset_store``, ``blob_store`` and ``model_registry`` on local disk,
    and ``feedback_client`` given a ``feedback_root``.

    Args:
        data_root: the datasets' directory; by default the bundled data
            (:func:`bundled_data_dir`).
        run_dir: blobs go to ``run_dir/blobs`` and the registry to ``run_dir/registry``;
            by default a new temporary directory.
        feedback_root: the directory of a :class:`FilesystemFeedbackClient`; the dataset
            store also reads the datasets it exports.
    """
    base = (
        Path(tempfile.mkdtemp(prefix="crucible-kitchen-run-")) if run_dir is None else Path(run_dir)
    )
    data = bundled_data_dir() if data_root is None else data_root
    ports: dict[PortName, object] = {
        "blob_store": FilesystemBlobStore(base / BLOBS_DIR),
        "model_registry": FilesystemModelRegistry(base / REGISTRY_DIR),
    }
    if feedback_root is None:
        ports["dataset_store"] = FilesystemDatasetStore(data)
    else:
        feedback = FilesystemFeedbackClient(feedback_root)
        ports["feedback_client"] = feedback
        ports["dataset_store"] = FilesystemDatasetStore(data, feedback.exports_dir)
    return ports
