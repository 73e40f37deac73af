"""Under ``torchrun`` (its ``RANK`` and ``WORLD_SIZE`` variables), rank 0 alone writes the run
directory, and every rank names the run alike, since request ids derive from its id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crucible_kitchen import Kitchen
from crucible_kitchen.errors import RunDirectoryError

if TYPE_CHECKING:
    from pathlib import Path

SHORT = {"max_steps": 2}


@pytest.fixture
def rank_1_of_2(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    return monkeypatch


@pytest.mark.anyio
async def test_only_rank_0_writes_the_run_directory_and_every_rank_names_the_run_after_it(
    rank_1_of_2: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_dir = tmp_path / "job-7"
    other = await Kitchen.run("supervised", SHORT, adapters="noop", run_dir=run_dir)
    assert (other.status, other.run_id) == ("completed", "job-7")
    assert not run_dir.exists()

    rank_1_of_2.setenv("RANK", "0")
    writer = await Kitchen.run("supervised", SHORT, adapters="noop", run_dir=run_dir)
    assert (writer.status, writer.run_id) == ("completed", "job-7")
    assert {"config.json", "events.jsonl", "metrics.jsonl", "summary.json"} <= {
        path.name for path in run_dir.iterdir()
    }


@pytest.mark.anyio
async def test_ranks_that_cannot_agree_on_a_run_id_are_refused(
    rank_1_of_2: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(RunDirectoryError, match="every rank must name the same run"):
        await Kitchen.run("supervised", SHORT, adapters="noop", run_dir=False)
    rank_1_of_2.setenv("TORCHELASTIC_RUN_ID", "abc123")
    result = await Kitchen.run("supervised", SHORT, adapters="noop", run_dir=False)
    assert result.run_id == "supervised-abc123"
