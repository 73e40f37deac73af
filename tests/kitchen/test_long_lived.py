"""A long-lived Kitchen keeps only the results of finished runs, not the runs themselves."""

from __future__ import annotations

import gc
import weakref

import pytest

from crucible_kitchen import Kitchen

pytestmark = pytest.mark.anyio

NOOP = {"max_steps": 2}


async def test_finished_runs_leave_only_their_results_behind() -> None:
    async with Kitchen.open(keep_finished=3) as kitchen:
        dropped, run_ids = [], []
        for _ in range(5):
            run = await kitchen.start("supervised", NOOP, adapters="noop", run_dir=False)
            await run.wait()
            dropped.append(weakref.ref(run))
            run_ids.append(run.run_id)
        del run
        held = await kitchen.start("supervised", NOOP, adapters="noop", run_dir=False)
        await held.wait()
        gc.collect()
        assert [ref() for ref in dropped] == [None] * 5  # nothing keeps a dropped handle
        assert kitchen.runs() == [held]  # a handle the caller holds is still listed
        finished = kitchen.finished()  # the newest three results
        assert [result.run_id for result in finished] == [*run_ids[-2:], held.run_id]
        assert finished[-1] == await held.result()
        assert {result.status for result in finished} == {"completed"}


async def test_a_run_nobody_waits_for_is_finished_and_retired_when_it_ends() -> None:
    async with Kitchen.open() as kitchen:
        run = await kitchen.start("supervised", NOOP, adapters="noop", run_dir=False)
        unawaited, run_id = weakref.ref(run), run.run_id
        assert [event.seq async for event in run.events()][-1] > 0  # the workflow ended
        del run
        await (await kitchen.start("supervised", NOOP, adapters="noop", run_dir=False)).wait()
        gc.collect()
        assert unawaited() is None
        first = kitchen.finished()[0]
        assert (first.run_id, first.status) == (run_id, "completed")
