"""The ``kitchen`` command: run, resume, list, describe and plot training runs.

::

    kitchen run sl_basic                                  # the README's main job
    kitchen run sl_basic --config my.toml epochs=3 learning_rate=1e-3
    kitchen resume runs/sl_basic-1a2b3c4d                 # continue from its last checkpoint
    kitchen plot runs/sl_basic-1a2b3c4d                   # loss and learning-rate curves (PNG)
    kitchen recipes
    kitchen describe sl_basic

Ctrl-C once: finish the current step, checkpoint, stop (``kitchen resume`` continues exactly
there). Ctrl-C twice: cancel at once (cleanup stages still run).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from crucible_kitchen.errors import ConfigError, KitchenError
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.telemetry import (
    ConsoleHandler,
    TelemetryEvent,
    TrainingStep,
    WorkflowException,
    WorkflowStart,
    WorkflowStop,
)
from crucible_kitchen.telemetry._handlers import stderr_console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from crucible_kitchen.kitchen import RunHandle, RunResult

__all__ = ("load_config_file", "main", "parse_overrides")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


def _parse_value(text: str) -> Any:
    """``3`` → 3, ``0.1`` → 0.1, ``true`` → True, ``[1,2]`` → [1, 2]; anything else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=2", "adam.lr=1e-3"]`` → ``{"epochs": 2, "adam": {"lr": 0.001}}``.

    Raises:
        ConfigError: a pair without ``=``.
    """
    config: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"{pair!r}: expected key=value")
            continue
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _parse_value(value)
    if problems:
        raise ConfigError(problems, source="command-line settings")
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config mapping from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file.

    Raises:
        ConfigError: the file is missing, unreadable, malformed, or not a mapping.
    """
    path = Path(path)
    source = f"config file {str(path)!r}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read it: {exc.strerror}"], source=source) from exc
    try:
        if path.suffix == ".toml":
            loaded: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:  # pragma: no cover - part of the cli extra
                raise ConfigError(
                    ["YAML needs: pip install 'crucible-kitchen[cli]'"], source=source
                ) from exc
            loaded = yaml.safe_load(text)
        elif path.suffix == ".json":
            loaded = json.loads(text)
        else:
            raise ConfigError(
                [f"unknown format {path.suffix!r}: use .toml, .yaml or .json"], source=source
            )
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError([f"malformed: {exc}"], source=source) from exc
    if not isinstance(loaded, dict):
        raise ConfigError(
            [f"expected a mapping at the top, got {type(loaded).__name__}"], source=source
        )
    return loaded


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ProgressDisplay:
    """A telemetry handler that draws a rich progress bar: step, loss, tokens/s, ETA.

    Other events worth a line (failures, retries, checkpoints, evals) print above the bar.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = stderr_console()
        self.lines = ConsoleHandler(self.console)
        self.progress: Progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task: TaskID | None = None
        self._last = (time.perf_counter(), 0.0)

    def __call__(self, event: TelemetryEvent) -> None:
        if isinstance(event, WorkflowStart):
            self.progress.start()
            self.task = self.progress.add_task(event.workflow, total=None, stats="")
        if isinstance(event, TrainingStep) and self.task is not None:
            now, tokens = time.perf_counter(), float(event.metrics.get("train/tokens", 0.0))
            then, _ = self._last
            rate = tokens / (now - then) if now > then and tokens else 0.0
            self._last = (now, tokens)
            loss = "" if event.loss is None else f"loss {event.loss:.4f}"
            speed = f"  {rate:,.0f} tok/s" if rate else ""
            self.progress.update(
                self.task, completed=event.step + 1, total=event.total_steps, stats=f"{loss}{speed}"
            )
            return
        line = self.lines.format(event)
        if line is not None and line[0] >= 20:
            self.progress.console.print(line[1], markup=False, highlight=False)
        if isinstance(event, WorkflowStop | WorkflowException):
            self.progress.stop()

    def close(self) -> None:
        self.progress.stop()


async def _await_with_signals(handle: RunHandle, console: Any) -> RunResult:
    """Wait for the run; the first Ctrl-C stops it gracefully, the second cancels it."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                interrupts = 0
                async for _ in signals:
                    interrupts += 1
                    if interrupts == 1:
                        console.print(
                            "[yellow]stopping after this step and its checkpoint; "
                            "Ctrl-C again to abort"
                        )
                        handle.request_stop()
                    else:
                        console.print("[red]aborting")
                        tg.start_soon(handle.cancel)
                        return

        tg.start_soon(watch)
        result = await handle.result()
        tg.cancel_scope.cancel()
    return result


def _report(result: RunResult, console: Any) -> int:
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
    console.print(f"[bold]{result.status}[/]: {result.steps} steps in {result.duration_s:.1f} s")
    if metrics:
        console.print(metrics, markup=False)
    for name, path in sorted(result.artifacts.items()):
        console.print(f"  {name}: {path}", markup=False)
    if result.status == "completed":
        return EXIT_OK
    if result.status == "cancelled":
        return EXIT_STOPPED
    console.print(f"[red]failed[/]: {result.error}", markup=True)
    return EXIT_FAILED


async def _run(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {}
    if args.config:
        config = load_config_file(args.config)
    config = _merge(config, parse_overrides(args.overrides))
    display = ProgressDisplay(enabled=not args.quiet)
    telemetry: list[Any] = [display]
    if args.jsonl:
        telemetry.append(("jsonl", args.jsonl))
    start: dict[str, Any] = {"adapters": args.adapters, "telemetry": telemetry, "seed": args.seed}
    if args.run_dir:
        start["run_dir"] = args.run_dir
    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(args.target, config, **start)
        display.console.print(f"run [bold]{handle.run_id}[/] ({handle.workflow})")
        result = await _await_with_signals(handle, display.console)
    display.close()
    return _report(result, display.console)


async def _resume(args: argparse.Namespace) -> int:
    display = ProgressDisplay(enabled=not args.quiet)
    async with Kitchen.open() as kitchen:
        handle = await kitchen.start_resumed(args.run_dir, telemetry=[display])
        display.console.print(f"resuming [bold]{handle.run_id}[/] from {args.run_dir}")
        result = await _await_with_signals(handle, display.console)
    display.close()
    return _report(result, display.console)


async def _recipes() -> int:
    async with Kitchen.open() as kitchen:
        for info in kitchen.recipes():
            print(f"{info.name:<16} {info.workflow:<14} {info.adapters:<12} {info.description}")
    return EXIT_OK


def plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the loss curves and the learning rate of a run's ``metrics.jsonl`` into a PNG.

    Raises:
        KitchenError: no metrics file, nothing to plot, or matplotlib is missing.
    """
    run_dir = Path(run_dir)
    source = run_dir / "metrics.jsonl"
    try:
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise KitchenError(f"no metrics to plot: cannot read {source}: {exc.strerror}") from exc
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    losses = _distinct(
        {k: v for k, v in series.items() if ("loss" in k or "nll" in k) and "tokens" not in k}
    )
    rates = _distinct({k: v for k, v in series.items() if k in ("lr", "learning_rate", "train/lr")})
    if not losses and not rates:
        raise KitchenError(f"nothing to plot in {source}: no loss or learning-rate columns")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - part of the cli extra
        raise KitchenError("plotting needs: pip install 'crucible-kitchen[cli]'") from exc
    figure, axes = plt.subplots(2 if rates and losses else 1, 1, figsize=(8, 6), squeeze=False)
    panels = [(losses, "loss"), (rates, "learning rate")]
    for ax, (curves, label) in zip(axes[:, 0], [p for p in panels if p[0]], strict=True):
        for key, (xs, ys) in sorted(curves.items()):
            ax.plot(xs, ys, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    target = Path(out) if out is not None else run_dir / "curves.png"
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def _distinct(
    curves: dict[str, tuple[list[float], list[float]]],
) -> dict[str, tuple[list[float], list[float]]]:
    """Drop a curve that repeats an earlier one under another name (cookbook aliases)."""
    kept: dict[str, tuple[list[float], list[float]]] = {}
    for key in sorted(curves):
        if curves[key] not in kept.values():
            kept[key] = curves[key]
    return kept


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kitchen",
        description="Run, resume and inspect crucible-kitchen training runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a recipe or built-in workflow")
    run.add_argument("target", help="a recipe name (see `kitchen recipes`)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config settings")
    run.add_argument("--config", metavar="FILE", help="settings from a .toml, .yaml or .json file")
    run.add_argument("--adapters", default=None, help="adapter set (default: the recipe's)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--run-dir", metavar="DIR", help="where the run's files go")
    run.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    run.add_argument("--jsonl", metavar="PATH", help="also write every event to this JSONL file")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    resume = commands.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")
    plotting = commands.add_parser("plot", help="draw a run's loss and lr curves to a PNG")
    plotting.add_argument("run_dir", metavar="RUN_DIR")
    plotting.add_argument("--out", metavar="PNG", help="default: RUN_DIR/curves.png")
    commands.add_parser("recipes", help="list the recipes")
    describe = commands.add_parser("describe", help="show a recipe's workflow")
    describe.add_argument("target")
    describe.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kitchen`` console script; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value settings may come after options too
        if not hasattr(args, "overrides") or not all("=" in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "run":
            return anyio.run(_run, args, backend=args.backend)
        if args.command == "resume":
            return anyio.run(_resume, args, backend=args.backend)
        if args.command == "recipes":
            return anyio.run(_recipes)
        if args.command == "plot":
            print(plot(args.run_dir, args.out))
            return EXIT_OK
        print(Kitchen.describe(args.target, parse_overrides(args.overrides)))
        return EXIT_OK
    except ConfigError as exc:
        print(f"kitchen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KitchenError as exc:
        print(f"kitchen: {exc}", file=sys.stderr)
        if exc.__cause__ is not None:
            print(f"  caused by {type(exc.__cause__).__name__}: {exc.__cause__}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("kitchen: interrupted", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
