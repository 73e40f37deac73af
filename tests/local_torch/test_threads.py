"""The ``threads`` setting of the local torch backend: validated, resolved from
``OMP_NUM_THREADS`` and the model's size, applied in the device's worker thread, and free of
numeric side effects for the tiny main job."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Literal

import pytest
import torch

from crucible_kitchen import Adapters
from crucible_kitchen.adapters.local_torch import PRESETS, LocalTorchTrainingClient
from crucible_kitchen.adapters.local_torch._requests import RequestQueue
from crucible_kitchen.adapters.local_torch._threads import SINGLE_THREAD_BELOW, resolve_threads
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.recipes import BUILTIN_RECIPES, SlBasicConfig
from crucible_kitchen.recipes._recipe import validate_config

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.adapters.local_torch import ModelConfig

pytestmark = pytest.mark.anyio

BAD_COUNTS: tuple[Any, ...] = (0, -1, "many", True, 2.0)
# `small` with 8 layers: 6.4 M parameters, above SINGLE_THREAD_BELOW.
WIDE_LAYERS = 8
WIDE: ModelConfig = dataclasses.replace(PRESETS["small"], vocab_size=265, n_layers=WIDE_LAYERS)


@pytest.fixture(autouse=True)
def _no_omp_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("threads", BAD_COUNTS)
def test_a_thread_count_other_than_a_positive_int_or_auto_is_a_config_error(
    threads: Any,
) -> None:
    with pytest.raises(ConfigError, match="threads must be a positive int or 'auto'"):
        LocalTorchTrainingClient(threads=threads)
    with pytest.raises(ConfigError, match="threads must be a positive int or 'auto'"):
        Adapters.local_torch(threads=threads)


@pytest.mark.parametrize("threads", [*BAD_COUNTS, "0", 4097])
def test_sl_basic_refuses_a_bad_thread_count_naming_the_field(threads: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(SlBasicConfig, {"threads": threads}, source="sl_basic config")
    got = 0 if threads == "0" else threads  # text is read as the field's type first
    assert caught.value.problems == [
        f"threads: Value error, must be 'auto' or an int from 1 to 4096 (got {got!r})"
    ]


def test_sl_basic_passes_its_thread_setting_to_the_local_torch_adapters() -> None:
    recipe = next(r for r in BUILTIN_RECIPES if r.name == "sl_basic")
    for given, expected in (({}, "auto"), ({"threads": "3"}, 3), ({"threads": 2}, 2)):
        config = validate_config(SlBasicConfig, given, source="sl_basic config")
        assert recipe.options_for(config, "local_torch")["threads"] == expected


def test_auto_gives_a_small_model_one_thread_and_a_large_one_torchs_count() -> None:
    tiny = PRESETS["tiny"]
    assert resolve_threads("auto", tiny) == 1
    assert resolve_threads("auto", WIDE) == torch.get_num_threads()
    assert resolve_threads(3, tiny) == resolve_threads(3, WIDE) == 3
    assert LocalTorchTrainingClient(threads="auto").threads == 1
    assert SINGLE_THREAD_BELOW == 2_000_000  # the measured threshold docs/benchmarks.md records


@pytest.mark.parametrize("value", ["none", "0", "-2", "2.5"])
def test_auto_refuses_an_omp_num_threads_that_is_not_a_positive_int(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ConfigError, match=f"OMP_NUM_THREADS must be a positive int, got '{value}'"):
        LocalTorchTrainingClient(threads="auto")
    assert LocalTorchTrainingClient(threads=1).threads == 1  # an explicit count ignores it


_PROBE = """
import anyio, dataclasses, json, sys, torch
from crucible_kitchen.adapters.local_torch import PRESETS, LocalTorchTrainingClient
from crucible_kitchen.adapters.local_torch._threads import resolve_threads

WIDE = dataclasses.replace(PRESETS["small"], vocab_size=265, n_layers=int(sys.argv[1]))

async def main() -> None:
    client = LocalTorchTrainingClient(threads="auto")
    in_worker = await client._queue.call("probe", torch.get_num_threads, record=False)
    print(json.dumps({
        "tiny": client.threads, "in_worker": in_worker,
        "wide": resolve_threads("auto", WIDE), "torch_default": torch.get_num_threads(),
    }))

anyio.run(main)
"""


def _probe(omp_num_threads: str | None) -> dict[str, int]:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(WIDE_LAYERS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_auto_honours_omp_num_threads_in_a_fresh_process() -> None:
    assert _probe("3") == {"tiny": 3, "in_worker": 3, "wide": 3, "torch_default": 3}
    assert _probe("3,1") == {"tiny": 3, "in_worker": 3, "wide": 3, "torch_default": 3}
    unset = _probe(None)
    assert unset["tiny"] == unset["in_worker"] == 1
    assert unset["wide"] == unset["torch_default"]


async def test_each_client_s_count_is_applied_in_the_shared_worker_thread(tmp_path: Path) -> None:
    three, one = RequestQueue("three", threads=3), RequestQueue("one", threads=1)
    untouched = RequestQueue("untouched")
    seen = [
        await three.call("probe", torch.get_num_threads),
        await untouched.call("probe", torch.get_num_threads),  # keeps the last client's count
        await one.call("probe", torch.get_num_threads),
        await three.call("probe", torch.get_num_threads),
    ]
    assert seen == [3, 3, 1, 3]
    assert torch.get_num_threads() == 1  # the caller's thread keeps its own count

    client = LocalTorchTrainingClient(threads=2, checkpoint_dir=tmp_path)
    assert await client._queue.call("probe", torch.get_num_threads, record=False) == 2
    saved = await (await client.save_weights_for_sampler("s", request_id="s")).result()
    sampler = await client.create_sampling_client(saved.path)
    assert await sampler._queue.call("probe", torch.get_num_threads, record=False) == 2


QUICK = {
    "max_examples": 64,
    "batch_size": 8,
    "epochs": 1,
    "eval_every": 0,
    "final_eval": False,
    "save_every": 0,
    "register_model": False,
}


async def _final_state(threads: int | Literal["auto"]) -> dict[str, torch.Tensor]:
    adapters = Adapters.local_torch(threads=threads)
    result = await Kitchen.run(
        "sl_basic", {**QUICK, "threads": threads}, adapters=adapters, run_dir=False
    )
    assert result.steps == 8
    tensors: dict[str, torch.Tensor] = await adapters["training_client"].state_tensors()
    return tensors


async def test_the_tiny_main_job_trains_the_same_weights_with_one_thread_and_with_auto() -> None:
    """``auto`` is one thread for ``tiny``, so its weights are today's with one thread, bit for
    bit. (Two threads give other bits: MKL splits the weight gradients' sums over tokens
    between threads; the forward pass is identical.)"""
    one, auto = await _final_state(1), await _final_state("auto")
    assert one.keys() == auto.keys()
    assert all(torch.equal(one[name], auto[name]) for name in one)
