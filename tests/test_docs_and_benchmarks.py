"""Every runnable example in docs/ runs, and every benchmark still works in its quick mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*_bench.py") if p.stem != "triotp_bench")


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_docs_example_runs_on_asyncio_and_trio(example: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "asyncio: ok" in done.stdout
    assert "trio: ok" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_quick_mode_still_runs(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_docs_stand_alone() -> None:
    """README, docs/ and the benchmarks point at nothing outside the repository."""
    texts = [
        ROOT / "README.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]
    texts += EXAMPLES
    outside = ("/work/", "../shared", "shared/reference", "calibration.md")
    found = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in texts
        for needle in outside
        if needle in path.read_text(encoding="utf-8")
    ]
    assert found == []
