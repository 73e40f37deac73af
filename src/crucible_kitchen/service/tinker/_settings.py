"""The Tinker-compatible server's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from crucible_kitchen.errors import ConfigError

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

__all__ = ("TinkerSettings",)


@dataclass(frozen=True, kw_only=True)
class TinkerSettings:
    """How ``kitchen serve --tinker`` behaves.

    - ``root``: checkpoints go to ``<root>/<session id>/train-<n>/{weights,sampler_weights}/``;
      ``None`` uses a new temporary directory.
    - ``api_key``: the key clients send as ``X-API-Key`` (the SDK's ``api_key`` or
      ``TINKER_API_KEY``; the SDK only sends keys starting with ``tml-``). One string, or
      ``{client name: key}``. Without a key only loopback peers are served, with any key.
    - ``base_models``: the ``base_model`` names a client may train or sample: local torch
      presets (``tiny``, ``small``, ...).
    - ``base_seed``: seeds every base model's weights, so all runs of one base model start
      from the same weights (the LoRA seed of a request seeds only the adapters).
    - ``device``, ``tokenizer``, ``threads``, ``default_max_tokens``: as for
      ``local_torch_adapters``.
    - ``max_queue``: requests one model (or sampler) may hold accepted and unfinished; past
      it a submission gets HTTP 429 (the SDK backs off and re-sends).
    - ``poll_s``: how long ``retrieve_future`` holds a poll open before ``try_again`` (the
      SDK's own timeout is 45 s).
    - ``max_chunk_datums``: the SDK splits a forward-backward call into requests of at most
      this many datums (sent concurrently, started in order).
    - ``max_body_bytes``: a larger request body is refused with 413.
    - ``shutdown_grace_s``: on shutdown, requests already running get this long to finish;
      the others fail at once.

    Raises:
        ConfigError: every invalid setting.
    """

    root: str | os.PathLike[str] | None = None
    api_key: str | Mapping[str, str] | None = None
    base_models: Sequence[str] = ("tiny", "small", "medium", "base", "large")
    base_seed: int = 0
    device: str = "cpu"
    tokenizer: Literal["byte", "bpe"] = "byte"
    threads: int | Literal["auto"] = "auto"
    default_max_tokens: int = 128
    max_queue: int = 64
    poll_s: float = 25.0
    max_chunk_datums: int = 1024
    max_body_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        keys = {"api_key": self.api_key} if isinstance(self.api_key, str) else self.api_key
        problems += [
            f"{name}: a key must not be empty" for name, k in (keys or {}).items() if not k
        ]
        if not self.base_models:
            problems.append("base_models: name at least one")
        for name in ("default_max_tokens", "max_queue", "max_chunk_datums", "max_body_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.poll_s < 45:
            problems.append(f"poll_s: must be in (0, 45) seconds (the SDK's), got {self.poll_s}")
        if not self.shutdown_grace_s > 0:
            problems.append(f"shutdown_grace_s: must be more than 0, got {self.shutdown_grace_s}")
        if self.tokenizer not in ("byte", "bpe"):
            problems.append(f"tokenizer: 'byte' or 'bpe', got {self.tokenizer!r}")
        if problems:
            raise ConfigError(problems, source="tinker server settings")
