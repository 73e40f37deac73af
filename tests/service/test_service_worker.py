"""The Kitchen in a worker process (``kitchen="process"``): the same API as in a thread, runs
cancelled and stopped at shutdown, a worker that dies, tracing across the two processes.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only, against
aiohttp's ``TestServer`` on 127.0.0.1. Each test starts a real worker process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from _service_support import (
    NOOP_RUN,
    RECONNECTIONS,
    EventReader,
    Gate,
    follow,
    follow_by,
    gated_recipe,
    problem,
    serving,
)
from _service_support import start as start_run
from aiohttp import web

from crucible_kitchen import Kitchen, RunResult
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.service import (
    KitchenService,
    ServiceSettings,
    StoredEvent,
    TrackedRun,
    _worker,
    create_app,
)
from crucible_kitchen.service._problems import Problem
from crucible_kitchen.service._worker import (
    KitchenWorker,
    Refused,
    RunProgress,
    Started,
    StartRun,
    ToService,
    WorkerSettings,
    _Worker,
)
from crucible_kitchen.telemetry import configure_tracing, get_span_exporter

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp.test_utils import TestClient

pytestmark = pytest.mark.anyio

ENDLESS = {"recipe": "supervised", "adapters": "noop", "config": {"epochs": 10_000}}
"""A noop run that goes on (for minutes) until it is stopped."""
STEP = "crucible_kitchen.training.step"


async def until_a_step(events: EventReader) -> None:
    """Read the run's events until its first training step."""
    while (frame := await events.next()) is not None:
        if frame.event == STEP:
            return
    raise AssertionError("the run ended before its first step")


async def ended_with(events: EventReader) -> str:
    """Read the stream to its end; the final status its ``end`` event carries."""
    frames = await events.rest()
    assert frames[-1].event == "end", frames[-1]
    return str(frames[-1].data["status"])


def last_seq(run: TrackedRun) -> int:
    """The number of the run's last event (kept: the run has no run directory)."""
    assert run.events
    return run.events[-1].seq


async def everything_about(client: TestClient[Any, Any], run_id: str) -> dict[str, Any]:
    """What the API tells of an ended run, without what differs from run to run."""
    events = await (await follow(client, run_id)).rest()
    view = await (await client.get(f"/runs/{run_id}")).json()
    rows = (await (await client.get(f"/runs/{run_id}/metrics")).json())["rows"]
    for varying in ("run_id", "created"):
        del view[varying]
    view["artifacts"] = sorted(view["artifacts"])  # their names hold the run's id
    return {
        "events": [(frame.id, frame.event) for frame in events],
        "view": view,
        "rows": rows,
    }


async def test_a_run_in_the_worker_answers_as_a_run_in_a_thread(tmp_path: Path) -> None:
    seen = {}
    for kitchen in ("thread", "process"):
        async with serving(tmp_path / kitchen, kitchen=kitchen) as (client, service):
            run_id = await start_run(client, {**NOOP_RUN, "seed": 3})
            assert (await service.result(service.run(run_id))).status == "completed"
            seen[kitchen] = await everything_about(client, run_id)
            emitted = last_seq(service.run(run_id))
            recipes = (await (await client.get("/recipes")).json())["recipes"]
        seen[kitchen]["recipes"] = recipes
        assert [seq for seq, _ in seen[kitchen]["events"][:-1]] == list(range(1, emitted + 1))
    assert seen["process"] == seen["thread"]
    assert seen["process"]["view"]["status"] == "completed"
    assert seen["process"]["events"][-1] == (None, "end")


async def test_the_worker_is_a_process_of_its_own(tmp_path: Path) -> None:
    async with serving(tmp_path, kitchen="process") as (client, service):
        assert service.worker_pid not in (None, os.getpid())
        with pytest.raises(RuntimeError, match="worker process"):
            service.kitchen  # noqa: B018
        health = await (await client.get("/health")).json()
        assert health["status"] == "ok"
    assert service.worker_pid is None


async def test_bad_starts_are_refused_by_the_worker_as_by_a_thread(tmp_path: Path) -> None:
    async with serving(tmp_path, kitchen="process") as (client, _):
        body = await problem(
            await client.post("/runs", json={"recipe": "nope"}), 422, "unknown-recipe"
        )
        assert "no recipe named 'nope'" in body["detail"]
        bad = {**NOOP_RUN, "config": {"max_steps": 0, "batch_size": 0}}
        body = await problem(await client.post("/runs", json=bad), 422, "invalid-config")
        assert len(body["errors"]) == 2
        unknown_set = {**NOOP_RUN, "adapters": "nowhere"}
        await problem(await client.post("/runs", json=unknown_set), 422, "unknown-adapter-set")


async def test_the_worker_says_why_a_run_cannot_resume_without_showing_server_paths(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "runs" / "kept"
    done = await Kitchen.run("supervised", NOOP_RUN["config"], adapters="noop", run_dir=kept)
    assert done.status == "completed"
    kept.rename(kept.parent / done.run_id)  # where the service looks for the run
    async with serving(tmp_path, kitchen="process") as (client, _):
        resuming = await client.post(f"/runs/{done.run_id}/resume")
        body = await problem(resuming, 409, "cannot-resume")
    assert f"in <root>/{done.run_id} completed already" in body["detail"]
    assert str(tmp_path) not in body["detail"]


async def test_a_run_in_the_worker_is_followed_live_and_cancelled(tmp_path: Path) -> None:
    async with serving(tmp_path, kitchen="process") as (client, service):
        run_id = await start_run(client, ENDLESS)
        events = await follow(client, run_id)
        await until_a_step(events)
        running = await (await client.get(f"/runs/{run_id}")).json()
        assert running["status"] == "running"
        assert (await client.post(f"/runs/{run_id}/cancel")).status == 202
        assert await ended_with(events) == "cancelled"
        result = await service.result(service.run(run_id))
        assert result.status == "cancelled"
        assert result.steps > 0
        await problem(await client.post(f"/runs/{run_id}/cancel"), 409, "run-ended")
        again = await follow(client, run_id, **{"Last-Event-ID": "2"})
        frames = await again.rest()
        assert frames[0].id == 3
        assert frames[-1].data == {"status": "cancelled"}


@pytest.mark.parametrize("way", RECONNECTIONS)
async def test_a_client_that_reconnects_to_a_live_run_in_the_worker_misses_nothing(
    tmp_path: Path, way: str
) -> None:
    async with serving(tmp_path, kitchen="process") as (client, service):
        run_id = await start_run(client, ENDLESS)
        first = await follow(client, run_id)
        await until_a_step(first)
        await first.close()  # gone mid-stream, having seen events 1, 2, ...
        again = await follow_by(client, run_id, way, after=2)
        frames = [await again.next()]
        assert (await client.post(f"/runs/{run_id}/cancel")).status == 202
        frames += await again.rest()
        await again.close()
        result = await service.result(service.run(run_id))
    assert frames[-1] is not None
    assert (frames[-1].event, frames[-1].data) == ("end", {"status": "cancelled"})
    seqs = [frame.id for frame in frames[:-1] if frame is not None]
    assert seqs == list(range(3, last_seq(service.run(run_id)) + 1))
    assert result.status == "cancelled"


async def test_a_killed_worker_fails_its_runs_and_never_hangs(tmp_path: Path) -> None:
    async with serving(tmp_path, kitchen="process", max_runs_per_client=None) as (client, service):
        runs = [await start_run(client, ENDLESS) for _ in range(2)]
        streams = [await follow(client, run_id) for run_id in runs]
        for events in streams:
            await until_a_step(events)
        assert service.worker_pid is not None
        os.kill(service.worker_pid, signal.SIGKILL)
        for events in streams:
            assert await ended_with(events) == "failed"
        for run_id in runs:
            result = await service.result(service.run(run_id))
            assert result.status == "failed"
            assert f"exited with status {-signal.SIGKILL}" in (result.error or "")
            view = await (await client.get(f"/runs/{run_id}")).json()
            assert (view["status"], view["error"]) == ("failed", result.error)
        health = await client.get("/health")
        assert (health.status, (await health.json())["status"]) == (503, "failed")
        await problem(await client.post("/runs", json=NOOP_RUN), 503, "kitchen-worker-died")


async def test_a_worker_that_dies_while_idle_is_reported_and_refuses_runs(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, kitchen="process") as (client, service):
        assert service.worker_pid is not None
        os.kill(service.worker_pid, signal.SIGKILL)
        await problem(await client.post("/runs", json=NOOP_RUN), 503, "kitchen-worker-died")
        health = await client.get("/health")
        assert (health.status, (await health.json())["status"]) == (503, "failed")
        assert f"exited with status {-signal.SIGKILL}" in (service.failure or "")


async def test_shutdown_stops_every_run_in_the_worker_with_a_final_status(tmp_path: Path) -> None:
    async with serving(tmp_path, kitchen="process", max_runs_per_client=None) as (client, service):
        runs = [await start_run(client, ENDLESS) for _ in range(3)]
        for run_id in runs:
            await until_a_step(await follow(client, run_id))
    results = [service.run(run_id).result for run_id in runs]
    assert [result and result.status for result in results] == ["cancelled"] * 3
    assert all(result and result.steps > 0 for result in results)


async def test_shutdown_waits_for_a_run_whose_start_the_worker_has_not_answered(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, kitchen="process") as (_, service):
        starting = asyncio.ensure_future(
            service.start_run(
                client="c", recipe="supervised", config={"epochs": 10_000}, adapters="noop", seed=0
            )
        )
        await anyio.wait_all_tasks_blocked()  # the start is sent; the worker has not answered
        assert not starting.done()
        await service.shutdown()
        assert starting.done()
        run = starting.result()
        assert run.result is not None
        assert run.result.status == "cancelled"


SETTINGS = WorkerSettings(root="runs", stop_grace_s=1.0, niceness=0, tracing=None)


async def test_a_worker_whose_news_cannot_be_read_is_killed_and_fails_its_starts(
    tmp_path: Path,
) -> None:
    worker = await KitchenWorker.start(
        WorkerSettings(root=str(tmp_path), stop_grace_s=1.0, niceness=0, tracing=None)
    )
    worker._reader.feed_data(b"\x00\x00\x00\x01\xc1")  # a frame that is no msgpack
    starting = asyncio.ensure_future(
        worker.start_run(
            lambda request: StartRun(
                request=request, recipe="nope", config={}, adapters="noop", seed=0, trace={}
            ),
            lambda started: started,
        )
    )
    await anyio.wait_all_tasks_blocked()
    with pytest.raises(msgspec.DecodeError):
        await worker.receive(lambda _: None, lambda _: None)
    with pytest.raises(Problem, match="worker process was killed") as caught:
        await starting
    assert caught.value.kind == "kitchen-worker-died"
    assert await worker.process.wait() == -signal.SIGKILL
    await worker.starts_settled()


COMPLETED = RunResult(
    run_id="r",
    workflow="w",
    recipe=None,
    status="completed",
    metrics={},
    artifacts={},
    steps=1,
    duration_s=0.0,
)
"""The result of the run that :func:`live_run` makes."""


def live_run(service: KitchenService, run_dir: Path | None = None) -> TrackedRun:
    """A run ``r`` in ``service``'s worker, live, as ``service`` records it."""
    directory = None if run_dir is None else str(run_dir)
    started = Started(request=0, run_id="r", recipe=None, workflow="w", run_dir=directory)
    run = TrackedRun.begun(started, handle=None, client="c", keep_events=True)
    service._live[run.run_id] = service._runs[run.run_id] = run
    return run


async def test_a_service_that_cannot_read_its_worker_fails_the_live_runs() -> None:
    class UnreadableWorker:
        pid = 4242

        async def receive(self, *_: object) -> int:
            raise msgspec.DecodeError("garbage")

    service = KitchenService(ServiceSettings(kitchen="process"))
    run = live_run(service)
    await service._hear(UnreadableWorker())  # type: ignore[arg-type]
    assert run.ended.is_set()
    assert run.result is not None
    assert (run.result.status, run.result.error) == (
        "failed",
        "the kitchen's worker process (pid 4242) was killed while runs were running",
    )
    assert service.failure == run.result.error


async def test_a_worker_not_ready_in_time_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def spied(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        spawned.append(await spawn(*args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spied)
    monkeypatch.setattr(_worker, "READY_TIMEOUT_S", 0.001)  # no interpreter starts that fast
    with pytest.raises(RuntimeError, match=r"was not ready within 0\.001 s"):
        await KitchenWorker.start(SETTINGS)
    assert await spawned[0].wait() == -signal.SIGKILL


async def test_the_request_span_parents_the_run_span_in_the_worker(tmp_path: Path) -> None:
    provider = configure_tracing("memory")
    assert provider is not None
    spans_file = tmp_path / "worker-spans.jsonl"
    tracing = {"tracer_provider": provider, "worker_tracing": f"jsonl:{spans_file}"}
    async with serving(tmp_path, kitchen="process", **tracing) as (client, service):
        run_id = await start_run(client, NOOP_RUN)
        await service.result(service.run(run_id))
    request = next(
        span
        for span in get_span_exporter(provider).get_finished_spans()  # type: ignore[attr-defined]
        if span.name == "POST /runs"
    )
    provider.shutdown()
    worker_spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    run = next(span for span in worker_spans if span["name"] == "workflow supervised")
    assert run["parent_id"] == format(request.context.span_id, "016x")
    assert run["trace_id"] == format(request.context.trace_id, "032x")
    assert run["attributes"]["crucible_kitchen.run_id"] == run_id
    stages = [span for span in worker_spans if "crucible_kitchen.stage" in span["attributes"]]
    assert stages
    assert {span["parent_id"] for span in stages} == {run["span_id"]}


async def test_a_worker_that_cannot_start_fails_the_application_start(tmp_path: Path) -> None:
    app = create_app(root=tmp_path, kitchen="process", worker_tracing="no-such-exporter")
    runner = web.AppRunner(app)
    failure = "worker process failed to start: TelemetryError: unknown span exporter"
    with pytest.raises(RuntimeError, match=failure):
        await runner.setup()


async def test_a_follower_that_read_the_last_event_sees_the_end_that_comes_alone() -> None:
    """The end of a run can come in a message of its own, while an event stream's follower
    is away handing on the run's last events: the follower must end, not wait for news."""
    service = KitchenService(ServiceSettings(kitchen="process"))
    run = live_run(service)
    last = StoredEvent(1, "crucible_kitchen.workflow.run.stop", b"{}")
    service._progressed(RunProgress(run.run_id, [last], [], None, 1, {}))
    batches = service.event_batches(run.run_id, 0)
    assert await anext(batches) == [last]  # the follower is away, at its yield
    service._finish_live(run, COMPLETED)
    with anyio.fail_after(10), pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_a_stream_asked_for_before_its_run_ends_reads_every_event(tmp_path: Path) -> None:
    """The run can end (and its record drop its events: its run directory has them) between
    the moment a stream is asked for and its first read: the stream still reads them all."""
    service = KitchenService(ServiceSettings(kitchen="process"))
    run = live_run(service, tmp_path / "r")
    events = [StoredEvent(seq, "crucible_kitchen.workflow.run.stop", b"{}") for seq in (1, 2)]
    service._progressed(RunProgress(run.run_id, events, [], None, 1, {}))
    batches = service.event_batches(run.run_id, 1)
    service._finish_live(run, COMPLETED)
    assert run.events is None
    with anyio.fail_after(10):
        assert [batch async for batch in batches] == [events[1:]]


class FailingKitchen:
    """A Kitchen whose every start fails unexpectedly, with internals in the message."""

    async def start(self, *_: object, **__: object) -> object:
        raise RuntimeError("cannot open /srv/secret/runs/r1/lock")


async def test_an_unexpected_start_failure_in_the_worker_answers_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = _Worker(FailingKitchen(), None, None, SETTINGS)  # type: ignore[arg-type]
    request = StartRun(request=7, recipe="supervised", config={}, adapters="noop", seed=0, trace={})
    await worker._run(request)
    (frame,) = worker._outbox
    refused = msgspec.msgpack.decode(frame[4:], type=ToService)
    assert refused == Refused(
        request=7,
        status=500,
        kind="internal-error",
        detail="the service failed to handle the request; its log has the details",
        errors=[],
    )
    assert "/srv/secret/runs/r1/lock" in caplog.text  # logged where it happened


def test_settings_that_a_worker_process_cannot_honour_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceSettings(kitchen="process", recipes=[gated_recipe(Gate())])
    assert caught.value.problems == [
        "recipes: the host's own recipes cannot reach a worker process; register them by "
        "entry point, or use kitchen='thread'"
    ]
    with pytest.raises(ConfigError, match="worker_tracing: only a kitchen='process'"):
        ServiceSettings(worker_tracing="console")
    with pytest.raises(ConfigError, match="kitchen: must be 'thread' or 'process'"):
        ServiceSettings(kitchen="fork")  # type: ignore[arg-type]
