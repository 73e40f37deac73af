"""The ``kitchen`` command: run recipes and workflows, list them, describe them.

::

    kitchen run supervised epochs=2 batch_size=8
    kitchen run supervised --adapters noop --backend trio --jsonl runs/events.jsonl
    kitchen recipes
    kitchen describe supervised
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

import anyio

from crucible_kitchen.errors import KitchenError
from crucible_kitchen.kitchen import Kitchen

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("main",)


def _parse_value(text: str) -> Any:
    """``3`` → 3, ``0.1`` → 0.1, ``true`` → True, ``[1,2]`` → [1, 2]; anything else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=2", "optimizer.lr=1e-3"]`` → ``{"epochs": 2, "optimizer": {"lr": 0.001}}``.

    Raises:
        KitchenError: a pair without ``=``.
    """
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KitchenError(f"expected key=value, got {pair!r}")
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _parse_value(value)
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kitchen", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a recipe or built-in workflow")
    run.add_argument("target", help="a recipe or workflow name (see `kitchen recipes`)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config settings")
    run.add_argument("--adapters", default=None, help="adapter set (default: the recipe's)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    run.add_argument("--jsonl", metavar="PATH", help="also write every event to this JSONL file")
    run.add_argument("--quiet", action="store_true", help="no console telemetry")
    commands.add_parser("recipes", help="list the recipes")
    describe = commands.add_parser("describe", help="show a recipe's workflow")
    describe.add_argument("target")
    return parser


async def _run(args: argparse.Namespace) -> int:
    telemetry: list[Any] = [] if args.quiet else ["console"]
    if args.jsonl:
        telemetry.append(("jsonl", args.jsonl))
    result = await Kitchen.run(
        args.target,
        parse_overrides(args.overrides),
        adapters=args.adapters,
        telemetry=telemetry,
        seed=args.seed,
    )
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
    print(f"{result.status}: {result.steps} steps in {result.duration_s:.2f} s  {metrics}")
    return 0


async def _recipes() -> int:
    async with Kitchen.open() as kitchen:
        for info in kitchen.recipes():
            print(f"{info.name:<16} {info.workflow:<14} {info.adapters:<12} {info.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kitchen`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return anyio.run(_run, args, backend=args.backend)
        if args.command == "recipes":
            return anyio.run(_recipes)
        print(Kitchen.describe(args.target))
        return 0
    except KitchenError as exc:
        print(f"kitchen: {exc}", file=sys.stderr)
        if exc.__cause__ is not None:
            print(f"  caused by {type(exc.__cause__).__name__}: {exc.__cause__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kitchen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
