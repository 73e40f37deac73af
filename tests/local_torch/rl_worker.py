"""One rank of the RL tests under ``torchrun``: ``python rl_worker.py OUT MODE PARALLELISM``.

Runs ``rl_basic`` (a short SFT warm-up, then GRPO) with ``mode`` ``sync`` or ``async`` (the
producer samples the next batches while the consumer trains, with a held-out evaluation and
the post-update KL in the consumer, so samplers of both tasks exchange samples at once) on the
local torch adapters (``parallelism`` ``ddp`` or ``fsdp``), then saves this rank's run status,
final metrics and state tensors to ``OUT/rank<R>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import torch

from crucible_kitchen import Adapters, Kitchen

SETTINGS = {
    "sft_warmup_steps": 2,
    "num_batches": 4,
    "groups_per_batch": 4,
    "group_size": 2,
    "max_tokens": 8,
    "initial_eval": False,
    "eval_every": 2,
    "eval_examples": 4,
    "compute_post_kl": True,
    "max_steps_off_policy": 2,
}


async def main(out: Path, mode: str, parallelism: str) -> None:
    run_dir = out / "run"
    adapters = Adapters.local_torch(run_dir=run_dir, model="tiny", seed=0, parallelism=parallelism)
    result = await Kitchen.run(
        "rl_basic", {**SETTINGS, "mode": mode}, adapters=adapters, run_dir=run_dir
    )
    state = await adapters["training_client"].state_tensors()
    rank = int(os.environ.get("RANK", "0"))
    torch.save(
        {"status": result.status, "metrics": dict(result.metrics), "state": state},
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), sys.argv[2], sys.argv[3])
    os._exit(0)  # no lingering process-group teardown
