"""Sampling under ``torchrun`` with 2 CPU processes (gloo): asynchronous RL rollouts beside
training (DDP), and samplers that keep only shards of the weights (FSDP).

``rl_worker.py`` runs ``rl_basic`` on every rank and saves the rank's final state tensors;
``sampling_worker.py`` samples saved weights of a model it trains, in one process or sharded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crucible_kitchen import Kitchen
from crucible_kitchen.errors import ConfigError

WORKER = str(Path(__file__).with_name("rl_worker.py"))
SAMPLING_WORKER = str(Path(__file__).with_name("sampling_worker.py"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _ranks(out: Path, mode: str, parallelism: str) -> tuple[dict[str, object], ...]:
    subprocess.run([*TORCHRUN, WORKER, str(out), mode, parallelism], check=True, timeout=240)
    return tuple(torch.load(out / f"rank{rank}.pt") for rank in range(2))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_async_rl_under_torchrun_ends_with_identical_weights_on_every_rank(
    tmp_path: Path,
) -> None:
    """The producer saves sampler weights and samples (fanned out) while the consumer trains,
    evaluates and scores the post-update KL: their requests interleave in another order on
    each rank, which made the ranks' collectives pair wrongly (``CollectiveDesync``). Now
    the sampling exchange is not paired by order, and a DDP sampler save is no collective."""
    rank0, rank1 = _ranks(tmp_path, "async", "ddp")
    assert rank0["status"] == rank1["status"] == "completed"
    # Staleness is each rank's own timing; everything else is computed from the same samples.
    metrics0, metrics1 = rank0["metrics"], rank1["metrics"]
    assert isinstance(metrics0, dict)
    assert isinstance(metrics1, dict)
    assert metrics0.pop("rl/staleness") >= 0
    assert metrics1.pop("rl/staleness") >= 0
    assert metrics0 == metrics1
    state0, state1 = rank0["state"], rank1["state"]
    assert isinstance(state0, dict)
    assert isinstance(state1, dict)
    assert state0.keys() == state1.keys()
    for name, tensor in state0.items():
        assert torch.equal(tensor, state1[name]), name
    # Rank 0 alone wrote the run directory (the policy's sampler weights among its files).
    samplers = tmp_path / "run" / "checkpoints" / "sampler_weights"
    assert {f"sampler_batch_{batch:06d}" for batch in range(4)} <= {
        path.name for path in samplers.iterdir()
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_samplers_keep_shards_and_sample_what_one_process_samples(tmp_path: Path) -> None:
    """Under FSDP a sampler keeps this rank's shards of its weights and generates through the
    sharded training model, each rank decoding its share of the requests: the greedy and
    seeded samples of one process, exactly; the logprobs up to float rounding; and the
    training weights are given back after each sampling run (the later losses and the final
    state are one process's)."""
    alone, ranks = tmp_path / "alone", tmp_path / "ranks"
    alone.mkdir()
    subprocess.run([sys.executable, SAMPLING_WORKER, str(alone)], check=True, timeout=120)
    subprocess.run([*TORCHRUN, SAMPLING_WORKER, str(ranks)], check=True, timeout=240)
    single = torch.load(alone / "rank0.pt")
    rank0, rank1 = (torch.load(ranks / f"rank{rank}.pt") for rank in range(2))
    assert (single["sampler"], rank0["sampler"]) == (
        "LocalTorchSamplingClient",
        "ShardedSamplingClient",
    )
    for name in ("initial", "s1", "s1_from_disk"):
        one, zero, other = single["drawn"][name], rank0["drawn"][name], rank1["drawn"][name]
        assert one["greedy"] == zero["greedy"] == other["greedy"], name
        assert one["seeded"] == zero["seeded"] == other["seeded"], name
        assert zero == other, name  # every rank holds every result
        for expected, got in zip(
            one["logprobs"] + one["prompt_logprobs"],
            zero["logprobs"] + zero["prompt_logprobs"],
            strict=True,
        ):
            assert got[0] is expected[0] is None
            assert got[1:] == pytest.approx(expected[1:], rel=1e-4, abs=1e-5), name
    # The sampler of s1 samples other weights than the initial ones (the shards were swapped in).
    assert single["drawn"]["s1"]["greedy"] != single["drawn"]["initial"]["greedy"]
    assert single["drawn"]["s1_from_disk"] == single["drawn"]["s1"]
    assert rank0["losses"] == rank1["losses"]
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for name, tensor in single["state"].items():
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
        if not name.startswith("rng/"):
            torch.testing.assert_close(rank0["state"][name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_that_never_publishes_its_samples_fails_the_others_within_the_timeout(
    tmp_path: Path,
) -> None:
    outcome = subprocess.run(
        [*TORCHRUN, SAMPLING_WORKER, str(tmp_path), "lost"],
        env={**os.environ, "CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome.returncode != 0
    assert "rank 0: CollectiveError: rank 0 of 2: exchanging the samples of sampler" in (
        outcome.stderr
    )
    assert "did not publish them within 5 s" in outcome.stderr


@pytest.mark.anyio
async def test_async_rl_under_fsdp_is_refused_with_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mode 'async' needs parallelism 'ddp'"):
        await Kitchen.run("rl_basic", {"mode": "async", "parallelism": "fsdp"}, adapters="noop")
