"""Tinker backend: the ports over the official ``tinker`` SDK (the ``tinker`` extra).

Works against Thinking Machines' service or any server that speaks the Tinker API, such
as ``kitchen serve --tinker`` on your own machine. Importing this package is light: it
never imports the SDK; the public names below are loaded on first use.

- :class:`TinkerTrainingClient` (port ``training_client``) and
  :class:`TinkerSamplingClient` (``sampling_client``);
- :class:`TinkerSession`: one server connection (base URL and API key, by default the
  SDK's ``TINKER_BASE_URL`` and ``TINKER_API_KEY``), shared by the clients;
- :class:`HfTokenizer`: a ``transformers`` tokenizer (the SDK's) as the ``tokenizer`` port;
- :func:`tinker_adapters`: both clients, keyed by port name.

SDK errors are translated at this edge: lost connections, timeouts, 409, 429 and 5xx into
:class:`~crucible_kitchen.errors.TransientBackendError`; 400, 422 and requests failed for
the user's fault into :class:`~crucible_kitchen.errors.InvalidRequest`; 404 into
:class:`~crucible_kitchen.errors.ResourceNotFound`; the rest into
:class:`~crucible_kitchen.errors.PermanentBackendError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen._lazy import lazy_exports

if TYPE_CHECKING:
    from crucible_kitchen.adapters.tinker._bundle import tinker_adapters as tinker_adapters
    from crucible_kitchen.adapters.tinker._sampling_client import (
        TinkerSamplingClient as TinkerSamplingClient,
    )
    from crucible_kitchen.adapters.tinker._session import TinkerSession as TinkerSession
    from crucible_kitchen.adapters.tinker._tokenizer import HfTokenizer as HfTokenizer
    from crucible_kitchen.adapters.tinker._training_client import (
        TinkerTrainingClient as TinkerTrainingClient,
    )

__all__ = (
    "HfTokenizer",
    "TinkerSamplingClient",
    "TinkerSession",
    "TinkerTrainingClient",
    "tinker_adapters",
)

_LAZY: Final = {
    "HfTokenizer": "_tokenizer",
    "TinkerSamplingClient": "_sampling_client",
    "TinkerSession": "_session",
    "TinkerTrainingClient": "_training_client",
    "tinker_adapters": "_bundle",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
