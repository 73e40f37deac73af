"""The local torch backend served over the Tinker wire protocol (``kitchen serve --tinker``).

The official ``tinker`` SDK (and tinker-cookbook's unmodified loops) then train and sample
on this machine::

    kitchen serve --tinker --port 8000 --api-key tml-local

    import tinker
    service = tinker.ServiceClient(base_url="http://127.0.0.1:8000", api_key="tml-local")
    training = service.create_lora_training_client(base_model="tiny", rank=8).result()

Each training client is its own :class:`LocalTorchTrainingClient` (LoRA over a local torch
preset, the base weights seeded by ``base_seed``), with its own bounded request queue
started strictly in ``seq_id`` order. Futures are long-polled. Checkpoints are directories
under ``root`` addressed as ``tinker://<session>:train:<n>/{weights,sampler_weights}/<name>``.
:class:`TinkerSettings` lists the knobs; ``docs/guides/tinker.md`` what is supported.

aiohttp runs on asyncio only. Needs the ``tinker`` extra (the SDK ships the protobuf
schema) besides ``service`` and ``torch``.
"""

from __future__ import annotations

from ._app import TINKER_SERVER_KEY as TINKER_SERVER_KEY
from ._app import create_tinker_app as create_tinker_app
from ._serve import serve_tinker as serve_tinker
from ._server import TinkerServer as TinkerServer
from ._settings import TinkerSettings as TinkerSettings

__all__ = (
    "TINKER_SERVER_KEY",
    "TinkerServer",
    "TinkerSettings",
    "create_tinker_app",
    "serve_tinker",
)
