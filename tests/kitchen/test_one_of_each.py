"""The atomic writers, the lazy loader and the one config-to-JSON that every layer shares."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pydantic
import pytest

from crucible_kitchen._files import (
    DIR_MODE,
    FILE_MODE,
    TEMP_PREFIX,
    atomic_write,
    atomic_write_directory,
)
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


def test_a_directory_is_written_whole_with_the_same_modes_whatever_the_umask(
    tmp_path: Path,
) -> None:
    destination = tmp_path / "runs" / "export"
    previous = os.umask(0o077)
    try:
        atomic_write_directory(
            destination,
            {"config.json": b"{}", "weights.bin": lambda path: path.write_bytes(b"\x00\x01")},
        )
    finally:
        os.umask(previous)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["export"]
    assert (destination / "config.json").read_bytes() == b"{}"
    assert (destination / "weights.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(destination.stat().st_mode) == DIR_MODE == 0o755
    for name in ("config.json", "weights.bin"):
        assert stat.S_IMODE((destination / name).stat().st_mode) == FILE_MODE


def test_a_failure_mid_write_leaves_no_directory_and_no_staging_behind(tmp_path: Path) -> None:
    def half_then_fail(path: Path) -> None:
        path.write_bytes(b"half of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_directory(tmp_path / "export", {"a.json": b"{}", "b.bin": half_then_fail})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing_files", [{}, {"model.safetensors": b"old weights"}])
def test_an_existing_destination_stays_intact(
    tmp_path: Path, existing_files: dict[str, bytes]
) -> None:
    destination = tmp_path / "export"
    destination.mkdir()
    for name, data in existing_files.items():
        (destination / name).write_bytes(data)
    written: list[Path] = []
    with pytest.raises(FileExistsError):
        atomic_write_directory(destination, {"a.json": written.append})
    assert written == []
    assert {p.name: p.read_bytes() for p in destination.iterdir()} == existing_files
    assert list(tmp_path.iterdir()) == [destination]


@pytest.mark.parametrize("with_a_file", [False, True])
def test_a_destination_that_appears_mid_write_is_kept_and_the_write_dropped(
    tmp_path: Path, with_a_file: bool
) -> None:
    destination = tmp_path / "export"

    def another_writer_comes_first(path: Path) -> None:
        path.write_bytes(b"ours")
        destination.mkdir()
        if with_a_file:
            (destination / "a.json").write_bytes(b"theirs")

    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        atomic_write_directory(destination, {"a.json": another_writer_comes_first})
    assert list(tmp_path.iterdir()) == [destination]
    expected = {"a.json": b"theirs"} if with_a_file else {}
    assert {p.name: p.read_bytes() for p in destination.iterdir()} == expected


@pytest.mark.parametrize(
    ("package", "name", "heavy"),
    [
        ("crucible_kitchen.adapters.local_torch", "ModelConfig", "torch"),
        ("crucible_kitchen.adapters.tinker", "TinkerSession", "tinker"),
        ("crucible_kitchen.telemetry", "JsonlSpanExporter", "opentelemetry.sdk"),
    ],
)
def test_a_lazy_name_loads_its_module_on_first_use_only(
    package: str, name: str, heavy: str
) -> None:
    code = f"""
import sys, {package} as package
assert {heavy!r} not in sys.modules
assert {name!r} in dir(package) and {name!r} not in vars(package)
value = getattr(package, {name!r})
assert vars(package)[{name!r}] is value and {heavy!r} in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "package",
    [
        "crucible_kitchen.adapters.local_torch",
        "crucible_kitchen.adapters.tinker",
        "crucible_kitchen.telemetry",
    ],
)
def test_an_unknown_name_is_an_attribute_error_as_in_any_module(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError) as caught:
        module.no_such_name  # noqa: B018
    assert str(caught.value) == f"module {package!r} has no attribute 'no_such_name'"
    assert set(module.__all__) <= set(dir(module))


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
