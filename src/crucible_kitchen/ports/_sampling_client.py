"""The sampling client port: completions and logprobs from a fixed set of weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from crucible_kitchen.ports._future import BackendFuture
    from crucible_kitchen.ports._tokenizer import Tokenizer
    from crucible_kitchen.ports._types import ModelInput, SampleResponse, SamplingParams

__all__ = ("SamplingClient",)


class SamplingClient(Protocol):
    """Samples from one set of weights (Tinker: ``SamplingClient``).

    Sampling changes nothing, so ``request_id`` is optional: given one, a re-sent request
    returns the first request's future, and so the same samples.
    """

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> BackendFuture[SampleResponse]:
        """Draw ``num_samples`` completions of ``prompt``.

        Each sequence has at most ``sampling_params.max_tokens`` tokens, with their logprobs.
        With ``include_prompt_logprobs`` the response also scores the prompt.

        Raises:
            InvalidRequest: ``num_samples`` < 1, or an empty prompt.
        """
        ...

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> BackendFuture[tuple[float | None, ...]]:
        """Score ``prompt``: one logprob per position, ``None`` at position 0."""
        ...

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer of the sampled model. Needs no request."""
        ...
