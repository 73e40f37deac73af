"""The tinker adapters keep their ports' contracts, against ``kitchen serve --tinker``'s app."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.adapters.local_torch import LocalTokenizer
from crucible_kitchen.adapters.tinker import (
    TinkerSamplingClient,
    TinkerSession,
    TinkerTrainingClient,
)
from crucible_kitchen.testing import check_sampling_client, check_training_client

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import ServerThread

pytestmark = pytest.mark.anyio


def _session(server: ServerThread) -> TinkerSession:
    return TinkerSession(base_url=server.base_url, api_key="tml-kitchen-test")


async def test_the_training_client_conforms(tinker_server: ServerThread, tmp_path: Path) -> None:
    """With a checkpoint directory: its SAVE_STATE_WITH_PAYLOAD and CHECKPOINT_PAYLOAD too."""
    session = _session(tinker_server)
    tokenizer = LocalTokenizer.byte()
    await check_training_client(
        lambda: TinkerTrainingClient(
            session,
            base_model="tiny",
            lora_rank=4,
            seed=3,
            tokenizer=tokenizer,
            checkpoint_dir=tmp_path / "checkpoints",
        ),
        sampler_tolerance=1e-4,
    )


async def test_the_base_model_sampling_client_conforms(tinker_server: ServerThread) -> None:
    session = _session(tinker_server)
    tokenizer = LocalTokenizer.byte()
    await check_sampling_client(
        lambda: TinkerSamplingClient(session, tokenizer=tokenizer, base_model="tiny")
    )
