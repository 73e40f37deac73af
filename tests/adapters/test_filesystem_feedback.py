"""The filesystem feedback client: triggers, curation, exports the dataset store reads back,
baselines on disk; and the feedback loop on the local torch backend with it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.adapters.filesystem import (
    FilesystemDatasetStore,
    FilesystemFeedbackClient,
    bundled_data_dir,
)
from crucible_kitchen.errors import DataError, InvalidRequest, ResourceNotFound
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.ports import CuratedExample

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def write_feedback(root: Path, deployment: str, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "example_id": f"ex{i:02d}",
                "prompt": f"What is {i % 10} + {3 * i % 10}?",
                "response": str(i % 10 + 3 * i % 10),
                "source": "user_correction",
                "score": round(1.0 - i / 50, 3),
            }
        )
        for i in range(count)
    ]
    (root / f"{deployment}.jsonl").write_text("\n".join(lines) + "\n")


async def test_triggers_curation_and_export_read_back(tmp_path: Path) -> None:
    write_feedback(tmp_path, "prod", 5)
    client = FilesystemFeedbackClient(tmp_path, min_feedback=5)
    [trigger] = await client.check_triggers("prod")
    assert (trigger.kind, trigger.value, trigger.threshold) == ("data_volume", 5.0, 5.0)
    assert await FilesystemFeedbackClient(tmp_path, min_feedback=6).check_triggers("prod") == []
    curated = await client.curate("prod", limit=3)
    assert [e.example_id for e in curated] == ["ex00", "ex01", "ex02"]  # best score first
    exported = await client.export("prod", curated, request_id="r1")
    assert exported == await client.export("prod", curated, request_id="r1")  # applied once
    store = FilesystemDatasetStore(bundled_data_dir(), client.exports_dir)
    rows = await store.read_rows(exported.dataset, split=exported.split)
    assert [row["messages"][1]["content"] for row in rows] == [e.response for e in curated]
    assert len(await store.read_rows("chat_tasks")) == 560  # the first root still serves
    assert await client.baseline("prod") is None
    await client.update_baseline("prod", "model-7", request_id="b1")
    assert await client.baseline("prod") == "model-7"


async def test_bad_feedback_is_a_clear_error(tmp_path: Path) -> None:
    client = FilesystemFeedbackClient(tmp_path)
    with pytest.raises(ResourceNotFound, match="no feedback for deployment 'nobody'"):
        await client.check_triggers("nobody")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 1"):
        await client.curate("bad")
    example = CuratedExample(example_id="a", prompt="p", response="r", source="s", score=1.0)
    with pytest.raises(InvalidRequest, match="jsonl"):
        await client.export("bad", [example], format="parquet", request_id="x")
    with pytest.raises(InvalidRequest, match="no examples"):
        await client.export("bad", [], request_id="y")


async def test_the_feedback_loop_retrains_on_its_export_and_registers_the_lineage(
    tmp_path: Path,
) -> None:
    feedback = tmp_path / "feedback"
    write_feedback(feedback, "default", 24)
    source = tmp_path / "deployed"
    deployed = await Kitchen.run(
        "sl_basic", {"max_examples": 32, "epochs": 1, "eval_every": 0}, run_dir=source
    )
    assert deployed.status == "completed"
    config = {
        "feedback_root": str(feedback),
        "final_eval": False,
        "init_from": str(source),
        "epochs": 2,
    }
    run_dir = tmp_path / "retrain"
    result = await Kitchen.run("feedback_loop", config, adapters="local_torch", run_dir=run_dir)
    assert result.status == "completed", result.error
    assert (result.metrics["feedback/curated"], result.metrics["data/train_examples"]) == (24, 24)
    assert result.steps == 12  # 24 examples in batches of 4, twice
    model_id = result.artifacts["model_id"]
    assert json.loads((feedback / "default.baseline.json").read_text()) == {"model_id": model_id}
    [entry] = [json.loads(p.read_text()) for p in (run_dir / "registry").rglob("*.json")]
    lineage = entry["model"]["artifact"]["lineage"]
    assert lineage["dataset"].startswith("feedback-default-")
    assert lineage["init_from"] == str(source / "checkpoints/weights/final")
    assert (feedback / "exports" / lineage["dataset"] / "train.jsonl").is_file()
