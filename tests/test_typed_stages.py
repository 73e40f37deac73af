"""A type checker checks what stages do with ports and configs: ``ctx.port(name)`` is the
port's Protocol, and ``Context[MyConfig]`` types ``ctx.config`` (mypy --strict, on a stage
module of the kind users write)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, get_args, get_overloads, get_type_hints

from mypy import api

import crucible_kitchen.ports as ports
from crucible_kitchen.ports import PORT_PROTOCOLS
from crucible_kitchen.stages import Context

if TYPE_CHECKING:
    from pathlib import Path

STAGE_MODULE = """
from __future__ import annotations

from dataclasses import dataclass

from crucible_kitchen.ports import AdamParams
from crucible_kitchen.stages import Context, Stage


@dataclass(frozen=True)
class Settings:
    learning_rate: float


class Step(Stage):
    async def execute(self, ctx: Context[Settings]) -> None:
        client = ctx.port("training_client")
        reveal_type(client)
        reveal_type(ctx.port("teacher_sampling_client"))
        reveal_type(ctx.port("my_own_port"))
        reveal_type(ctx.config.learning_rate)
        params = AdamParams(learning_rate=ctx.config.learning_rate)
        await client.optim_step(params, request_id=ctx.request_id("optim_step"))
        await client.optim_step(ctx.config.learning_rate, request_id="x")
        ctx.config.epochs


async def untyped(ctx: Context) -> None:
    reveal_type(ctx.config)
"""


MYPY_CONFIG = """
[mypy]
strict = True

[mypy-numpy,numpy.*,torch.*,transformers.*,peft.*,huggingface_hub.*,matplotlib.*,gguf.*]
follow_imports = skip
"""
"""``mypy --strict``, without analysing the ML libraries that the package's adapters import:
no port or config type involves them, and they are most of a cold run's time."""


def test_port_calls_and_typed_configs_are_checked(tmp_path: Path) -> None:
    module = tmp_path / "my_stages.py"
    module.write_text(STAGE_MODULE)
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    out, _, status = api.run(
        [
            *("--config-file", str(config), "--no-error-summary"),
            *("--cache-dir", str(tmp_path / "cache"), str(module)),
        ]
    )
    found = [re.sub(r"^.*?:\d+: ", "", line) for line in out.splitlines()]
    assert found == [
        'note: Revealed type is "crucible_kitchen.ports._training_client.TrainingClient"',
        'note: Revealed type is "crucible_kitchen.ports._sampling_client.SamplingClient"',
        'note: Revealed type is "Any"',
        'note: Revealed type is "float"',
        'error: Argument 1 to "optim_step" of "TrainingClient" has incompatible type "float"; '
        'expected "AdamParams"  [arg-type]',
        'error: "Settings" has no attribute "epochs"  [attr-defined]',
        'note: Revealed type is "Any"',
    ]
    assert status == 1


def test_context_port_is_typed_for_every_port_name() -> None:
    """One overload per Protocol, naming exactly the ports of the catalogue."""
    namespace = {**vars(ports), "Literal": Literal, "Any": Any}
    typed: dict[str, type] = {}
    for overload in get_overloads(Context.port):
        hints = get_type_hints(overload, globalns=namespace)
        if hints["return"] is not Any:
            typed.update(dict.fromkeys(get_args(hints["name"]), hints["return"]))
    assert typed == dict(PORT_PROTOCOLS)
