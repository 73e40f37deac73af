"""How many CPU threads torch computes with in a local backend: the ``threads`` setting.

On a CPU with a few cores, torch's default (one intra-op thread per physical core) costs more
than it gains for small models: their matrices are too small to split well, and OpenMP
threads that spin at every parallel region's barrier collapse when another process holds a
core.
``"auto"`` therefore gives such models one thread.

The count is applied per request in the device's worker thread (:func:`use_threads`), since
torch's intra-op setting (OpenMP's and MKL's) holds per thread once that thread has computed.
Inter-op threads are left alone: the backend starts no inter-op work, and
``torch.set_num_interop_threads`` may only be called once per process, before any inter-op
work, so it is the application's to set.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import torch

from crucible_kitchen.adapters.local_torch._model import parameter_count
from crucible_kitchen.errors import ConfigError

if TYPE_CHECKING:
    from crucible_kitchen.adapters.local_torch._config import ModelConfig

__all__ = ("SINGLE_THREAD_BELOW", "Threads", "resolve_threads", "use_threads")

Threads: TypeAlias = int | Literal["auto"]
"""A ``threads`` setting: a count ≥ 1, or ``"auto"`` (see :func:`resolve_threads`)."""

SINGLE_THREAD_BELOW: Final = 2_000_000
"""``"auto"`` gives one thread to models with fewer parameters than this (``tiny``: 0.12 M).
Measured on 2 cores (docs/benchmarks.md, "CPU threads"): below it a second thread gains less
on an idle machine (1.4-1.6x a step) and loses under load (0.8-0.9x, and the main job's
sampling collapses); from ``small`` (3.2 M) on it gains 1.9x idle and about breaks even
loaded."""

_OMP_NUM_THREADS: Final = "OMP_NUM_THREADS"


def resolve_threads(threads: object, config: ModelConfig) -> int:
    """The intra-op thread count of a model built from ``config``.

    ``threads`` is a count ≥ 1, used as is, or ``"auto"``: ``OMP_NUM_THREADS`` when it is set
    (its first value, as OpenMP reads ``"4,2"``); else one thread for a model with fewer than
    :data:`SINGLE_THREAD_BELOW` parameters; else the calling thread's current count (torch's
    default of one per physical core, or what ``torch.set_num_threads`` set).

    Raises:
        ConfigError: ``threads`` is neither a positive int nor ``"auto"``, or ``"auto"`` meets
            an ``OMP_NUM_THREADS`` that is not a positive int.
    """
    if threads == "auto":
        from_env = os.environ.get(_OMP_NUM_THREADS, "").strip()
        if from_env:
            return _positive(from_env.split(",")[0].strip(), source=_OMP_NUM_THREADS)
        if parameter_count(config) < SINGLE_THREAD_BELOW:
            return 1
        return torch.get_num_threads()
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        return threads
    raise ConfigError(
        [f"threads must be a positive int or 'auto', got {threads!r}"], source="local torch model"
    )


def use_threads(count: int) -> None:
    """Make the calling thread compute with ``count`` intra-op threads (if it does not yet)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def _positive(text: str, *, source: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError([f"{source} must be a positive int, got {text!r}"], source=source)
    return value
