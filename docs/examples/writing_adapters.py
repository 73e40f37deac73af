"""The example of docs/guides/writing-adapters.md: a BlobStore and a SamplingClient adapter.

Run it with ``python docs/examples/writing_adapters.py``: ``main`` runs on asyncio, then on trio.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import random
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.lowlevel

from crucible_kitchen import Adapters, Context, Kitchen, Stage, Workflow
from crucible_kitchen.adapters.noop import NoopTokenizer
from crucible_kitchen.errors import (
    InvalidRequest,
    PortError,
    RequestIdConflict,
    ResourceNotFound,
    TransientBackendError,
)
from crucible_kitchen.ports import (
    FUTURE_DONE,
    BlobInfo,
    ModelInput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    capability,
    check_adapter,
    check_blob_key,
)
from crucible_kitchen.testing import (
    KillPoint,
    StageKiller,
    check_blob_store,
    check_sampling_client,
    with_latency,
)
from crucible_kitchen.workflows import stage

if TYPE_CHECKING:
    from crucible_kitchen.ports import BlobStore, Capabilities, SamplingClient

T = TypeVar("T")

# --- a vendor SDK, as an adapter finds it: its own API, its own exceptions ------------------


class StoreError(Exception):
    """Base of the vendor's exceptions."""


class Throttled(StoreError):
    """The service asks the caller to slow down."""


class NoSuchKey(StoreError):
    """Nothing is stored under the key."""


class VendorStoreClient:
    """Stands in for an object-store SDK client (synchronous, like many SDKs)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0  # how many writes reached the service
        self.throttle_next = 0  # make the next N calls fail with Throttled

    def _maybe_throttle(self) -> None:
        if self.throttle_next:
            self.throttle_next -= 1
            raise Throttled("503 Slow Down")

    def put_object(self, key: str, body: bytes) -> None:
        self._maybe_throttle()
        self.objects[key] = body
        self.puts += 1

    def get_object(self, key: str) -> bytes:
        self._maybe_throttle()
        try:
            return self.objects[key]
        except KeyError:
            raise NoSuchKey(key) from None

    def delete_object(self, key: str) -> bool:
        self._maybe_throttle()
        return self.objects.pop(key, None) is not None

    def list_objects(self, prefix: str) -> list[str]:
        self._maybe_throttle()
        return [key for key in self.objects if key.startswith(prefix)]


# --- the adapter: implements crucible_kitchen.ports.BlobStore over the vendor client ---------

PORT = "blob_store"


def translated(operation: str, exc: StoreError, key: str) -> Exception:
    """The port's error for a vendor exception; the caller raises it ``from exc``."""
    if isinstance(exc, Throttled):
        return TransientBackendError(f"{operation}: {exc}", port=PORT, operation=operation)
    if isinstance(exc, NoSuchKey):
        return ResourceNotFound(
            f"{operation}: no blob {key!r}", port=PORT, operation=operation, resource=key
        )
    return TransientBackendError(f"{operation}: {exc!r}", port=PORT, operation=operation)


class VendorBlobStore:
    """A :class:`~crucible_kitchen.ports.BlobStore` over :class:`VendorStoreClient`.

    Mutating calls are deduplicated on ``request_id``: a re-sent request gets the first
    answer without touching the service again; a request that failed is forgotten, so
    re-sending it runs it; the same id with another request is a ``RequestIdConflict``.
    """

    def __init__(self, client: VendorStoreClient) -> None:
        self._client = client
        self._answers: dict[str, tuple[tuple[str, str, str], object]] = {}

    def _replay(self, request_id: str, request: tuple[str, str, str]) -> object | None:
        known = self._answers.get(request_id)
        if known is None:
            return None
        if known[0] != request:
            raise RequestIdConflict(
                f"request_id {request_id!r} was used for another request",
                port=PORT,
                operation=request[0],
                request_id=request_id,
            )
        return known[1]

    async def write(self, key: str, data: bytes, *, request_id: str) -> BlobInfo:
        await anyio.lowlevel.checkpoint()
        check_blob_key(key, operation="write")
        body = bytes(data)
        digest = hashlib.sha256(body).hexdigest()
        request = ("write", key, digest)
        answer = self._replay(request_id, request)
        if isinstance(answer, BlobInfo):
            return answer
        # No await from here on: the effect and its record cannot be separated by a cancel.
        try:
            self._client.put_object(key, body)
        except StoreError as exc:
            raise translated("write", exc, key) from exc
        info = BlobInfo(key=key, size=len(body), sha256=digest)
        self._answers[request_id] = (request, info)
        return info

    async def delete(self, key: str, *, request_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        check_blob_key(key, operation="delete")
        request = ("delete", key, "")
        answer = self._replay(request_id, request)
        if isinstance(answer, bool):
            return answer
        try:
            existed = self._client.delete_object(key)
        except StoreError as exc:
            raise translated("delete", exc, key) from exc
        self._answers[request_id] = (request, existed)
        return existed

    async def read(self, key: str) -> bytes:
        await anyio.lowlevel.checkpoint()
        check_blob_key(key, operation="read")
        try:
            return self._client.get_object(key)
        except StoreError as exc:
            raise translated("read", exc, key) from exc

    async def exists(self, key: str) -> bool:
        await anyio.lowlevel.checkpoint()
        check_blob_key(key, operation="exists")
        try:
            self._client.get_object(key)
        except NoSuchKey:
            return False
        except StoreError as exc:
            raise translated("exists", exc, key) from exc
        return True

    async def list_keys(self, prefix: str = "") -> list[str]:
        await anyio.lowlevel.checkpoint()
        try:
            return sorted(self._client.list_objects(prefix))
        except StoreError as exc:
            raise translated("list_keys", exc, prefix) from exc


class ForgetfulBlobStore(VendorBlobStore):
    """A broken adapter: it never deduplicates, so a re-sent write is applied again."""

    def _replay(self, request_id: str, request: tuple[str, str, str]) -> object | None:
        return None


# --- a port whose calls return futures: SamplingClient ---------------------------------------


class ReadyFuture(Generic[T]):
    """A :class:`~crucible_kitchen.ports.BackendFuture` whose answer is known at once."""

    def __init__(self, value: T) -> None:
        self._value = value

    @property
    def capabilities(self) -> Capabilities:
        # In-process: whether it is done is known without a round trip (always, here).
        return {FUTURE_DONE: lambda: lambda: True}

    async def result(self) -> T:
        await anyio.lowlevel.checkpoint()
        return self._value


class UniformSampler:
    """A :class:`~crucible_kitchen.ports.SamplingClient` of a model that picks every token
    with equal probability. A backend would submit the request and return its future."""

    def __init__(self, *, seed: int = 0, default_max_tokens: int = 16) -> None:
        self._tokenizer = NoopTokenizer()
        self._rng = random.Random(seed)
        self._default_max_tokens = default_max_tokens
        self._requests: dict[str, ReadyFuture[SampleResponse]] = {}
        self._logprob = -math.log(self._tokenizer.vocab_size)

    def get_tokenizer(self) -> NoopTokenizer:
        return self._tokenizer

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> ReadyFuture[SampleResponse]:
        await anyio.lowlevel.checkpoint()
        if num_samples < 1:
            raise InvalidRequest(
                f"sample: num_samples is {num_samples}", port="sampling_client", operation="sample"
            )
        if prompt.length == 0:
            raise InvalidRequest("sample: empty prompt", port="sampling_client", operation="sample")
        if request_id is not None and request_id in self._requests:
            return self._requests[request_id]  # a re-sent request: the same future
        seed = sampling_params.seed
        rng = random.Random(seed if seed is not None else self._rng.getrandbits(64))
        limit = sampling_params.max_tokens or self._default_max_tokens
        eos = self._tokenizer.eos_token_id
        sequences = []
        for _ in range(num_samples):
            tokens: list[int] = []
            while len(tokens) < limit:
                tokens.append(rng.randrange(self._tokenizer.vocab_size))
                if tokens[-1] == eos and sampling_params.stop is None:
                    break
            stopped = tokens[-1] == eos and sampling_params.stop is None
            sequences.append(
                SampledSequence(
                    tokens=tuple(tokens),
                    logprobs=(self._logprob,) * len(tokens),
                    stop_reason="stop" if stopped else "length",
                )
            )
        prompt_logprobs = self._score(prompt) if include_prompt_logprobs else None
        future = ReadyFuture(
            SampleResponse(sequences=tuple(sequences), prompt_logprobs=prompt_logprobs)
        )
        if request_id is not None:
            self._requests[request_id] = future
        return future

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> ReadyFuture[tuple[float | None, ...]]:
        await anyio.lowlevel.checkpoint()
        return ReadyFuture(self._score(prompt))

    def _score(self, prompt: ModelInput) -> tuple[float | None, ...]:
        return (None, *(self._logprob,) * (prompt.length - 1))


# --- using the adapters in a run --------------------------------------------------------------


class SaveReport(Stage):
    """Write the run's report to the blob store."""

    requires = ("blob_store",)

    async def execute(self, ctx: Context) -> None:
        store = ctx.port("blob_store")
        info = await store.write(
            f"runs/{ctx.run_id}/report.json", b'{"ok": true}', request_id=ctx.request_id("write")
        )
        ctx.state["artifacts"] = {"report": info.key}


reporting = Workflow("reporting", stage("save_report", SaveReport))


async def main() -> None:
    # 1. The conformance checks: the adapters keep their ports' contracts ...
    def new_store() -> BlobStore:
        return VendorBlobStore(VendorStoreClient())

    def new_sampler() -> SamplingClient:
        return UniformSampler(seed=0)

    await check_blob_store(new_store)
    await check_sampling_client(new_sampler)
    # ... also behind a slow network ...
    await check_blob_store(lambda: with_latency(new_store(), 0.001))
    # ... and the checks catch a broken one, naming the broken promise.
    try:
        await check_blob_store(lambda: ForgetfulBlobStore(VendorStoreClient()))
    except AssertionError as exc:
        complaint = str(exc)
    else:
        raise AssertionError("the forgetful store breaks the contract")
    assert complaint.startswith(
        "write reusing a request_id with other data: expected RequestIdConf"
    )

    # 2. Dedup: the same request_id gets the first answer and takes effect once.
    client = VendorStoreClient()
    store = VendorBlobStore(client)
    first = await store.write("a.txt", b"hello", request_id="w-1")
    assert await store.write("a.txt", b"hello", request_id="w-1") == first
    assert client.puts == 1
    try:
        await store.write("a.txt", b"other", request_id="w-1")
    except RequestIdConflict:
        pass
    else:
        raise AssertionError("a reused request_id with other data is a conflict")

    # 3. Foreign exceptions are translated at the edge, the original kept as __cause__.
    client.throttle_next = 1
    try:
        await store.write("b.txt", b"data", request_id="w-2")
    except TransientBackendError as exc:
        cause = exc.__cause__
    else:
        raise AssertionError("a throttled write fails")
    assert isinstance(cause, Throttled)
    await store.write("b.txt", b"data", request_id="w-2")  # the failed request was forgotten
    assert client.puts == 2

    # 4. Futures: a call returns a future at once; the same request_id, the same future.
    sampler = UniformSampler(seed=0)
    prompt = ModelInput.from_ints(sampler.get_tokenizer().encode("Once upon a time"))
    params = SamplingParams(max_tokens=8)
    futures = [await sampler.sample(prompt, 2, params, request_id=f"s-{i}") for i in range(4)]
    assert await sampler.sample(prompt, 2, params, request_id="s-0") is futures[0]
    responses = [await future.result() for future in futures]  # all four were in flight
    assert all(len(response.sequences) == 2 for response in responses)
    done = capability(futures[0], FUTURE_DONE)  # declared, so callers need not guess
    assert done is not None
    assert done()
    assert capability(sampler, FUTURE_DONE) is None  # the sampler itself declares nothing

    # 5. Binding adapters to ports, and the port check before a run starts.
    client = VendorStoreClient()
    killer = StageKiller(KillPoint("save_report", "after_submit", operation="write"))
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            reporting,
            adapters=Adapters(blob_store=VendorBlobStore(client)),
            run_id="r1",
            fault_hook=killer,
        )
        result = await run.wait()
    assert killer.kills  # killed after its write reached the service ...
    assert client.puts == 1  # ... and the re-executed stage's write was deduplicated
    assert result.artifacts == {"report": "runs/r1/report.json"}

    mixed = Adapters.noop().replace(blob_store=VendorBlobStore(VendorStoreClient()))
    assert (await Kitchen.run(reporting, adapters=mixed)).status == "completed"

    for adapters, expected in (
        ({}, "port 'blob_store' has no adapter (needed by save_report)"),
        ({"blob_store": UniformSampler()}, "port 'blob_store': missing 'read'"),
    ):
        try:
            await Kitchen.run(reporting, adapters=adapters)
        except PortError as exc:
            problems = exc.problems
        else:
            raise AssertionError("the run must not start")
        assert problems[0] == expected

    check_adapter("blob_store", VendorBlobStore(VendorStoreClient()))  # raises PortError if not


if __name__ == "__main__":
    # Each kill of a stage is logged; the one here is on purpose.
    logging.getLogger("crucible_kitchen.supervisors").setLevel(logging.CRITICAL)
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")
