"""The sampling client port: completions and logprobs from a fixed set of weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

from crucible_kitchen.ports._capabilities import Capability

if TYPE_CHECKING:
    from crucible_kitchen.ports._future import BackendFuture
    from crucible_kitchen.ports._tokenizer import Tokenizer
    from crucible_kitchen.ports._types import ModelInput, SampleResponse, SamplingParams

__all__ = ("TOPK_PROMPT_LOGPROBS", "SamplingClient", "TopKLogprobs", "TopKPromptLogprobs")


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


# ------------------------------------------------------------------------------------------
# Optional capabilities (see ``crucible_kitchen.ports.capability``)

TopKLogprobs: TypeAlias = "tuple[tuple[tuple[int, float], ...] | None, ...]"
"""Per position of a prompt, its K most likely tokens as ``(token id, logprob)``, most likely
first; ``None`` at position 0, which nothing predicts."""


class TopKPromptLogprobs(Protocol):
    """The K most likely tokens at each position of ``prompt`` (Tinker's
    ``topk_prompt_logprobs``): position ``i`` holds the distribution of the token after
    ``prompt[:i]``. Changes nothing, so ``request_id`` is optional, as for ``sample``."""

    async def __call__(
        self, prompt: ModelInput, k: int, *, request_id: str | None = None
    ) -> BackendFuture[TopKLogprobs]: ...


TOPK_PROMPT_LOGPROBS: Final[Capability[TopKPromptLogprobs]] = Capability(
    "topk_prompt_logprobs",
    "A sampling client's top-K logprobs at each position of a prompt (top-K distillation).",
)
