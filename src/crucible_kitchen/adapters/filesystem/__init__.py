"""Filesystem adapters: datasets from JSONL/Parquet files, blobs and a model registry on disk.

- :class:`FilesystemDatasetStore` (port ``dataset_store``): ``root/<name>.jsonl`` or
  ``root/<name>/<split>.jsonl`` (Parquet with ``pyarrow``), rows validated, errors naming
  file, line and field (:class:`~crucible_kitchen.errors.DataError`).
- :class:`FilesystemBlobStore` (``blob_store``): files confined to a root, written
  atomically.
- :class:`FilesystemModelRegistry` (``model_registry``): one JSON file per model.
- :class:`FilesystemFeedbackClient` (``feedback_client``): a deployment's feedback from a
  JSONL file, exports written as datasets that a dataset store reads back.
- :func:`filesystem_adapters`: all of them, keyed by port name; :func:`bundled_data_dir`:
  where ``crucible_kitchen.training``'s bundled datasets are.

Imports neither torch nor pyarrow (which is loaded only to read a Parquet file).
"""

from __future__ import annotations

from crucible_kitchen.adapters.filesystem._blob_store import (
    FilesystemBlobStore as FilesystemBlobStore,
)
from crucible_kitchen.adapters.filesystem._bundle import bundled_data_dir as bundled_data_dir
from crucible_kitchen.adapters.filesystem._bundle import filesystem_adapters as filesystem_adapters
from crucible_kitchen.adapters.filesystem._dataset_store import (
    FilesystemDatasetStore as FilesystemDatasetStore,
)
from crucible_kitchen.adapters.filesystem._feedback_client import (
    FilesystemFeedbackClient as FilesystemFeedbackClient,
)
from crucible_kitchen.adapters.filesystem._model_registry import (
    FilesystemModelRegistry as FilesystemModelRegistry,
)

__all__ = (
    "FilesystemBlobStore",
    "FilesystemDatasetStore",
    "FilesystemFeedbackClient",
    "FilesystemModelRegistry",
    "bundled_data_dir",
    "filesystem_adapters",
)
