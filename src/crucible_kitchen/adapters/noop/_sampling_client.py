"""A sampling client with no model: seeded, instant completions over printable bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.noop._determinism import (
    digest_key,
    initial_weights_digest,
    mix,
    text_key,
    token_logprob,
    unit,
)
from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.adapters.noop._tokenizer import NoopTokenizer
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import TOPK_PROMPT_LOGPROBS, SampledSequence, SampleResponse

if TYPE_CHECKING:
    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters, NoopFuture
    from crucible_kitchen.ports import (
        Capabilities,
        ModelInput,
        SamplingParams,
        StopReason,
        TopKLogprobs,
    )

__all__ = ("NoopSamplingClient",)

_PORT: Final = "sampling_client"
_PRINTABLE: Final = range(0x20 + 4, 0x7F + 4)  # tokens of printable ASCII bytes


class NoopSamplingClient:
    """Implements :class:`~crucible_kitchen.ports.SamplingClient` without a model.

    Completions are printable ASCII tokens drawn from the seed, the prompt, the sample index
    and the request (``sampling_params.seed``, else ``request_id``, else the call number).
    Temperature 0 gives the same completion for every sample and request. A completion
    that stops early ends with the stop sequence. Logprobs are those of
    :class:`NoopTrainingClient` at the same seed, step and weights, so importance ratios of
    on-policy samples are exactly 1.

    Args:
        seed: determines every number the client produces.
        step: the training step of the weights sampled from.
        weights_digest: the weights sampled from; by default the fresh model's.
        faults: faults to inject into this client's calls.
        default_max_tokens: completion length when ``max_tokens`` is ``None``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        step: int = 0,
        weights_digest: str | None = None,
        faults: FaultPlan | None = None,
        default_max_tokens: int = 16,
    ) -> None:
        self._seed = seed
        self._step = step
        self._weights_key = digest_key(weights_digest or initial_weights_digest(seed))
        self._default_max_tokens = default_max_tokens
        self._ledger = RequestLedger(_PORT, faults)
        self._tokenizer = NoopTokenizer()

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> NoopFuture[SampleResponse]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.sample`."""
        tokens = self._prompt_tokens("sample", prompt)
        if num_samples < 1:
            raise self._invalid("sample", f"num_samples {num_samples} must be >= 1")
        fingerprint = b""
        if request_id is not None:
            payload = (prompt, num_samples, sampling_params, include_prompt_logprobs)
            fingerprint = self._ledger.fingerprint("sample", payload)

        def effect() -> SampleResponse:
            if sampling_params.seed is not None:
                draw = sampling_params.seed
            elif request_id is not None:
                draw = text_key(request_id)
            else:
                draw = self.counters.calls["sample"]
            sequences = tuple(
                self._complete(tokens, sampling_params, draw, index) for index in range(num_samples)
            )
            prompt_logprobs = self._score(tokens) if include_prompt_logprobs else None
            return SampleResponse(sequences=sequences, prompt_logprobs=prompt_logprobs)

        return await self._ledger.submit(
            "sample", effect, request_id=request_id, fingerprint=fingerprint
        )

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> NoopFuture[tuple[float | None, ...]]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.compute_logprobs`."""
        tokens = self._prompt_tokens("compute_logprobs", prompt)
        fingerprint = b""
        if request_id is not None:
            fingerprint = self._ledger.fingerprint("compute_logprobs", prompt)
        return await self._ledger.submit(
            "compute_logprobs",
            lambda: self._score(tokens),
            request_id=request_id,
            fingerprint=fingerprint,
        )

    def get_tokenizer(self) -> NoopTokenizer:
        """See :meth:`crucible_kitchen.ports.SamplingClient.get_tokenizer`."""
        return self._tokenizer

    @property
    def capabilities(self) -> Capabilities:
        """:data:`~crucible_kitchen.ports.TOPK_PROMPT_LOGPROBS`."""
        return {TOPK_PROMPT_LOGPROBS: lambda: self.topk_prompt_logprobs}

    async def topk_prompt_logprobs(
        self, prompt: ModelInput, k: int, *, request_id: str | None = None
    ) -> NoopFuture[TopKLogprobs]:
        """The ``k`` tokens of the vocabulary with the highest noop logprob at each position
        of ``prompt`` (see :data:`~crucible_kitchen.ports.TOPK_PROMPT_LOGPROBS`).

        Raises:
            InvalidRequest: ``k`` < 1, or an empty prompt.
        """
        operation = "topk_prompt_logprobs"
        tokens = self._prompt_tokens(operation, prompt)
        if type(k) is not int or k < 1:
            raise self._invalid(operation, f"k {k!r} must be an int >= 1")
        fingerprint = b""
        if request_id is not None:
            fingerprint = self._ledger.fingerprint(operation, (prompt, k))

        def effect() -> TopKLogprobs:
            vocab = range(self._tokenizer.vocab_size)
            ranked = (
                sorted(((t, self._logprob(position - 1, t)) for t in vocab), key=lambda x: -x[1])
                for position in range(1, len(tokens))
            )
            return (None, *(tuple(top[:k]) for top in ranked))

        return await self._ledger.submit(
            operation, effect, request_id=request_id, fingerprint=fingerprint
        )

    def _logprob(self, position: int, token: int) -> float:
        return token_logprob(self._seed, self._weights_key, self._step, position, token)

    def _score(self, tokens: list[int]) -> tuple[float | None, ...]:
        scored = (
            self._logprob(position - 1, tokens[position]) for position in range(1, len(tokens))
        )
        return (None, *scored)

    def _complete(
        self, prompt: list[int], params: SamplingParams, draw: int, index: int
    ) -> SampledSequence:
        max_tokens = params.max_tokens or self._default_max_tokens
        key = mix(self._seed, text_key(str(prompt)))
        if params.temperature > 0:
            key = mix(key, draw, index)
        tokens = [_PRINTABLE[mix(key, t) % len(_PRINTABLE)] for t in range(max_tokens)]
        stop = self._stop_tokens(params)
        reason: StopReason = "length"
        if stop and len(stop) <= max_tokens and unit(key, -1) < 0.5:
            body = mix(key, -2) % (max_tokens - len(stop) + 1)
            tokens = tokens[:body] + stop
            reason = "stop"
        start = len(prompt) - 1
        logprobs = tuple(self._logprob(start + t, token) for t, token in enumerate(tokens))
        return SampledSequence(tokens=tuple(tokens), logprobs=logprobs, stop_reason=reason)

    def _stop_tokens(self, params: SamplingParams) -> list[int]:
        if params.stop is None:
            return [self._tokenizer.eos_token_id]
        if not params.stop:
            return []
        first = params.stop[0]
        if isinstance(first, str):
            return self._tokenizer.encode(first, add_special_tokens=False)
        return [first]

    def _prompt_tokens(self, operation: str, prompt: ModelInput) -> list[int]:
        try:
            tokens = prompt.to_ints()
        except ValueError as exc:
            raise self._invalid(operation, str(exc)) from exc
        if not tokens:
            raise self._invalid(operation, "the prompt is empty")
        return tokens

    def _invalid(self, operation: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{operation}: {message}", port=_PORT, operation=operation)
