"""The pytest plugin: the docs' example test file passes under pytest-trio's ``trio_mode`` and
under anyio's plugin (on asyncio and trio), and a failed test reports its kills and seed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "testing" / "test_fault_injection.py"

ANYIO_BOTH_BACKENDS = """
import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

pytestmark = pytest.mark.slow


def _pytest(directory: Path, ini: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest in ``directory`` under its own configuration ``ini``."""
    (directory / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=directory,
    )


def _passed(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    found = re.search(r"(\d+) passed", done.stdout)
    assert found is not None, done.stdout
    return int(found.group(1))


def test_the_example_passes_under_trio_mode(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path)
    done = _pytest(tmp_path, "trio_mode = true", "-p", "trio")
    assert _passed(done) == 3
    assert "[asyncio]" not in done.stdout


def test_the_example_passes_under_anyios_plugin_on_both_backends(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path)
    (tmp_path / "conftest.py").write_text(ANYIO_BOTH_BACKENDS)
    done = _pytest(tmp_path, "anyio_mode = auto", "-p", "anyio")
    assert _passed(done) == 6
    assert "[asyncio] PASSED" in done.stdout
    assert "[trio] PASSED" in done.stdout


FAILING = """
from crucible_kitchen.testing import KillPoint


async def test_fails_after_chaos(noop_kitchen, chaos_monkey, chaos_seed):
    await noop_kitchen.run("supervised", {"epochs": 1}, fault_hook=chaos_monkey)
    assert chaos_seed == 1234
    assert False, "on purpose"


async def test_fails_after_a_kill(noop_kitchen, stage_killer):
    killer = stage_killer(KillPoint("submit_step", "after_submit", execution=2))
    await noop_kitchen.run("supervised", {"epochs": 1}, fault_hook=killer)
    assert False, "on purpose"
"""

DEFAULT_SEED = """
from crucible_kitchen.training import derive_seed


def test_the_seed_is_derived_from_the_test_id(chaos_seed, request):
    assert chaos_seed == derive_seed("chaos", request.node.nodeid) % 2**32
"""


def test_a_failed_test_reports_its_kills_and_chaos_seed(tmp_path: Path) -> None:
    (tmp_path / "test_failing.py").write_text(FAILING)
    done = _pytest(tmp_path, "trio_mode = true", "--chaos-seed=1234")
    assert "2 failed" in done.stdout, done.stdout[-4000:]
    assert "on purpose" in done.stdout  # the seed option reached the fixture
    assert "crucible_kitchen fault injection" in done.stdout
    assert "chaos_monkey (--chaos-seed=1234): 3 kill(s)" in done.stdout
    assert "stage_killer: 1 kill(s)" in done.stdout
    assert "submit_step at after_submit (" in done.stdout


def test_by_default_each_test_gets_its_own_chaos_seed(tmp_path: Path) -> None:
    (tmp_path / "test_seed.py").write_text(DEFAULT_SEED)
    assert _passed(_pytest(tmp_path, "")) == 1


def test_the_plugin_can_be_disabled(tmp_path: Path) -> None:
    (tmp_path / "test_failing.py").write_text(FAILING)
    done = _pytest(tmp_path, "trio_mode = true", "-p", "no:crucible_kitchen")
    assert "fixture 'noop_kitchen' not found" in done.stdout
    assert "--chaos-seed" not in _pytest(tmp_path, "", "--help", "-p", "no:crucible_kitchen").stdout
