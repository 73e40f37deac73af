"""Adapters: one subpackage per backend, each implementing ports from ``crucible_kitchen.ports``.

``noop`` (in memory, deterministic, instant), ``local_torch`` (real training with torch),
``tinker`` (training and sampling on a Tinker server through the official SDK) and
``filesystem`` (datasets, blobs and a model registry on local disk).
An adapter imports ports, errors, training and its own third-party library, nothing else.
Importing this package imports no backend.
"""

from __future__ import annotations

__all__: tuple[str, ...] = ()
