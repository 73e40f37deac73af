"""The one atomic writer and the one config-to-JSON that every layer shares."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

import pydantic
import pytest

from crucible_kitchen._files import FILE_MODE, TEMP_PREFIX, atomic_write
from crucible_kitchen._json import config_json
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.kitchen._run_dir import read_run_record
from crucible_kitchen.telemetry import WorkflowStart

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.telemetry import TelemetryEvent


def test_atomic_write_gives_every_file_the_same_mode_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        atomic_write(tmp_path / "a" / "b.json", b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a" / "b.json").stat().st_mode) == FILE_MODE == 0o644
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "a" / "b.json", b"[]", exclusive=True)
    atomic_write(tmp_path / "a" / "b.json", b"[]")
    assert (tmp_path / "a" / "b.json").read_bytes() == b"[]"
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(TEMP_PREFIX)]


class _Config(pydantic.BaseModel):
    lr: float = 1e-3
    layers: tuple[int, ...] = (1, 2)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (_Config(), {"lr": 1e-3, "layers": [1, 2]}),
        ({"lr": 0.5, "tags": ("a",), 3: None}, {"lr": 0.5, "tags": ["a"], "3": None}),
        ({"hook": print}, {"hook": repr(print)}),
        ([1, 2], {"config": [1, 2]}),
        (None, {"config": None}),
    ],
)
def test_config_json_is_json_for_every_kind_of_config(config: Any, expected: Any) -> None:
    assert config_json(config) == expected


@pytest.mark.anyio
async def test_config_json_and_the_run_start_event_record_the_same_config(tmp_path: Path) -> None:
    seen: list[TelemetryEvent] = []
    await Kitchen.run(
        "supervised", {"max_steps": 1}, run_dir=tmp_path / "run", telemetry=[seen.append]
    )
    (start,) = [e for e in seen if isinstance(e, WorkflowStart)]
    assert read_run_record(tmp_path / "run").config == start.config
    assert start.config["max_steps"] == 1
