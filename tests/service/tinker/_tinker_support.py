"""What the Tinker server tests share: a served application and official SDK clients on it.

The SDK runs its own event loop in a thread of its own; its blocking calls (making a
session, the REST client's configuration fetch) go through ``anyio.to_thread`` so the
test's loop keeps serving. Every other call uses the SDK's futures, awaited.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import tinker
from aiohttp.test_utils import TestServer
from tinker import types

from crucible_kitchen.service.tinker import TINKER_SERVER_KEY, TinkerServer, create_tinker_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

API_KEY = "tml-kitchen-test"
TEXT = b"the kitchen serves tinker on this very machine; "


@dataclass
class Served:
    url: str
    state: TinkerServer
    http: TestServer

    async def connect(self, api_key: str = API_KEY) -> tinker.ServiceClient:
        """A service client with its session made (the SDK makes it with blocking calls)."""
        client = tinker.ServiceClient(base_url=self.url, api_key=api_key)
        await anyio.to_thread.run_sync(lambda: client.holder)
        return client

    async def rest(self) -> tinker.RestClient:
        return await anyio.to_thread.run_sync(
            lambda: tinker.RestClient(base_url=self.url, api_key=API_KEY)
        )


@asynccontextmanager
async def serving(root: Path, **settings: Any) -> AsyncIterator[Served]:
    """The server on a free loopback port, its checkpoints under ``root``."""
    app = create_tinker_app(root=root, api_key=API_KEY, **settings)
    http = TestServer(app, host="127.0.0.1")
    await http.start_server()
    try:
        yield Served(str(http.make_url("")).rstrip("/"), app[TINKER_SERVER_KEY], http)
    finally:
        await http.close()


@asynccontextmanager
async def training(
    root: Path, *, user_metadata: dict[str, str] | None = None, **settings: Any
) -> AsyncIterator[tuple[Served, tinker.ServiceClient, tinker.TrainingClient]]:
    """:func:`serving`, a client with its session, and a LoRA training client of ``tiny``;
    the session is finished at the end."""
    async with serving(root, **settings) as served:
        client = await served.connect()
        try:
            yield served, client, await training_client(client, user_metadata=user_metadata)
        finally:
            await close(client)


async def close(client: tinker.ServiceClient) -> None:
    """Finish the client's session on the server and stop its heartbeat."""
    await client.close("success")


async def training_client(
    client: tinker.ServiceClient, *, rank: int = 8, seed: int = 0, **kwargs: Any
) -> tinker.TrainingClient:
    return await client.create_lora_training_client(
        base_model="tiny", rank=rank, seed=seed, **kwargs
    )


def sft_datum(text: bytes = TEXT) -> types.Datum:
    """Next-token prediction over ``text`` (bytes are the byte tokenizer's ids)."""
    tokens = list(text)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": [1.0] * (len(tokens) - 1),
        },
    )


def rl_datum(
    text: bytes, sampling_logprobs: Sequence[float], advantages: Sequence[float]
) -> types.Datum:
    tokens = list(text)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "logprobs": list(sampling_logprobs),
            "advantages": list(advantages),
        },
    )


ADAM = types.AdamParams(learning_rate=1e-2)
