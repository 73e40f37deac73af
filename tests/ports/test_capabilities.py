"""Optional capabilities: declared under typed keys, looked up with ``capability``, forwarded
by the fault-injection proxy, and used by the built-in stages instead of guessing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crucible_kitchen import Adapters, Kitchen
from crucible_kitchen.adapters.noop import NoopFuture, NoopTrainingClient
from crucible_kitchen.ports import (
    CHECKPOINT_DIR,
    SAVE_STATE_WITH_PAYLOAD,
    Capability,
    capability,
    declared_capabilities,
)
from crucible_kitchen.testing import FaultTrace

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crucible_kitchen.ports import Capabilities, SaveStateResponse

LIMIT: Capability[int] = Capability("limit", "a number")


class Declares:
    def __init__(self) -> None:
        self.asked = 0

    @property
    def capabilities(self) -> Capabilities:
        return {LIMIT: self._limit}

    def _limit(self) -> int:
        self.asked += 1
        return 7


def test_a_declared_capability_is_made_when_asked_for() -> None:
    provider = Declares()
    assert provider.asked == 0
    assert capability(provider, LIMIT) == 7
    assert provider.asked == 1
    assert capability(provider, CHECKPOINT_DIR) is None
    assert capability(provider, CHECKPOINT_DIR, Path("runs")) == Path("runs")
    assert repr(LIMIT) == "Capability('limit')"


def test_an_object_without_declarations_has_no_capabilities() -> None:
    assert declared_capabilities(object()) == {}
    assert capability(NoopTrainingClient(), SAVE_STATE_WITH_PAYLOAD) is None
    assert capability(3, LIMIT, 0) == 0


class BadlyDeclared:
    def __init__(self, declared: Any) -> None:
        self.capabilities = declared


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ([LIMIT], "BadlyDeclared.capabilities is a list, not a mapping"),
        ({"limit": lambda: 1}, "maps 'limit' to"),
        ({LIMIT: 1}, "maps Capability\\('limit'\\) to 1"),
    ],
)
def test_a_malformed_declaration_is_a_type_error(declared: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        capability(BadlyDeclared(declared), LIMIT)


class SavesPayloads(NoopTrainingClient):
    """A noop client that keeps checkpoint payloads (declared), like the local backend."""

    def __init__(self) -> None:
        super().__init__(seed=11)
        self.payloads: dict[str, Mapping[str, Any]] = {}

    @property
    def capabilities(self) -> Capabilities:
        return {SAVE_STATE_WITH_PAYLOAD: lambda: self.save_with_payload}

    async def save_with_payload(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any]
    ) -> NoopFuture[SaveStateResponse]:
        future = await self.save_state(name, request_id=request_id)
        self.payloads[(await future.result()).path] = user_payload
        return future


@pytest.mark.anyio
async def test_checkpoints_carry_the_context_when_the_client_declares_payloads() -> None:
    client = SavesPayloads()
    trace = FaultTrace()
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            "supervised",
            {"epochs": 1, "save_every": 4},
            adapters=Adapters.noop(seed=11).replace(training_client=client),
            seed=11,
            fault_hook=trace,
        )
        result = await run.wait()
    assert result.status == "completed"
    assert client.payloads
    steps = sorted(payload["context"]["step"] for payload in client.payloads.values())
    assert steps[0] == 4
    # The fault hook sees the call made through the capability, under the capability's name.
    reached = {(point, operation) for _, point, operation in trace.seen}
    assert ("before_call", "save_state_with_payload") in reached
    assert ("awaiting", "save_state_with_payload") in reached
