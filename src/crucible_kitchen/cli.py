"""The ``kitchen`` command: run, resume, list, describe, plot and export training runs;
convert models.

``kitchen --help`` shows the commands with examples (:data:`EXAMPLES`). Ctrl-C once: finish the
current step, checkpoint, stop, then print the ``kitchen resume`` command that continues there.
Ctrl-C twice: cancel at once (cleanup stages still run).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from crucible_kitchen.errors import ConfigError, KitchenError
from crucible_kitchen.kitchen import Kitchen, convert_gguf, export_run
from crucible_kitchen.telemetry import (
    STEP_EVENTS,
    ConsoleHandler,
    DistillationStep,
    DpoStep,
    RlStep,
    TelemetryEvent,
    TrainingCheckpoint,
    TrainingStep,
    WorkflowException,
    WorkflowStart,
    WorkflowStop,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from crucible_kitchen.kitchen import RunHandle, RunResult

__all__ = ("main",)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command that SIGPIPE ended (``| head``)

EXAMPLES = """\
examples:
  kitchen run sl_basic                            # the README's main job
  kitchen run sl_basic --config my.toml epochs=3 learning_rate=1e-3
  kitchen resume runs/sl_basic-1a2b3c4d           # continue from its last checkpoint
  kitchen resume runs/fsdp parallelism=ddp        # a torchrun FSDP run, now in one process
  kitchen plot runs/sl_basic-1a2b3c4d             # loss and learning-rate curves (PNG)
  kitchen export runs/sl_basic-1a2b3c4d out/      # final weights as a Hugging Face model
  kitchen recipes
  kitchen describe sl_basic
  kitchen serve --port 8080                       # the HTTP API (docs/guides/service.md)
  kitchen serve --tinker --port 8000              # the Tinker API (docs/guides/tinker.md)
  kitchen convert model.gguf models/my-model      # GGUF -> Hugging Face model directory

Ctrl-C once: finish the current step, checkpoint, stop; the command that resumes the run
is printed at the end. Ctrl-C twice: cancel at once (cleanup stages still run).
"""


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

    Other events worth a line (failures, retries, checkpoints, evals) print above the bar. It
    also keeps what the end-of-run report needs: the steps whose results arrived
    (:attr:`steps_done`), the metrics of the last of them, and the checkpoints saved.
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

        self.lines = ConsoleHandler()
        self.console = self.lines.console
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
        self.steps_done: int | None = None
        """Steps whose step event arrived (1 + the last one's 0-based index)."""
        self.step_metrics: dict[str, float] = {}
        """The metrics of the last step event."""
        self.checkpoint_steps: dict[str, int] = {}
        """Each checkpoint saved: its path and the step it was taken after."""
        self._last = (time.perf_counter(), 0.0)

    def __call__(self, event: TelemetryEvent) -> None:
        if isinstance(event, WorkflowStart):
            self.progress.start()
            self.task = self.progress.add_task(event.workflow, total=None, stats="")
        elif isinstance(event, STEP_EVENTS):
            self._step(event)
            if isinstance(event, TrainingStep):
                return  # the bar shows it; DPO, RL and distillation steps also get a line
        elif isinstance(event, TrainingCheckpoint):
            self.checkpoint_steps[event.path] = event.step
        elif isinstance(event, WorkflowStop):
            event = self._finish(event)
        line = self.lines.format(event)
        if line is not None and line[0] >= 20:
            self.progress.console.print(line[1], markup=False, highlight=False)
        if isinstance(event, WorkflowStop | WorkflowException):
            self.progress.stop()

    def _step(self, event: TrainingStep | DpoStep | RlStep | DistillationStep) -> None:
        self.steps_done = event.step + 1
        self.step_metrics = dict(event.metrics)
        if self.task is None:
            return
        now, tokens = time.perf_counter(), float(event.metrics.get("train/tokens", 0.0))
        then, _ = self._last
        rate = tokens / (now - then) if now > then and tokens else 0.0
        self._last = (now, tokens)
        loss = "" if event.loss is None else f"loss {event.loss:.4f}"
        speed = f"  {rate:,.0f} tok/s" if rate else ""
        total = event.total_steps if isinstance(event, TrainingStep) else None
        self.progress.update(
            self.task, completed=self.steps_done, total=total, stats=f"{loss}{speed}"
        )

    def _finish(self, event: WorkflowStop) -> WorkflowStop:
        """Fill the bar of a completed run; for a stopped run, count the steps whose results
        arrived (a pipelined run stops with one more step submitted than finished)."""
        if event.status != "completed" and self.steps_done is not None:
            event = msgspec.structs.replace(event, steps=min(event.steps, self.steps_done))
        if self.task is not None:
            total = event.steps if event.status == "completed" else None
            self.progress.update(self.task, completed=event.steps, total=total)
        return event

    def close(self) -> None:
        self.progress.stop()


async def _start_and_wait(
    start: Callable[[Kitchen], Awaitable[RunHandle]], display: ProgressDisplay, verb: str
) -> tuple[RunHandle, RunResult] | None:
    """Start a run and wait for it. Ctrl-C (or SIGTERM) during start-up abandons the start
    (``None``); once it runs, the first stops it gracefully and the second cancels it."""
    console = display.console
    handle: RunHandle | None = None
    failure: Exception | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                interrupts = 0
                async for _ in signals:
                    if handle is None:
                        tg.cancel_scope.cancel()
                        return
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
            try:
                async with Kitchen.open() as kitchen:
                    handle = await start(kitchen)
                    console.print(f"{verb} [bold]{handle.run_id}[/] ({handle.workflow})")
                    result = await handle.result()
            except Exception as exc:  # raised below, outside the group that would wrap it
                failure = exc
            tg.cancel_scope.cancel()
    display.close()
    if failure is not None:
        raise failure
    if handle is None:
        return None
    return handle, result


def _report(result: RunResult, display: ProgressDisplay, handle: RunHandle, backend: str) -> int:
    """Print how the run ended; for a stopped run, where and how to resume it."""
    console = display.console
    steps, metrics = result.steps, dict(result.metrics)
    if result.status != "completed" and display.steps_done is not None:
        steps = min(steps, display.steps_done)  # as the bar and the stop line say
        metrics.update(display.step_metrics)  # the last finished step's, not a partial one's
    console.print(f"[bold]{result.status}[/]: {steps} steps in {result.duration_s:.1f} s")
    if metrics:
        console.print("  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())), markup=False)
    for line in _before_after(metrics):
        console.print(line, markup=False)
    for name, path in sorted(result.artifacts.items()):
        console.print(f"  {name}: {path}", markup=False)
    if result.status == "completed":
        return EXIT_OK
    if result.status == "failed":
        console.print(f"[red]failed[/]: {result.error}", markup=True)
    console.print(_resume_hint(result, display, handle, backend), markup=False)
    return EXIT_STOPPED if result.status == "cancelled" else EXIT_FAILED


_INITIAL: Final = "initial/"
"""Where a run's metrics keep the evaluation before its first step (the built-in stages'
``INITIAL_PREFIX``; the command line sits on the public API, above the stages)."""


def _before_after(metrics: Mapping[str, float]) -> list[str]:
    """``eval/correct: 0.094 -> 0.25`` for each metric evaluated before the first step
    (kept as ``initial/<name>``) and after the last."""
    lines = []
    for key, before in sorted(metrics.items()):
        name = key.removeprefix(_INITIAL)
        after = metrics.get(name)
        if name != key and after is not None and not name.endswith("num_samples"):
            lines.append(f"  {name}: {before:.4g} -> {after:.4g} (before -> after training)")
    return lines


def _resume_hint(
    result: RunResult, display: ProgressDisplay, handle: RunHandle, backend: str
) -> str:
    """The exact ``kitchen resume`` command, and the step it starts from."""
    if handle.run_dir is None:
        return "this run keeps no run directory, so it cannot be resumed"
    command = f"kitchen resume {shlex.quote(str(handle.run_dir))}"
    if backend != "asyncio":
        command += f" --backend {backend}"
    checkpoint = result.artifacts.get("last_checkpoint")
    if checkpoint is None:
        return f"no checkpoint was saved; to start again from step 0: {command}"
    if "://" in checkpoint:
        return f"its checkpoints are not on disk ({checkpoint}), so it cannot be resumed"
    step = display.checkpoint_steps.get(checkpoint)
    where = "its last checkpoint" if step is None else f"step {step} (its last checkpoint)"
    return f"to resume from {where}: {command}"


async def _run(args: argparse.Namespace) -> int:
    config: dict[str, Any] = {}
    if args.config:
        config = load_config_file(args.config)
    config = _merge(config, parse_overrides(args.overrides))
    display = ProgressDisplay(enabled=not args.quiet)
    telemetry: list[Any] = [display]
    if args.jsonl:
        telemetry.append(("jsonl", args.jsonl))
    options: dict[str, Any] = {"adapters": args.adapters, "telemetry": telemetry}
    if args.run_dir:
        options["run_dir"] = args.run_dir

    async def start(kitchen: Kitchen) -> RunHandle:
        return await kitchen.start(args.target, config, seed=args.seed, **options)

    return _outcome(await _start_and_wait(start, display, "run"), display, args.backend)


async def _resume(args: argparse.Namespace) -> int:
    display = ProgressDisplay(enabled=not args.quiet)

    async def start(kitchen: Kitchen) -> RunHandle:
        return await kitchen.start_resumed(
            args.run_dir, settings=parse_overrides(args.overrides), telemetry=[display]
        )

    return _outcome(await _start_and_wait(start, display, "resuming"), display, args.backend)


def _outcome(
    ended: tuple[RunHandle, RunResult] | None, display: ProgressDisplay, backend: str
) -> int:
    if ended is None:
        display.console.print("interrupted during start-up: the run did not start")
        return EXIT_STOPPED
    handle, result = ended
    return _report(result, display, handle, backend)


async def _recipes() -> int:
    async with Kitchen.open() as kitchen:
        for info in kitchen.recipes():
            print(f"{info.name:<16} {info.workflow:<14} {info.adapters:<12} {info.description}")
    return EXIT_OK


def plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the loss curves, the scores (evaluation metrics, RL reward, DPO accuracy and
    margin, teacher KL) and the learning rate of a run's ``metrics.jsonl`` into a PNG.

    Evaluation metrics, which ``metrics.jsonl`` keeps under tinker-cookbook's ``test/``
    prefix, are labelled ``eval/`` as on the console (``eval/loss``).

    Raises:
        KitchenError: no metrics file, nothing to plot, or matplotlib is missing.
    """
    run_dir = Path(run_dir)
    source = run_dir / "metrics.jsonl"
    try:
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise KitchenError(f"no metrics to plot: cannot read {source}: {exc.strerror}") from exc
    losses, rates = _curves(rows)
    scores = _score_curves(rows)
    if not losses and not rates:
        raise KitchenError(f"nothing to plot in {source}: no loss or learning-rate columns")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - part of the cli extra
        raise KitchenError("plotting needs: pip install 'crucible-kitchen[cli]'") from exc
    panels = [
        panel
        for panel in [(losses, "loss"), (scores, "score"), (rates, "learning rate")]
        if panel[0]
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), squeeze=False)
    for ax, (curves, label) in zip(axes[:, 0], panels, strict=True):
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


Curves = dict[str, tuple[list[float], list[float]]]
"""Named curves: each name's steps and values."""


_SCORES: Final = frozenset(
    ("env/all/reward/total", "accuracy", "margin", "distill/teacher_kl", "eval/teacher_kl")
)
"""The training scores the score panel draws, beside every evaluation metric that is not a
loss (RL reward, DPO accuracy and margin, the teacher KL of a distillation)."""


def _score_curves(rows: Sequence[Mapping[str, Any]]) -> Curves:
    """The curves of the score panel: evaluation metrics that are not losses, and
    :data:`_SCORES`."""
    return _distinct(
        {
            k: v
            for k, v in _series(rows).items()
            if k in _SCORES
            or (k.startswith("eval/") and not _is_loss(k) and not k.endswith("num_samples"))
        }
    )


def _is_loss(key: str) -> bool:
    return ("loss" in key or "nll" in key) and "tokens" not in key


def _curves(rows: Sequence[Mapping[str, Any]]) -> tuple[Curves, Curves]:
    """The loss curves and the learning-rate curves of ``metrics.jsonl`` rows, each named as
    the console names it (:func:`_legend`), aliases of one another dropped."""
    series = _series(rows)
    losses = _distinct({k: v for k, v in series.items() if _is_loss(k)})
    rates = _distinct({k: v for k, v in series.items() if k in ("lr", "learning_rate", "train/lr")})
    return losses, rates


def _series(rows: Sequence[Mapping[str, Any]]) -> Curves:
    """Every numeric column of ``metrics.jsonl`` rows with a step, named by :func:`_legend`."""
    series: Curves = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                xs, ys = series.setdefault(_legend(key), ([], []))
                xs.append(float(step))
                ys.append(float(value))
    return series


def _legend(key: str) -> str:
    """A column's name as the console prints it: ``metrics.jsonl`` keeps evaluation metrics
    under tinker-cookbook's ``test/`` prefix, the console and the run's metrics say ``eval/``."""
    return "eval/" + key.removeprefix("test/") if key.startswith("test/") else key


def _distinct(curves: Curves) -> Curves:
    """Drop a curve that repeats an earlier one under another name (cookbook aliases)."""
    kept: Curves = {}
    for key in sorted(curves):
        if curves[key] not in kept.values():
            kept[key] = curves[key]
    return kept


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kitchen",
        description="Run, resume and inspect crucible-kitchen training runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a recipe or built-in workflow")
    run.add_argument("target", help="a recipe name (see `kitchen recipes`)")
    run.add_argument(
        "overrides", nargs="*", default=[], metavar="key=value", help="config settings (optional)"
    )
    run.add_argument("--config", metavar="FILE", help="settings from a .toml, .yaml or .json file")
    run.add_argument("--adapters", default=None, help="adapter set (default: the recipe's)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--run-dir", metavar="DIR", help="where the run's files go")
    run.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    run.add_argument("--jsonl", metavar="PATH", help="also write every event to this JSONL file")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    resume = commands.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help="how the run executes from now on: parallelism, threads (optional)",
    )
    resume.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")
    plotting = commands.add_parser("plot", help="draw a run's loss and lr curves to a PNG")
    plotting.add_argument("run_dir", metavar="RUN_DIR")
    plotting.add_argument("--out", metavar="PNG", help="default: RUN_DIR/curves.png")
    exporting = commands.add_parser(
        "export", help="write a finished run's weights as a Hugging Face model directory"
    )
    exporting.add_argument("run_dir", metavar="RUN_DIR")
    exporting.add_argument("out_dir", metavar="OUT_DIR", help="a new directory")
    exporting.add_argument(
        "--peft", action="store_true", help="the LoRA adapters only, in PEFT's format"
    )
    commands.add_parser("recipes", help="list the recipes")
    describe = commands.add_parser("describe", help="show a recipe's workflow")
    describe.add_argument("target")
    describe.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    serving = commands.add_parser("serve", help="serve the HTTP API (needs the service extra)")
    serving.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serving.add_argument("--port", type=int, default=8080)
    serving.add_argument(
        "--root", default="runs", help="where run directories go (--tinker: ROOT/tinker)"
    )
    serving.add_argument(
        "--token",
        default=os.environ.get("KITCHEN_TOKEN"),
        help="bearer token clients must send (default: $KITCHEN_TOKEN); required off loopback",
    )
    serving.add_argument(
        "--tinker",
        action="store_true",
        help="serve the local torch backend over the Tinker API instead (docs/guides/tinker.md)",
    )
    serving.add_argument(
        "--api-key",
        default=os.environ.get("TINKER_API_KEY"),
        help="--tinker: the key SDK clients send (default: $TINKER_API_KEY); required off loopback",
    )
    serving.add_argument("--device", default="cpu", help="--tinker: cpu, cuda, cuda:N or auto")
    serving.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="--tinker: serve a Hugging Face model directory as base_model NAME (default: DIR "
        "itself, which the SDK's and the cookbook's get_tokenizer load offline); repeatable",
    )
    converting = commands.add_parser(
        "convert", help="convert a GGUF file into a Hugging Face model directory"
    )
    converting.add_argument("source", metavar="FILE.gguf")
    converting.add_argument("destination", metavar="OUT_DIR", help="a new directory")
    converting.add_argument("--dtype", choices=("float32", "float16"), default="float32")
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
        return _command(args)
    except BrokenPipeError:
        # The reader went away (``kitchen describe ... | head``): no traceback, and nothing
        # more to write; point stdout at /dev/null so that the exit's flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _served_model(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (named by itself) of ``--model``."""
    name, separator, directory = spec.partition("=")
    return (name, directory) if separator else (spec, spec)


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return anyio.run(_run, args, backend=args.backend)
        if args.command == "resume":
            return anyio.run(_resume, args, backend=args.backend)
        if args.command == "recipes":
            return anyio.run(_recipes)
        if args.command == "serve" and args.tinker:
            from crucible_kitchen.service.tinker import serve_tinker

            serve_tinker(
                host=args.host,
                port=args.port,
                root=os.path.join(args.root, "tinker"),
                api_key=args.api_key,
                device=args.device,
                models=dict(_served_model(spec) for spec in args.model),
            )
            return EXIT_OK
        if args.command == "serve":
            from crucible_kitchen.service import serve

            serve(host=args.host, port=args.port, root=args.root, token=args.token)
            return EXIT_OK
        if args.command == "convert":
            print(convert_gguf(args.source, args.destination, dtype=args.dtype))
            return EXIT_OK
        if args.command == "plot":
            print(plot(args.run_dir, args.out))
            return EXIT_OK
        if args.command == "export":
            print(export_run(args.run_dir, args.out_dir, peft=args.peft))
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
