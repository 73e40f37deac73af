"""Data-parallel training with 2 CPU processes (gloo) on loopback, against 1 process.

Most tests run ``ddp_worker.py`` (5 AdamW steps of the tiny model on one fixed global batch
of 6 datums of different lengths, then of 1) in real processes: alone, under ``torchrun``
(DDP, or FSDP with ``parallelism="fsdp"``), or as two plain processes with torchrun's
variables (so that a failed rank is not killed by the launcher and the survivor must fail on
its own, within the collective timeout). The last ones run ``kitchen run`` itself, alone and
under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient
from crucible_kitchen.errors import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
MID = 2  # the worker's fsdp run saves a checkpoint after this many steps
TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _two_ranks(out: Path, mode: str) -> list[subprocess.CompletedProcess[str]]:
    """Both ranks as plain processes; returns their outcomes, rank 0 first."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT": str(TIMEOUT_S),
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, WORKER, str(out), mode],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outcomes = []
    for process in ranks:
        _, stderr = process.communicate(timeout=TIMEOUT_S * 6)
        outcomes.append(subprocess.CompletedProcess(process.args, process.returncode, "", stderr))
    return outcomes


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's ``train`` run in one process (its results and checkpoints)."""
    alone = tmp_path_factory.mktemp("alone")
    subprocess.run([sys.executable, WORKER, str(alone)], check=True, timeout=120)
    return alone


def test_two_ranks_follow_the_one_process_loss_curve_with_identical_weights(
    tmp_path: Path, one_process: Path
) -> None:
    ranks = tmp_path / "ranks"
    subprocess.run([*TORCHRUN, WORKER, str(ranks)], check=True, timeout=240)
    single = torch.load(one_process / "rank0.pt")
    rank0, rank1 = torch.load(ranks / "rank0.pt"), torch.load(ranks / "rank1.pt")
    # Every rank applies the same summed gradients: bit-identical weights and optimizer state.
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, tensor in rank0["state"].items():
        assert torch.equal(tensor, rank1["state"][name]), name
    assert rank0["losses"] == rank1["losses"]
    # Against 1 process (the second step accumulating two requests, each summed over the ranks
    # once; the fourth through a custom loss): the same math on the same global batch, but each
    # rank pads its own slice and the gradient is summed in another order, so float32 results
    # differ in the last bits (seen: 1e-7 relative); 1e-5 relative over 4 steps leaves room for
    # that and still fails on any real difference (a lost shard changes the loss by ~50%, a
    # gradient summed twice the second step's update, a misaligned slice of the custom loss's
    # gradients the last weights).
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for name, tensor in single["state"].items():
        if name.startswith("model/"):
            torch.testing.assert_close(rank0["state"][name], tensor, rtol=1e-4, atol=1e-5)
    # Rank 0 alone wrote the checkpoint, once.
    assert [p.name for p in (ranks / "checkpoints" / "weights").iterdir()] == ["final"]


def test_fsdp_follows_the_one_process_loss_curve_and_its_checkpoints_resume_anywhere(
    tmp_path: Path, one_process: Path
) -> None:
    ranks = tmp_path / "ranks"
    alone_final = one_process / "checkpoints" / "weights" / "final"
    subprocess.run(
        [*TORCHRUN, WORKER, str(ranks), "fsdp", str(alone_final)], check=True, timeout=240
    )
    subprocess.run([sys.executable, WORKER, str(ranks), "resume"], check=True, timeout=120)
    single = torch.load(one_process / "rank0.pt")
    rank0, rank1 = torch.load(ranks / "rank0.pt"), torch.load(ranks / "rank1.pt")
    resumed = torch.load(ranks / "resumed.pt")
    # The gradients are reduce-scattered as sums (FSDP averages by default, which halves the
    # gradient norm; AdamW hides most of that from the loss curve), so the steps are one
    # process's on the global batch, up to float summation order (seen: 1e-7 relative).
    assert rank0["losses"] == rank1["losses"]
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert rank0["norms"] == pytest.approx(single["norms"], rel=1e-5)
    # Gathered, every rank's full weights and AdamW state are the same, and one process's.
    assert rank0["state"].keys() == rank1["state"].keys() == single["state"].keys()
    for name, tensor in single["state"].items():
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
        if not name.startswith("rng/"):
            torch.testing.assert_close(rank0["state"][name], tensor, rtol=1e-4, atol=1e-5)
    # Greedy samples of the final weights: request 0 drawn by rank 0, request 1 by rank 1,
    # each from the full weights its rank gathered.
    assert rank0["samples"] == rank1["samples"] == single["samples"]
    # The FSDP checkpoint of step 2 (full tensors, written by rank 0) resumes in one process
    # and ends where the uninterrupted runs do.
    assert sorted(p.name for p in (ranks / "checkpoints" / "weights").iterdir()) == ["final", "mid"]
    assert resumed["losses"] == pytest.approx(single["losses"][MID:], rel=1e-5)
    for name, tensor in single["state"].items():
        if not name.startswith("rng/"):
            torch.testing.assert_close(resumed["state"][name], tensor, rtol=1e-4, atol=1e-5)
    # And one process's checkpoint loads into the shards exactly: gathered back, bit for bit.
    for rank in (rank0, rank1):
        for name, tensor in single["state"].items():
            assert torch.equal(rank["loaded"][name], tensor), name


def test_fsdp_outside_torchrun_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="run it under torchrun with 2 or more processes"):
        LocalTorchTrainingClient(model="micro", parallelism="fsdp")
    with pytest.raises(ConfigError) as refused:
        LocalTorchTrainingClient(model="micro", parallelism="fsdp", loss_chunk=8, compile=True)
    assert refused.value.problems == [
        "compile is not supported with parallelism 'fsdp'; leave it unset",
        "loss_chunk is not supported with parallelism 'fsdp'; leave it unset",
    ]
    with pytest.raises(ConfigError, match="parallelism must be 'ddp' or 'fsdp', got 'zero3'"):
        LocalTorchTrainingClient(model="micro", parallelism="zero3")  # type: ignore[arg-type]


def test_two_ranks_share_the_sample_requests_and_get_the_one_process_samples(
    tmp_path: Path,
) -> None:
    subprocess.run([sys.executable, WORKER, str(tmp_path / "alone"), "sample"], check=True)
    for outcome in _two_ranks(tmp_path / "ranks", "sample"):
        assert outcome.returncode == 0, outcome.stderr[-2000:]
    single = torch.load(tmp_path / "alone" / "rank0.pt")
    rank0 = torch.load(tmp_path / "ranks" / "rank0.pt")
    rank1 = torch.load(tmp_path / "ranks" / "rank1.pt")
    assert single["drawn"] == 5
    assert (rank0["drawn"], rank1["drawn"]) == (3, 2)  # requests 0, 2, 4 and 1, 3
    assert rank0["samples"] == rank1["samples"] == single["samples"]
    for rank in (rank0, rank1):
        assert "the rank that computed request #5 failed: InvalidRequest" in rank["refused"]
        assert "exceeds max_seq_len" in rank["refused"]
        # Another request saving s0 again is refused on every rank alike (rank 1 used to
        # replace its copy), and s0's sampler stays the same one on every rank.
        assert rank["resaved"].startswith("InvalidRequest: save_weights_for_sampler: ")
        assert "already (request 'save-s0')" in rank["resaved"]
        assert rank["resampled"] == single["samples"][:2]
    assert single["resaved"].startswith("InvalidRequest: ")
    assert single["resampled"] == single["samples"][:2]


def test_a_checkpoint_with_dropout_resumes_only_on_its_rank_count(tmp_path: Path) -> None:
    subprocess.run([sys.executable, WORKER, str(tmp_path), "dropout"], check=True)
    outcomes = _two_ranks(tmp_path, "dropout")
    assert [outcome.returncode for outcome in outcomes] == [4, 4]
    assert "rank 1: WorldSizeMismatch:" in outcomes[1].stderr
    assert "saved by 1 data-parallel rank(s), loaded by 2" in outcomes[1].stderr


def test_a_crash_on_one_rank_fails_the_other_with_a_collective_error(tmp_path: Path) -> None:
    survivor, crashed = _two_ranks(tmp_path, "crash")
    assert crashed.returncode == 1
    assert "injected crash on rank 1" in crashed.stderr
    assert survivor.returncode == 3
    assert "rank 0: CollectiveError: rank 0 of 2: a forward_backward collective failed" in (
        survivor.stderr
    )
    assert not (tmp_path / "rank0.pt").exists()


@pytest.mark.parametrize(
    ("mode", "at"),
    [
        pytest.param("desync", "fb-1-a", id="an-extra-optim_step"),
        pytest.param("skip", "fb-2", id="a-skipped-optim_step"),
    ],
)
def test_a_one_sided_retry_or_skip_stops_every_rank_with_collective_desync(
    tmp_path: Path, mode: str, at: str
) -> None:
    """An optimizer step under DDP runs no collective of its own: rank 1's extra (a one-sided
    retry) or missing step shows at the next request with collectives, on every rank."""
    outcomes = _two_ranks(tmp_path, mode)
    assert [outcome.returncode for outcome in outcomes] == [3, 3]
    assert f"rank 0: CollectiveDesync: rank 0 of 2: at forward_backward request '{at}'" in (
        outcomes[0].stderr
    )
    assert "ranks [1] are at another request or executed other requests" in outcomes[0].stderr
    assert "ranks [0] are at another request or executed other requests" in outcomes[1].stderr


# --- The CLI under torchrun -----------------------------------------------------------------

SL_BASIC = ["sl_basic", "max_steps=3", "save_every=2", "eval_every=0", "final_eval=false"]
RL_BASIC = [
    "rl_basic",
    "sft_warmup_steps=2",
    "num_batches=2",
    "groups_per_batch=4",
    "group_size=2",
    "max_tokens=8",
    "initial_eval=false",
    "eval_examples=4",
]


def _kitchen_run(run_dir: Path, settings: list[str], *, ranks: int) -> dict[str, float]:
    """``kitchen run`` in one process, or under torchrun; the summary's final metrics."""
    launcher = [sys.executable] if ranks == 1 else TORCHRUN
    command = [*launcher, "-m", "crucible_kitchen.cli", "run", *settings]
    subprocess.run([*command, "--run-dir", str(run_dir), "--quiet"], check=True, timeout=240)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    metrics: dict[str, float] = summary["metrics"]
    return metrics


@pytest.mark.parametrize(
    ("settings", "parallelism", "checkpoints"),
    [
        pytest.param(
            [*SL_BASIC, "lora_rank=4"], "fsdp", ["final", "step_000002"], id="sl_basic-lora-fsdp"
        ),
        pytest.param(RL_BASIC, "ddp", ["final"], id="rl_basic-ddp"),
        pytest.param(SL_BASIC, "fsdp", ["final", "step_000002"], id="sl_basic-fsdp"),
        pytest.param([*RL_BASIC, "compute_post_kl=true"], "fsdp", ["final"], id="rl_basic-fsdp"),
    ],
)
def test_kitchen_run_under_torchrun_ends_with_the_one_process_metrics(
    tmp_path: Path, settings: list[str], parallelism: str, checkpoints: list[str]
) -> None:
    """sl_basic training the LoRA adapters of a sharded model (FSDP), or the whole sharded
    model, and rl_basic (SFT warm-up, then GRPO whose rollouts fan out: each rank samples its
    share of the groups; under FSDP through the sharded model, with the post-update KL) on 2
    ranks: the final metrics of one process (rewards, token counts and samples' statistics
    exactly, since every request's samples depend on its seed, not on the rank that draws
    them)."""
    one = _kitchen_run(tmp_path / "one", settings, ranks=1)
    two = _kitchen_run(tmp_path / "two", [*settings, f"parallelism={parallelism}"], ranks=2)
    assert two.keys() == one.keys()
    for name, value in one.items():
        # Float summation order differs (seen: 1e-8 relative); the KL estimates are ~1e-8
        # themselves, so they get an absolute tolerance.
        assert two[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # Rank 0 alone wrote the run directory and the checkpoints.
    weights = tmp_path / "two" / "checkpoints" / "weights"
    assert sorted(path.name for path in weights.iterdir()) == checkpoints
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
