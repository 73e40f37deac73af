"""``kitchen serve``: the same application standalone, in a process of its own.

The server is aiohttp's, on asyncio; the test talks to it over loopback with the standard
library's HTTP client and stops it with SIGINT to its process group, as a terminal's Ctrl-C
does (the Kitchen's worker process gets it too, and leaves the stopping to the service).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.cli import main

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def kitchen_serve(*args: str, env: dict[str, str]) -> Iterator[int]:
    """``kitchen serve *args`` in a process group of its own on a free loopback port (yielded
    once it listens), stopped with SIGINT to the group at the end; it must exit with status 0,
    and no process of the group may be left."""
    port = free_port()
    command = [sys.executable, "-m", "crucible_kitchen.cli", "serve", "--port", str(port)]
    with subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        start_new_session=True,
    ) as server:
        try:
            assert server.stdout is not None
            assert f"Running on http://127.0.0.1:{port}" in server.stdout.readline()
            yield port
        finally:
            os.killpg(server.pid, signal.SIGINT)
            output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    assert "Traceback" not in output, output
    with pytest.raises(ProcessLookupError):  # the worker process has exited too
        os.killpg(server.pid, 0)


def test_serve_answers_over_http_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    env = {"KITCHEN_TOKEN": "from-the-env"}
    with kitchen_serve("--root", str(tmp_path), env=env) as port:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            assert json.load(response)["status"] == "ok"
        request = urllib.request.Request(
            f"{base}/recipes", headers={"Authorization": "Bearer from-the-env"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert "sl_basic" in {r["name"] for r in json.load(response)["recipes"]}


@pytest.mark.slow
def test_ctrl_c_stops_a_run_in_flight_at_a_step_boundary_with_a_checkpoint(
    tmp_path: Path,
) -> None:
    train = {
        "recipe": "sl_basic",
        "config": {"max_examples": 64, "max_steps": 100_000, "eval_every": 100_000},
    }
    with kitchen_serve("--root", str(tmp_path), env={}) as port:
        base = f"http://127.0.0.1:{port}"
        started = urllib.request.Request(
            f"{base}/runs", data=json.dumps(train).encode(), method="POST"
        )
        with urllib.request.urlopen(started, timeout=60) as response:
            run_id = json.load(response)["run_id"]
        with urllib.request.urlopen(f"{base}/runs/{run_id}/events", timeout=120) as events:
            for line in events:  # until the run's first training step
                if line == b"event: crucible_kitchen.training.step\n":
                    break
    summary = json.loads((tmp_path / run_id / "summary.json").read_text())
    assert summary["status"] == "cancelled"
    assert 0 < summary["steps"] < 100_000
    assert any((tmp_path / run_id / "checkpoints" / "weights").iterdir())


def test_serve_refuses_a_public_address_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KITCHEN_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err == (
        "kitchen: invalid kitchen serve settings:\n"
        "  - host '0.0.0.0' is reachable from other machines: give a bearer token "
        "(--token or KITCHEN_TOKEN), or serve on 127.0.0.1\n"
    )
