"""The tinker adapters at once, keyed by port name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_kitchen.adapters.tinker._sampling_client import TinkerSamplingClient
from crucible_kitchen.adapters.tinker._session import TinkerSession
from crucible_kitchen.adapters.tinker._training_client import TinkerTrainingClient

if TYPE_CHECKING:
    import os

    from crucible_kitchen.ports import PortName, Tokenizer

__all__ = ("tinker_adapters",)


def tinker_adapters(
    *,
    base_model: str,
    tokenizer: Tokenizer,
    tokenizer_id: str | None = None,
    lora_rank: int = 32,
    seed: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> dict[PortName, object]:
    """Adapters for ``training_client`` and ``sampling_client`` over one Tinker session.

    The training client fine-tunes a LoRA of ``base_model``; the sampling client samples
    ``base_model`` itself (the weights before training). Nothing is sent until the first
    request. Combine with a ``tokenizer`` and ``renderer`` that match the server's model.

    Args:
        base_model: the server's model name (``ServiceClient.create_lora_training_client``).
        tokenizer: the tokenizer of that model, returned by both clients' ``get_tokenizer``.
        tokenizer_id: the id the server's model info must name (see
            :class:`TinkerTrainingClient`), if known.
        lora_rank: the LoRA rank.
        seed: seeds the LoRA weights on the server; ``None`` lets the server choose.
        base_url: the server; ``None`` reads ``TINKER_BASE_URL`` (the SDK's default).
        api_key: ``None`` reads ``TINKER_API_KEY`` (the SDK's default); must start ``tml-``.
        checkpoint_dir: where the training client records its checkpoints, so that a run
            can be resumed in a new process (see :class:`TinkerTrainingClient`).
    """
    session = TinkerSession(base_url=base_url, api_key=api_key)
    training_client = TinkerTrainingClient(
        session,
        base_model=base_model,
        lora_rank=lora_rank,
        seed=seed,
        tokenizer=tokenizer,
        tokenizer_id=tokenizer_id,
        checkpoint_dir=checkpoint_dir,
    )
    return {
        "training_client": training_client,
        "sampling_client": TinkerSamplingClient(
            session, tokenizer=tokenizer, base_model=base_model
        ),
    }
