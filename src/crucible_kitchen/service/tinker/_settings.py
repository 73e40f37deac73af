"""The Tinker-compatible server's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from crucible_kitchen._files import is_hf_model_dir
from crucible_kitchen.errors import ConfigError

if TYPE_CHECKING:
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
    - ``models``: more ``base_model`` names, each a local Hugging Face model directory
      (``config.json``, safetensors weights and its tokenizer files) loaded by local torch,
      with LoRA over it, sampled with its own tokenizer (and EOS). ``get_info`` gives the
      directory's absolute path as the tokenizer id, so the SDK's
      ``TrainingClient.get_tokenizer()`` loads it from disk; name a model by its directory
      path for ``SamplingClient.get_tokenizer()`` and tinker-cookbook's ``get_tokenizer`` too.
    - ``base_seed``: seeds every base model's weights, so all runs of one base model start
      from the same weights (the LoRA seed of a request seeds only the adapters).
    - ``device``, ``tokenizer``, ``threads``, ``default_max_tokens``: as for
      ``local_torch_adapters``.
    - ``max_queue``: requests one model (or sampler) may hold accepted and unfinished; past
      it a submission gets HTTP 429 (the SDK backs off and re-sends).
    - ``poll_s``: how long ``retrieve_future`` holds a poll open before ``try_again`` (the
      SDK's own timeout is 45 s).
    - ``future_ttl_s``, ``max_finished_futures``: a finished request's outcome is kept for
      ``retrieve_future`` this long (seconds), retrieved or not, and at most this many are
      kept (the oldest go first); a poll for a dropped one gets 404.
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
    models: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)
    base_seed: int = 0
    device: str = "cpu"
    tokenizer: Literal["byte", "bpe"] = "byte"
    threads: int | Literal["auto"] = "auto"
    default_max_tokens: int = 128
    max_queue: int = 64
    poll_s: float = 25.0
    future_ttl_s: float = 3600.0
    max_finished_futures: int = 65536
    max_chunk_datums: int = 1024
    max_body_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        keys = {"api_key": self.api_key} if isinstance(self.api_key, str) else self.api_key
        problems += [
            f"{name}: a key must not be empty" for name, k in (keys or {}).items() if not k
        ]
        if not self.base_models and not self.models:
            problems.append("base_models: name at least one")
        for name, directory in self.models.items():
            if not name or name in self.base_models:
                problems.append(f"models: {name!r} must be a new, non-empty base_model name")
            if not is_hf_model_dir(directory):
                problems.append(
                    f"models.{name}: {os.fspath(directory)!r} is not a Hugging Face model "
                    "directory (no config.json)"
                )
        for name in (
            "default_max_tokens",
            "max_queue",
            "max_chunk_datums",
            "max_body_bytes",
            "max_finished_futures",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.poll_s < 45:
            problems.append(f"poll_s: must be in (0, 45) seconds (the SDK's), got {self.poll_s}")
        if not self.future_ttl_s > 0:
            problems.append(f"future_ttl_s: must be more than 0, got {self.future_ttl_s}")
        if not self.shutdown_grace_s > 0:
            problems.append(f"shutdown_grace_s: must be more than 0, got {self.shutdown_grace_s}")
        if self.tokenizer not in ("byte", "bpe"):
            problems.append(f"tokenizer: 'byte' or 'bpe', got {self.tokenizer!r}")
        if problems:
            raise ConfigError(problems, source="tinker server settings")

    @property
    def served_models(self) -> tuple[str, ...]:
        """Every ``base_model`` name served: the presets, then the model directories."""
        return (*self.base_models, *self.models)

    def model_directory(self, base_model: str) -> Path | None:
        """The absolute directory of a ``models`` entry; ``None`` for a preset."""
        directory = self.models.get(base_model)
        return None if directory is None else Path(directory).absolute()
