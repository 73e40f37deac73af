"""The quickstart of docs/runtime.md: an actor under a supervisor, a crash, and the restart."""

from __future__ import annotations

import importlib.util
import logging
import math

import anyio

from crucible_kitchen.supervisors import Actor, ChildSpec, ExitKind, Message, open_supervisor


class Record(Message):  # sent with cast: fire and forget
    loss: float


class Mean(Message):  # sent with call: request and reply
    pass


class LossTracker(Actor[Record | Mean]):
    def __init__(self) -> None:
        self.losses: list[float] = []  # state lives in the instance; a restart starts afresh

    async def handle_cast(self, message: Record | Mean) -> None:
        if isinstance(message, Record):
            if math.isnan(message.loss):
                raise ValueError("NaN loss")  # any exception crashes the actor
            self.losses.append(message.loss)

    async def handle_call(self, message: Record | Mean) -> tuple[int, float]:
        return self.incarnation, sum(self.losses) / max(1, len(self.losses))


async def main() -> None:
    async with open_supervisor([ChildSpec("losses", LossTracker)]) as supervisor:
        tracker = supervisor.ref("losses")
        await tracker.cast(Record(loss=2.0))
        assert await tracker.call(Mean()) == (1, 2.0)  # incarnation 1 answers

        monitor = tracker.monitor()  # watch incarnation 1
        await tracker.cast(Record(loss=math.nan))  # crashes incarnation 1 ...
        await tracker.cast(Record(loss=1.0))  # ... while this waits in the mailbox
        assert (await monitor.wait()).kind is ExitKind.CRASH

        assert await tracker.call(Mean()) == (2, 1.0)  # incarnation 2: fresh state, same mailbox
        assert supervisor.statistics().restarts == 1
    assert not tracker.alive  # leaving the block stopped the tree


if __name__ == "__main__":
    # The supervisor logs every crash with its traceback; this one is on purpose.
    logging.getLogger("crucible_kitchen.supervisors").setLevel(logging.ERROR)
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")
