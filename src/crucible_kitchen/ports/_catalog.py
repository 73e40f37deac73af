"""The catalogue of ports by name, and a structural check of an adapter against its port."""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from crucible_kitchen.errors import PortError
from crucible_kitchen.ports._blob_store import BlobStore
from crucible_kitchen.ports._dataset_store import DatasetStore
from crucible_kitchen.ports._evaluator import Evaluator
from crucible_kitchen.ports._feedback_client import FeedbackClient
from crucible_kitchen.ports._metrics_store import MetricsStore
from crucible_kitchen.ports._model_registry import ModelRegistry
from crucible_kitchen.ports._renderer import Renderer
from crucible_kitchen.ports._sampling_client import SamplingClient
from crucible_kitchen.ports._tokenizer import Tokenizer
from crucible_kitchen.ports._training_client import TrainingClient

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ("PORT_PROTOCOLS", "PortName", "check_adapter", "protocol_problems")

PortName: TypeAlias = Literal[
    "blob_store",
    "dataset_store",
    "evaluator",
    "feedback_client",
    "metrics_store",
    "model_registry",
    "renderer",
    "sampling_client",
    "teacher_sampling_client",
    "tokenizer",
    "training_client",
]
"""The name under which a recipe requires a port and a user binds an adapter to it.

``teacher_sampling_client`` is a second :class:`SamplingClient`: the teacher that on-policy
distillation scores the student's samples with."""

PORT_PROTOCOLS: Final[Mapping[PortName, type]] = MappingProxyType(
    {
        "blob_store": BlobStore,
        "dataset_store": DatasetStore,
        "evaluator": Evaluator,
        "feedback_client": FeedbackClient,
        "metrics_store": MetricsStore,
        "model_registry": ModelRegistry,
        "renderer": Renderer,
        "sampling_client": SamplingClient,
        "teacher_sampling_client": SamplingClient,
        "tokenizer": Tokenizer,
        "training_client": TrainingClient,
    }
)
"""Each port's name and its Protocol (two ports may share one)."""

_MISSING: Final = object()


def protocol_problems(protocol: type, adapter: object) -> list[str]:
    """How ``adapter`` fails to implement ``protocol``, checked at runtime; empty if it does.

    Every public member of the protocol must exist; a method must be async exactly when the
    protocol's is, and accept each of the protocol's parameters by name.
    """
    problems: list[str] = []
    for name, member in vars(protocol).items():
        if name.startswith("_"):
            continue
        value = getattr(adapter, name, _MISSING)
        if value is _MISSING:
            problems.append(f"missing {name!r}")
            continue
        if isinstance(member, property) or not callable(member):
            continue
        if not callable(value):
            problems.append(f"{name!r} is not a method")
            continue
        if inspect.iscoroutinefunction(member) != inspect.iscoroutinefunction(value):
            wanted = "an async method" if inspect.iscoroutinefunction(member) else "a sync method"
            problems.append(f"{name!r} must be {wanted}")
        problems.extend(_missing_parameters(name, member, value))
    return problems


def _missing_parameters(
    name: str, member: Callable[..., object], value: Callable[..., object]
) -> list[str]:
    try:
        wanted = inspect.signature(member)
        offered = inspect.signature(value)
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in offered.parameters.values()):
        return []
    return [
        f"{name!r} lacks parameter {param!r}"
        for param in wanted.parameters
        if param != "self" and param not in offered.parameters
    ]


def check_adapter(port: PortName, adapter: object) -> None:
    """Check that ``adapter`` implements the port called ``port``.

    Raises:
        PortError: ``port`` is not a port name, or the adapter lacks members, has members
            of the wrong colour (sync or async) or lacks parameters; every problem is listed.
    """
    protocol = PORT_PROTOCOLS.get(port)
    if protocol is None:
        raise PortError(
            f"unknown port {port!r}; ports are {', '.join(PORT_PROTOCOLS)}",
            port=port,
            problems=["unknown port"],
        )
    problems = protocol_problems(protocol, adapter)
    if problems:
        raise PortError(
            f"{type(adapter).__name__} does not implement port {port!r}: " + "; ".join(problems),
            port=port,
            problems=problems,
        )
