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

The public API, and what is not:

- A public namespace is a package or module whose name has no leading underscore; its public
  names are exactly its ``__all__`` (pinned by ``tests/test_public_api.py``). The top level
  holds what most programs need; the rest live in the namespace of their layer (the actor
  runtime in ``crucible_kitchen.supervisors``, port protocols in ``crucible_kitchen.ports``,
  built-in stages in ``crucible_kitchen.stages.builtin``, ...).
- Implementation lives in private modules (``_name.py``), imported only by their own package.
- Engine plumbing that one package shares with the library's other packages (the run plan a
  Kitchen hands the workflow engine, contract checks, resume keys, span helpers, ...) is
  re-exported by the owning package's ``__init__`` as ``from ._x import name as name`` but
  left out of its ``__all__``: other packages import it from there, never from ``pkg._x``
  (``tests/test_layering.py`` checks this), and users should not rely on it.
  ``crucible_kitchen._files`` and ``crucible_kitchen._json`` are the root package's private
  helpers, shared by every package inside it.
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
from crucible_kitchen.workflows import Workflow as Workflow

__version__ = "0.1.0"

__all__ = (
    "Adapters",
    "Context",
    "Kitchen",
    "KitchenError",
    "Recipe",
    "RetryPolicy",
    "RunHandle",
    "RunResult",
    "Stage",
    "Workflow",
    "__version__",
)
