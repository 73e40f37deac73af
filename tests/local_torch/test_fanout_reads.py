"""A fanned-out sampler's read of another rank's result, on rank 1 of 3, against a fake
store: a cancelled awaiter never makes the rank read (and count its read of) a result twice,
which would remove the result before rank 2 reads it."""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from _cancelled_awaiter import await_after_a_cancelled_awaiter

from crucible_kitchen.adapters.local_torch import _fanout
from crucible_kitchen.adapters.local_torch._distributed import DistributedGroup
from crucible_kitchen.adapters.local_torch._fanout import FannedOutSamplingClient
from crucible_kitchen.ports import ModelInput, SampledSequence, SampleResponse, SamplingParams

if TYPE_CHECKING:
    from datetime import timedelta

RESPONSE = SampleResponse(sequences=(SampledSequence(tokens=(4, 2), stop_reason="length"),))


class _Store:
    """The group's store, as rank 1 sees it; ``waiting`` is set once a read waits for a key,
    and the key's value arrives when the test calls :meth:`publish`. A read runs from
    :meth:`wait` to :meth:`add`; :meth:`finished` waits until no read is running."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.waiting = threading.Event()
        self._published = threading.Event()
        self._running = 0
        self._changed = threading.Condition()

    def finished(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._running == 0)

    def _enter(self, change: int) -> None:
        with self._changed:
            self._running += change
            self._changed.notify_all()

    def publish(self, key: str, value: bytes) -> None:
        self.values[key] = value
        self._published.set()

    def wait(self, keys: list[str], timeout: timedelta) -> None:
        self._enter(1)
        self.waiting.set()
        if not self._published.wait(timeout.total_seconds()) or keys[0] not in self.values:
            self._enter(-1)
            raise RuntimeError(f"wait timeout for {keys}")

    def get(self, key: str) -> bytes:
        if key not in self.values:
            self._enter(-1)
            raise RuntimeError(f"no key {key}")
        value: bytes = self.values[key]
        return value

    def add(self, key: str, amount: int) -> int:
        self.values[key] = self.values.get(key, 0) + amount
        count: int = self.values[key]
        self._enter(-1)
        return count

    def delete_key(self, key: str) -> bool:
        return self.values.pop(key, None) is not None


@pytest.mark.anyio
async def test_a_cancelled_awaiter_does_not_read_the_result_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _Store()
    monkeypatch.setattr(_fanout, "_thread_store", lambda group: store)
    group = DistributedGroup(rank=1, world_size=3, local_rank=1, backend="gloo", timeout=5.0)
    # Request 0 is rank 0's: this rank never computes it (no inner client is used).
    client = FannedOutSamplingClient(None, group, "1/initial#0")  # type: ignore[arg-type]
    future = await client.sample(ModelInput.from_ints([1]), 1, SamplingParams(max_tokens=2))
    got = await await_after_a_cancelled_awaiter(
        future.result,
        partial(anyio.to_thread.run_sync, store.waiting.wait),
        partial(store.publish, client._key(0), msgspec.msgpack.encode(RESPONSE)),
    )
    await anyio.to_thread.run_sync(store.finished)
    assert got == RESPONSE
    key = client._key(0)
    assert store.values[f"{key}/read"] == 1  # this rank's read, counted once
    assert key in store.values  # left for rank 2
