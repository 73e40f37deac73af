"""Top-k prompt logprobs (``SampleRequest.topk_prompt_logprobs``), for top-K distillation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from crucible_kitchen.adapters.local_torch import LocalTorchSamplingClient

__all__ = ("UNSCORED_LOGPROB", "topk_prompt_logprobs")

UNSCORED_LOGPROB: Final = -99999.0
"""Tinker's filler for a position that has no top-k (token id 0 with this logprob)."""


def topk_prompt_logprobs(
    sampler: LocalTorchSamplingClient, prompt: Sequence[int], k: int, last_n: int | None
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The ``k`` likeliest tokens at each prompt position and their logprobs, both shaped
    ``(len(prompt), k)``, most likely first; position 0 (nothing predicts it) and, with
    ``last_n``, every position before the last ``last_n`` hold the filler.

    Reads the sampler's frozen model (eval mode, no gradients): safe beside its sampling.
    """
    model = sampler.model
    length = len(prompt)
    token_ids = np.zeros((length, k), dtype=np.int64)
    logprobs = np.full((length, k), UNSCORED_LOGPROB, dtype=np.float32)
    first = 1 if last_n is None else max(1, length - last_n)
    if first >= length:
        return token_ids, logprobs
    with torch.inference_mode():
        tokens = torch.tensor([list(prompt)], dtype=torch.long, device=model.device)
        scores = torch.log_softmax(model(tokens)[0, first - 1 : length - 1].float(), dim=-1)
        values, indices = torch.topk(scores, k, dim=-1)
    token_ids[first:] = indices.cpu().numpy()
    logprobs[first:] = values.cpu().numpy()
    return token_ids, logprobs
