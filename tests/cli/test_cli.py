"""The `kitchen` command: runs, config files and overrides, readable errors, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.cli import load_config_file, main, parse_overrides, plot
from crucible_kitchen.errors import ConfigError, KitchenError

if TYPE_CHECKING:
    from pathlib import Path


def test_overrides_nest_and_parse_json_values() -> None:
    assert parse_overrides(["epochs=2", "adam.lr=1e-3", "name=x", "flags=[1,2]"]) == {
        "epochs": 2,
        "adam": {"lr": 0.001},
        "name": "x",
        "flags": [1, 2],
    }
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.toml", "epochs = 2\n[adam]\nlr = 0.001\n"),
        ("c.yaml", "epochs: 2\nadam:\n  lr: 0.001\n"),
        ("c.json", '{"epochs": 2, "adam": {"lr": 0.001}}'),
    ],
)
def test_config_files_in_three_formats(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_config_file(path) == {"epochs": 2, "adam": {"lr": 0.001}}


def test_bad_config_files_are_named_in_the_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 2")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config_file(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.json")
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(listy)


def test_run_reports_and_exits_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "sft.toml"
    config.write_text("epochs = 1\n")
    events = tmp_path / "events.jsonl"
    code = main(
        [
            "run",
            "supervised",
            "--config",
            str(config),
            "batch_size=4",
            "--quiet",
            "--jsonl",
            str(events),
            "--backend",
            "trio",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "completed" in err
    lines = events.read_text().splitlines()
    assert json.loads(lines[0])["event"] == "crucible_kitchen.workflow.run.start"


def test_config_errors_are_a_readable_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "supervised", "epochs=0", "typo=1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "  - epochs: Input should be greater than or equal to 1 (got 0)" in err
    assert "  - typo: Extra inputs are not permitted" in err


def test_unknown_recipe_fails_with_the_known_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "nope", "--quiet"]) == 1
    assert "known: " in capsys.readouterr().err


def test_recipes_and_describe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "supervised" in listing
    assert main(["describe", "supervised"]) == 0
    assert "stage submit_step" in capsys.readouterr().out


def test_plot_draws_the_curves(tmp_path: Path) -> None:
    rows = [{"step": i, "train/loss": 3.0 / (i + 1), "learning_rate": 1e-3} for i in range(20)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KitchenError, match="cannot read"):
        plot(tmp_path / "nothing-here")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_reader_that_goes_away_neither_hangs_nor_kills_the_run(
    backend: str, tmp_path: Path
) -> None:
    """``kitchen run ... | head -1``: rich would raise SystemExit from inside a telemetry
    handler; the console falls silent instead, and the run completes."""
    command = [sys.executable, "-m", "crucible_kitchen.cli", "run", "supervised"]
    command += ["--backend", backend, "--quiet", "--run-dir", str(tmp_path / "run")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()  # the reader goes away after one line
    assert process.wait(timeout=60) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
