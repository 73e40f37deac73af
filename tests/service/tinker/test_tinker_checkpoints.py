"""Checkpoints through the official SDK: save, resume with and without the optimizer state,
list, delete, run and weights info, overwrite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
import numpy as np
import pytest
import tinker
from _tinker_support import ADAM, sft_datum, training

if TYPE_CHECKING:
    from pathlib import Path

    from tinker import types

pytestmark = pytest.mark.anyio


def _logprobs(output: types.ForwardBackwardOutput) -> np.ndarray:
    return np.asarray(output.loss_fn_outputs[0]["logprobs"].data)


async def _step(trainer: tinker.TrainingClient, datum: types.Datum) -> np.ndarray:
    await trainer.forward_backward([datum], "cross_entropy")
    await trainer.optim_step(ADAM)
    return _logprobs(await trainer.forward([datum], "cross_entropy"))


async def test_a_saved_state_resumes_with_or_without_its_optimizer_state(
    tmp_path: Path,
) -> None:
    datum = sft_datum()
    async with training(tmp_path) as (_served, client, trainer):
        await _step(trainer, datum)
        saved = await trainer.save_state("step-1")
        now = _logprobs(await trainer.forward([datum], "cross_entropy"))
        with_optimizer = await client.create_training_client_from_state_with_optimizer(saved.path)
        weights_only = await client.create_training_client_from_state(saved.path)
        resumed = _logprobs(await with_optimizer.forward([datum], "cross_entropy"))
        continued = await _step(trainer, datum)
        continued_resumed = await _step(with_optimizer, datum)
        continued_fresh_adam = await _step(weights_only, datum)
    assert saved.path == f"tinker://{trainer.model_id}/weights/step-1"
    assert with_optimizer.model_id != trainer.model_id
    np.testing.assert_array_equal(resumed, now)
    np.testing.assert_array_equal(continued_resumed, continued)
    assert not np.allclose(continued_fresh_adam, continued)  # a fresh AdamW steps otherwise


async def test_checkpoints_are_listed_described_and_deleted(tmp_path: Path) -> None:
    datum = sft_datum()
    async with training(tmp_path, user_metadata={"renderer_name": "role_colon"}) as (
        served,
        client,
        trainer,
    ):
        await _step(trainer, datum)
        state = await trainer.save_state("state-a")
        sampler = await trainer.save_weights_for_sampler("sampler-a")
        await trainer.save_weights_and_get_sampling_client()  # ephemeral: never listed
        rest = await served.rest()
        listed = await rest.list_checkpoints(trainer.model_id)
        run = await rest.get_training_run(trainer.model_id)
        info = await rest.get_weights_info_by_tinker_path(state.path)
        everyone = await rest.list_user_checkpoints()
        runs = await rest.list_training_runs()
        await rest.delete_checkpoint_from_tinker_path(sampler.path)
        after_delete = await rest.list_checkpoints(trainer.model_id)
        with pytest.raises(tinker.NotFoundError, match="no checkpoint tinker://"):
            await client.create_sampling_client(model_path=sampler.path)
        with pytest.raises(tinker.NotFoundError):
            await rest.delete_checkpoint_from_tinker_path(sampler.path)
        await anyio.to_thread.run_sync(rest.holder.close)
    kinds = {c.checkpoint_id: c.checkpoint_type for c in listed.checkpoints}
    assert kinds == {"weights/state-a": "training", "sampler_weights/sampler-a": "sampler"}
    assert all(c.size_bytes and c.size_bytes > 0 for c in listed.checkpoints)
    assert [c.checkpoint_id for c in after_delete.checkpoints] == ["weights/state-a"]
    assert run.training_run_id == trainer.model_id
    assert run.base_model == "tiny"
    assert run.lora_rank == 8
    assert run.user_metadata == {"renderer_name": "role_colon"}
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == state.path
    assert info.base_model == "tiny"
    assert info.lora_rank == 8
    assert len(everyone.checkpoints) == 2
    assert [r.training_run_id for r in runs.training_runs] == [trainer.model_id]


async def test_a_taken_name_is_refused_unless_overwritten(tmp_path: Path) -> None:
    datum = sft_datum()
    async with training(tmp_path) as (_served, client, trainer):
        first = await trainer.save_state("name")
        await _step(trainer, datum)
        with pytest.raises(tinker.RequestFailedError, match="already exists"):
            await trainer.save_state("name")
        second = await trainer.save_state("name", overwrite=True)
        now = _logprobs(await trainer.forward([datum], "cross_entropy"))
        reloaded = await client.create_training_client_from_state(second.path)
        again = _logprobs(await reloaded.forward([datum], "cross_entropy"))
        with pytest.raises(tinker.RequestFailedError, match="not a tinker://"):
            await client.create_training_client_from_state("tinker://elsewhere/weights")
        with pytest.raises(tinker.RequestFailedError, match="no training run"):
            await client.create_training_client_from_state("tinker://nobody/weights/x")
    assert first.path == second.path
    np.testing.assert_array_equal(again, now)


@pytest.mark.filterwarnings("ignore:DEPRECATED. TrainingClient.load_state:FutureWarning")
async def test_the_deprecated_load_state_is_an_ordered_request_on_the_model(
    tmp_path: Path,
) -> None:
    datum = sft_datum()
    async with training(tmp_path) as (_served, _client, trainer):
        saved = await trainer.save_state("start")
        start = _logprobs(await trainer.forward([datum], "cross_entropy"))
        await _step(trainer, datum)
        loaded = trainer.load_state_with_optimizer(saved.path)
        after_load = trainer.forward([datum], "cross_entropy")  # queued behind the load
        assert (await loaded).path == saved.path
        back = _logprobs(await after_load)
    np.testing.assert_array_equal(back, start)
