"""crucible-kitchen: ML post-training orchestration on an OTP-style async actor runtime.

Layering (enforced by ``tests/test_layering.py``), bottom to top:

- ``errors``: the exception tree; imports nothing from the package.
- ``supervisors``: the actor runtime; imports only ``errors``.
- ``ports`` and ``training``: port protocols and data types, pure math; never the runtime or
  adapters.
- ``adapters``: import ports, training and their own third-party library.
- ``stages`` import ports, never adapters; ``workflows`` import stages and supervisors.
- ``kitchen`` ties them together; ``service`` and ``cli`` sit on the public API.

torch, aiohttp, opentelemetry-sdk and trio are never imported by ``import crucible_kitchen``.
"""

from __future__ import annotations

from crucible_kitchen.errors import KitchenError as KitchenError
from crucible_kitchen.kitchen import Adapters as Adapters
from crucible_kitchen.kitchen import Kitchen as Kitchen
from crucible_kitchen.kitchen import RunHandle as RunHandle
from crucible_kitchen.kitchen import RunResult as RunResult
from crucible_kitchen.recipes import Recipe as Recipe
from crucible_kitchen.stages import Context as Context
from crucible_kitchen.stages import RetryPolicy as RetryPolicy
from crucible_kitchen.stages import Stage as Stage
from crucible_kitchen.supervisors import Actor as Actor
from crucible_kitchen.supervisors import ActorRef as ActorRef
from crucible_kitchen.supervisors import ChildSpec as ChildSpec
from crucible_kitchen.supervisors import ExitKind as ExitKind
from crucible_kitchen.supervisors import ExitReason as ExitReason
from crucible_kitchen.supervisors import Message as Message
from crucible_kitchen.supervisors import Supervisor as Supervisor
from crucible_kitchen.supervisors import open_supervisor as open_supervisor
from crucible_kitchen.workflows import Workflow as Workflow

__version__ = "0.1.0"

__all__ = (
    "Actor",
    "ActorRef",
    "Adapters",
    "ChildSpec",
    "Context",
    "ExitKind",
    "ExitReason",
    "Kitchen",
    "KitchenError",
    "Message",
    "Recipe",
    "RetryPolicy",
    "RunHandle",
    "RunResult",
    "Stage",
    "Supervisor",
    "Workflow",
    "__version__",
    "open_supervisor",
)
