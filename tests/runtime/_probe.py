"""A test actor whose every behaviour is steered by messages and by shared knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from crucible_kitchen.errors import Shutdown
from crucible_kitchen.supervisors import Actor, ExitReason, Message, ReplyHandle


class Ping(Message):
    value: int = 0


class Crash(Message):
    text: str = "boom"


class Hang(Message):
    pass


class StopNormally(Message):
    pass


class StopShutdown(Message):
    reason: str = "done"


class Defer(Message):
    pass


class Note(Message):
    text: str


ProbeMsg = Ping | Crash | Hang | StopNormally | StopShutdown | Defer | Note


@dataclass
class Knobs:
    """Shared, mutable steering for every incarnation of one probe."""

    start_failures: int = 0
    """The next this-many starts raise."""
    start_gate: anyio.Event | None = None
    """on_start waits for it."""
    start_gates: list[anyio.Event] = field(default_factory=list)
    """Each start takes the first of these (instead of ``start_gate``) and waits for it."""
    stop_delay: float = 0.0
    """on_stop sleeps this long (to test shutdown timeouts)."""
    stop_error: bool = False
    deferred: list[ReplyHandle] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Log:
    """What every probe did, in order: ("start", name, n), ("fail", name, n) for a start that
    raised, ("stop", name, reason kind)."""

    events: list[tuple[str, str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[str]:
        return [name for event, name, _ in self.events if event == kind]


class Probe(Actor[ProbeMsg]):
    def __init__(self, log: Log, name: str, knobs: Knobs | None = None) -> None:
        self.log = log
        self.name = name
        self.knobs = knobs or Knobs()

    async def on_start(self) -> None:
        gates = self.knobs.start_gates
        gate = gates.pop(0) if gates else self.knobs.start_gate
        if gate is not None:
            await gate.wait()
        if self.knobs.start_failures > 0:
            self.knobs.start_failures -= 1
            self.log.events.append(("fail", self.name, self.incarnation))
            raise RuntimeError(f"{self.name} cannot start")
        self.log.events.append(("start", self.name, self.incarnation))

    async def handle_call(self, message: ProbeMsg) -> Any:
        match message:
            case Ping(value=value):
                return (self.name, self.incarnation, value)
            case Crash(text=text):
                raise ValueError(text)
            case Hang():
                await anyio.sleep_forever()
            case StopNormally():
                self.stop()
                return "stopping"
            case StopShutdown(reason=reason):
                raise Shutdown(reason)
            case Defer():
                self.knobs.deferred.append(self.defer_reply())
                return "ignored"
        raise AssertionError(message)

    async def handle_cast(self, message: ProbeMsg) -> None:
        match message:
            case Note(text=text):
                self.knobs.notes.append(f"{self.incarnation}:{text}")
            case Crash(text=text):
                raise ValueError(text)
            case StopNormally():
                self.stop()
            case Hang():
                await anyio.sleep_forever()
            case _:
                pass

    async def on_stop(self, reason: ExitReason) -> None:
        self.log.events.append(("stop", self.name, reason.kind.value))
        if self.knobs.stop_delay:
            await anyio.sleep(self.knobs.stop_delay)
        if self.knobs.stop_error:
            raise RuntimeError("cleanup failed")


async def settle() -> None:
    """Let the supervisor finish reacting to what just happened."""
    await anyio.wait_all_tasks_blocked()


class FakeClock:
    """A clock for restart-intensity tests: time moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
