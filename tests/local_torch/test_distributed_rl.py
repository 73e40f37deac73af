"""RL under ``torchrun`` with 2 CPU processes (gloo): asynchronous rollouts beside training.

``rl_worker.py`` runs ``rl_basic`` on every rank and saves the rank's final state tensors.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = str(Path(__file__).with_name("rl_worker.py"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _ranks(out: Path, mode: str, parallelism: str) -> tuple[dict[str, object], ...]:
    subprocess.run([*TORCHRUN, WORKER, str(out), mode, parallelism], check=True, timeout=240)
    return tuple(torch.load(out / f"rank{rank}.pt") for rank in range(2))


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
