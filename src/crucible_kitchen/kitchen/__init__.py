"""The Kitchen facade: run workflows and recipes, watch them, cancel them, resume them.

::

    result = await Kitchen.run("supervised", {"epochs": 2}, adapters="noop")

    async with Kitchen.open(telemetry=["console"]) as kitchen:
        run = await kitchen.start("supervised", config)
        async for event in run.events(): ...
        result = await run.wait()

The Kitchen is a root supervisor; each run is a temporary child: a run supervisor with the
run's stage actors and its workflow actor (see :mod:`crucible_kitchen.workflows`). One-shot
class methods run to the end in a Kitchen of their own and return a :class:`RunResult`
(``Kitchen.run``, ``Kitchen.resume``); the instance methods of a long-lived Kitchen return a
:class:`RunHandle` (``kitchen.start``, ``kitchen.start_resumed``).

Adapter sets (``adapters="noop"``) and extra recipes are found by name among the entry
points of the installed packages (groups ``crucible_kitchen.adapters`` and
``crucible_kitchen.recipes``; see ``docs/guides/writing-adapters.md``).

A run may keep a **run directory** (``run_dir=``; by default ``runs/<run_id>/`` for recipes
that ask for one, such as ``sl_basic``)::

    config.json     run id, recipe, workflow, seed, adapter set, resolved config, version
                    (written atomically once the config and adapters are checked)
    events.jsonl    every telemetry event, one JSON object a line, flushed per line
    metrics.jsonl   tinker-cookbook metrics rows ({"step": ..., "train_mean_nll": ...})
    traces.jsonl    OpenTelemetry spans of the run and its stages (when the SDK is installed
                    and the Kitchen has no tracer provider of its own)
    checkpoints/    the training client's checkpoints: weights/<name>/ (resumable: weights,
                    optimizer, context snapshot) and sampler_weights/<name>/ (final weights
                    in sampler_weights/final/)
    tokenizer.json, blobs/, registry/   what the local adapters keep
    summary.json    the RunResult (written atomically when the run ends)

A start-up that fails validation or is interrupted leaves no run directory behind.
``Kitchen.resume(run_dir)`` continues such a run from its newest checkpoint that verifies,
with the same run id, seed and config; the final weights are those of an uninterrupted run.

:func:`convert_gguf` (``kitchen convert``) turns a GGUF file into a Hugging Face model
directory that ``model=`` of the local torch adapters loads.
Resumed runs append to the logs: step rows after the checkpoint that the interrupted process
had written appear again after a ``crucible_kitchen.training.resume`` event.
"""

from __future__ import annotations

from crucible_kitchen.adapters.local_torch import convert_gguf as convert_gguf
from crucible_kitchen.kitchen._adapters import Adapters as Adapters
from crucible_kitchen.kitchen._export import export_run as export_run
from crucible_kitchen.kitchen._handle import RunHandle as RunHandle
from crucible_kitchen.kitchen._kitchen import Kitchen as Kitchen
from crucible_kitchen.kitchen._kitchen import KitchenOptions as KitchenOptions
from crucible_kitchen.kitchen._kitchen import RunOptions as RunOptions
from crucible_kitchen.kitchen._kitchen import StartOptions as StartOptions
from crucible_kitchen.kitchen._results import DryRun as DryRun
from crucible_kitchen.kitchen._results import RecipeInfo as RecipeInfo
from crucible_kitchen.kitchen._results import RunResult as RunResult
from crucible_kitchen.kitchen._run_dir import EVENTS_FILE as EVENTS_FILE
from crucible_kitchen.kitchen._run_dir import METRICS_FILE as METRICS_FILE
from crucible_kitchen.kitchen._run_dir import RunRecord as RunRecord
from crucible_kitchen.kitchen._run_dir import read_run_record as read_run_record
from crucible_kitchen.kitchen._run_dir import read_run_summary as read_run_summary

__all__ = (
    "EVENTS_FILE",
    "METRICS_FILE",
    "Adapters",
    "DryRun",
    "Kitchen",
    "KitchenOptions",
    "RecipeInfo",
    "RunHandle",
    "RunOptions",
    "RunRecord",
    "RunResult",
    "StartOptions",
    "convert_gguf",
    "export_run",
    "read_run_record",
    "read_run_summary",
)
