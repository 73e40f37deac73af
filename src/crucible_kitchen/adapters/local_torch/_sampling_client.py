"""The SamplingClient port over a frozen torch model: KV-cache generation and logprobs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.local_torch._checkpoint import (
    MANIFEST_FILE,
    checkpoint_model,
    read_manifest,
)
from crucible_kitchen.adapters.local_torch._hf_checkpoint import (
    is_hf_model_dir,
    load_hf_weights,
    read_hf_model,
)
from crucible_kitchen.adapters.local_torch._lora import merge_lora
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.adapters.local_torch._requests import RequestQueue
from crucible_kitchen.adapters.local_torch._sampling import (
    DecodeBatch,
    DecodeRequest,
    GeneratedSequence,
    GenerationResult,
    SamplingOptions,
    prompt_logprobs,
)
from crucible_kitchen.adapters.local_torch._threads import resolve_threads
from crucible_kitchen.adapters.local_torch._translate import translated
from crucible_kitchen.errors import CheckpointMismatch, ConfigError, InvalidRequest
from crucible_kitchen.ports import (
    TOPK_PROMPT_LOGPROBS,
    SampledSequence,
    SampleResponse,
    request_fingerprint,
)
from crucible_kitchen.training import derive_seed

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence

    from crucible_kitchen.adapters.local_torch._model import Transformer
    from crucible_kitchen.adapters.local_torch._requests import CallCounters, LocalFuture
    from crucible_kitchen.adapters.local_torch._threads import Threads
    from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer
    from crucible_kitchen.ports import Capabilities, ModelInput, SamplingParams, TopKLogprobs

__all__ = ("LocalTorchSamplingClient", "SampleRequests", "sample_response")

_PORT: Final = "sampling_client"
_SEED_MASK: Final = (1 << 63) - 1
DEFAULT_MAX_BATCH: Final = 32
"""Most samples a sampling client decodes together, by default. Every decode step computes
this many rows (see ``DecodeBatch``), so it is also the cost of a step with fewer."""


class LocalTorchSamplingClient:
    """Implements :class:`~crucible_kitchen.ports.SamplingClient` over a frozen torch model.

    All samples of one request are generated as one batch over a shared key/value cache of
    the prompt. A sequence's ``logprobs`` are the model's own (temperature 1, before top-k
    and top-p), as the training client computes them, so on-policy importance ratios are 1.

    Stops: ``stop=None`` ends a sample at the tokenizer's EOS token; ``()`` never ends one
    early; token ids end it at any of them; strings end it at the first token after which
    the decoded completion contains one of them (decode and cut). EOS still ends a sample
    when a non-empty ``stop`` is given. The stop token, or the tokens that spell the stop
    string, stay in the sequence.

    Randomness: ``sampling_params.seed`` fixes the samples; without it the seed is derived
    from this client's ``seed`` and the ``request_id`` (else the call number), so a run
    replays exactly.

    Requests start as soon as they are submitted, in submission order, in the worker thread
    of the model's device (see ``_requests``). Concurrent ``sample`` requests are decoded
    together (continuous batching, see ``DecodeBatch``): a request joins the running batch at
    the next decode step while its samples fit in ``max_batch`` rows, and leaves it when its
    samples are done; its future resolves then. A request's samples depend only on its own
    prompt, parameters and seed, not on the requests decoded beside it (up to float rounding
    of the batched matrix products). Build one with
    :meth:`LocalTorchTrainingClient.create_sampling_client`, :meth:`from_checkpoint`, or from
    a model that nothing else will change (e.g. ``snapshot_for_sampling(model)``).

    Args:
        model: the weights to sample from; it is put in eval mode and never changed.
        tokenizer: the model's tokenizer.
        seed: seeds unseeded requests.
        default_max_tokens: completion length when ``max_tokens`` is ``None`` (capped by the
            room left in the context window).
        threads: torch's intra-op thread count for this client's requests, or ``"auto"``
            (see ``LocalTorchTrainingClient``).
        max_batch: most samples decoded together; ``1`` decodes one request at a time (a
            request with more samples than this runs alone).
        lane: compute in the device's worker thread of this name instead of its shared one
            (see ``RequestQueue``); the training client's data-parallel samplers use one.

    Raises:
        ConfigError: the tokenizer has more ids than the model, or ``threads`` or
            ``max_batch`` is invalid.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: LocalTokenizer,
        *,
        seed: int = 0,
        default_max_tokens: int = 128,
        threads: Threads = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        lane: str = "",
    ) -> None:
        problems = []
        if tokenizer.vocab_size > model.config.vocab_size:
            problems.append(
                f"the tokenizer has {tokenizer.vocab_size} ids, the model {model.config.vocab_size}"
            )
        if type(max_batch) is not int or max_batch < 1:
            problems.append(f"max_batch must be an int >= 1, got {max_batch!r}")
        if problems:
            raise ConfigError(problems, source="sampling client")
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._requests = SampleRequests(
            model, tokenizer, seed=seed, default_max_tokens=default_max_tokens
        )
        self._queue = RequestQueue(
            _PORT,
            device=str(model.device),
            threads=resolve_threads(threads, model.config),
            lane=lane,
        )
        self._batch = DecodeBatch(self._model, max_rows=max_batch)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        tokenizer: LocalTokenizer,
        *,
        device: str = "cpu",
        seed: int = 0,
        default_max_tokens: int = 128,
        threads: Threads = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> LocalTorchSamplingClient:
        """A frozen client over the weights of a checkpoint (rebuilt from its manifest's
        config), or of a Hugging Face model directory (float32 on CPU, the directory's dtype
        on CUDA).

        Reads the disk synchronously.

        Raises:
            CheckpointError: the checkpoint is missing, corrupt, or saved with another
                tokenizer; the model directory cannot be loaded (PretrainedModelError).
            ConfigError: the tokenizer has more ids than the model directory's model.
        """
        is_model_dir = is_hf_model_dir(path) and not (Path(path) / MANIFEST_FILE).is_file()
        load = _pretrained_weights if is_model_dir else _checkpoint_weights
        model = load(path, tokenizer, device)
        model.requires_grad_(False)
        return cls(
            model,
            tokenizer,
            seed=derive_seed(seed, f"sampler:{Path(path).name}"),
            default_max_tokens=default_max_tokens,
            threads=threads,
            max_batch=max_batch,
        )

    @property
    def max_batch(self) -> int:
        """Most samples decoded together."""
        return self._batch.max_rows

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, failed and deduplicated, per method."""
        return self._queue.counters

    @property
    def model(self) -> Transformer:
        """The frozen model sampled from."""
        return self._model

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> LocalFuture[SampleResponse]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.sample`.

        Raises:
            InvalidRequest: ``num_samples`` < 1; an empty prompt, or one with ids outside
                the vocabulary or too long to leave room for ``max_tokens``.
        """
        method = "sample"
        decode = self._requests.decode(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs=include_prompt_logprobs,
            request_id=request_id,
            call_number=self._queue.counters.calls[method],
        )
        digest = b""
        if request_id is not None:
            payload = (prompt, num_samples, sampling_params, include_prompt_logprobs)
            digest = request_fingerprint(_PORT, method, payload)

        def work() -> SampleResponse:
            with translated(_PORT, method, request_id, atomic=True):
                result = self._batch.run_until(decode)
            return sample_response(result)

        return self._queue.submit(
            method,
            work,
            request_id=request_id,
            fingerprint=digest,
            on_queued=lambda: self._batch.add(decode),
        )

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> LocalFuture[tuple[float | None, ...]]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.compute_logprobs`.

        Raises:
            InvalidRequest: an empty prompt, or one too long or with ids outside the vocabulary.
        """
        method = "compute_logprobs"
        tokens = self._requests.prompt_tokens(method, prompt, allow_full=True)
        digest = b"" if request_id is None else request_fingerprint(_PORT, method, prompt)

        def work() -> tuple[float | None, ...]:
            with translated(_PORT, method, request_id, atomic=True):
                return prompt_logprobs(self._model, tokens)

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)

    def get_tokenizer(self) -> LocalTokenizer:
        """See :meth:`crucible_kitchen.ports.SamplingClient.get_tokenizer`."""
        return self._tokenizer

    @property
    def capabilities(self) -> Capabilities:
        """:data:`~crucible_kitchen.ports.TOPK_PROMPT_LOGPROBS`."""
        return {TOPK_PROMPT_LOGPROBS: lambda: self.topk_prompt_logprobs}

    async def topk_prompt_logprobs(
        self, prompt: ModelInput, k: int, *, request_id: str | None = None
    ) -> LocalFuture[TopKLogprobs]:
        """The ``k`` most likely tokens of the tokenizer's vocabulary at each position of
        ``prompt``, with their logprobs (temperature 1), most likely first (see
        :data:`~crucible_kitchen.ports.TOPK_PROMPT_LOGPROBS`).

        Raises:
            InvalidRequest: ``k`` < 1; an empty prompt, or one too long or with ids outside
                the vocabulary.
        """
        method = "topk_prompt_logprobs"
        tokens = self._requests.prompt_tokens(method, prompt, allow_full=True)
        if type(k) is not int or k < 1:
            raise self._requests.invalid(method, f"k {k!r} must be an int >= 1")
        digest = b"" if request_id is None else request_fingerprint(_PORT, method, (prompt, k))
        width = min(k, self._tokenizer.vocab_size)

        def work() -> TopKLogprobs:
            with translated(_PORT, method, request_id, atomic=True):
                return topk_logprobs(self._model, tokens, width, self._tokenizer.vocab_size)

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)


class SampleRequests:
    """Checks requests against a model's config and a tokenizer, and makes a sample request
    into a :class:`DecodeRequest`: its stops and its seed (``sampling_params.seed``, else one
    derived from ``seed`` and the ``request_id``, else the call number). Shared by the
    samplers that decode in different ways."""

    def __init__(
        self, model: Transformer, tokenizer: LocalTokenizer, *, seed: int, default_max_tokens: int
    ) -> None:
        self._model = model
        self._config = model.config
        self._tokenizer = tokenizer
        self._seed = seed
        self._default_max_tokens = default_max_tokens

    def decode(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool,
        request_id: str | None,
        call_number: int,
    ) -> DecodeRequest:
        """The decode request of one ``sample`` call.

        Raises:
            InvalidRequest: ``num_samples`` < 1; an empty prompt, or one with ids outside
                the vocabulary or too long to leave room for ``max_tokens``.
        """
        method = "sample"
        tokens = self.prompt_tokens(method, prompt)
        if type(num_samples) is not int or num_samples < 1:
            raise self.invalid(method, f"num_samples {num_samples!r} must be an int >= 1")
        room = self._config.max_seq_len - len(tokens)
        max_tokens = sampling_params.max_tokens
        if max_tokens is None:
            max_tokens = min(self._default_max_tokens, room)
        if max_tokens > room:
            raise self.invalid(
                method,
                f"a prompt of {len(tokens)} tokens plus max_tokens={max_tokens} exceeds "
                f"max_seq_len={self._config.max_seq_len}",
            )
        stop_ids, stop_strings = self._stops(sampling_params)
        if sampling_params.seed is not None:
            seed = sampling_params.seed & _SEED_MASK
        else:
            stream = f"request:{request_id}" if request_id is not None else f"call:{call_number}"
            seed = derive_seed(self._seed, stream)
        options = SamplingOptions(
            max_tokens=max_tokens,
            temperature=sampling_params.temperature,
            top_k=sampling_params.top_k,
            top_p=sampling_params.top_p,
            stop_token_ids=stop_ids,
            num_samples=num_samples,
            seed=seed,
            include_prompt_logprobs=include_prompt_logprobs,
        )
        stop_when = self._stop_checker(stop_strings) if stop_strings else None
        return DecodeRequest(self._model, tokens, options, stop_when)

    def invalid(self, operation: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{operation}: {message}", port=_PORT, operation=operation)

    def prompt_tokens(
        self, operation: str, prompt: ModelInput, *, allow_full: bool = False
    ) -> list[int]:
        try:
            tokens = prompt.to_ints()
        except (ValueError, AttributeError) as exc:
            raise self.invalid(operation, f"prompt: {exc}") from exc
        if not tokens:
            raise self.invalid(operation, "the prompt is empty")
        vocab = self._config.vocab_size
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise self.invalid(operation, f"prompt token ids must be in [0, {vocab})")
        limit = self._config.max_seq_len - (0 if allow_full else 1)
        if len(tokens) > limit:
            raise self.invalid(
                operation, f"the prompt has {len(tokens)} tokens; at most {limit} fit"
            )
        return tokens

    def _stops(self, params: SamplingParams) -> tuple[tuple[int, ...], tuple[str, ...]]:
        eos = self._tokenizer.eos_token_id
        eos_ids = () if eos is None else (eos,)
        if params.stop is None:
            return eos_ids, ()
        if not params.stop:
            return (), ()
        ids = tuple(item for item in params.stop if isinstance(item, int))
        strings = tuple(item for item in params.stop if isinstance(item, str) and item)
        return (*eos_ids, *ids), strings

    def _stop_checker(self, stops: tuple[str, ...]) -> Callable[[Sequence[int]], bool]:
        """Whether a completion's text contains a stop string, looking only at its tail."""
        # Every token is at least one byte, so the tokens spelling a stop string of b bytes,
        # plus the token that may end past it, are among the last b + 1 tokens.
        window = max(len(stop.encode()) for stop in stops) + 2
        tokenizer = self._tokenizer
        vocab = tokenizer.vocab_size

        def stop_when(generated: Sequence[int]) -> bool:
            tail = [token for token in generated[-window:] if token < vocab]
            text = tokenizer.decode(tail)
            return any(stop in text for stop in stops)

        return stop_when


def topk_logprobs(model: Transformer, tokens: Sequence[int], k: int, vocab: int) -> TopKLogprobs:
    """Per position of ``tokens``, the ``k`` most likely of the first ``vocab`` ids after the
    tokens before it, with their logprobs over the model's whole vocabulary (as
    ``compute_logprobs`` scores them); ``None`` at position 0."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([list(tokens)], dtype=torch.int64, device=model.device))
    logprobs = torch.log_softmax(logits[0, :-1].to(torch.float32), dim=-1)[:, :vocab]
    values, ids = torch.topk(logprobs, k, dim=-1)
    return (
        None,
        *(
            tuple(zip(row_ids, row_values, strict=True))
            for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
        ),
    )


def sample_response(result: GenerationResult) -> SampleResponse:
    """The port's response for a finished decode."""
    return SampleResponse(
        sequences=tuple(_sequence(generated) for generated in result.sequences),
        prompt_logprobs=result.prompt_logprobs,
    )


def _sequence(generated: GeneratedSequence) -> SampledSequence:
    return SampledSequence(
        tokens=generated.tokens,
        logprobs=generated.logprobs,
        stop_reason=generated.stop_reason,
    )


def _checkpoint_weights(
    path: str | os.PathLike[str], tokenizer: LocalTokenizer, device: str
) -> Transformer:
    """The model of a checkpoint, its LoRA merged."""
    manifest = read_manifest(path)
    saved = (manifest.user_payload or {}).get("tokenizer_id")
    if saved is not None and saved != tokenizer.tokenizer_id:
        raise CheckpointMismatch(
            f"{path}: saved with tokenizer {saved}, not {tokenizer.tokenizer_id}",
            path=str(path),
            differences=[f"tokenizer_id: checkpoint {saved!r}, given {tokenizer.tokenizer_id!r}"],
        )
    try:
        model = checkpoint_model(path, device=device)
    except ValueError as exc:
        raise CheckpointMismatch(
            f"{path}: the manifest's config cannot be rebuilt: {exc}",
            path=str(path),
            differences=[f"config: {exc}"],
        ) from exc
    merge_lora(model)
    return model


def _pretrained_weights(
    path: str | os.PathLike[str], tokenizer: LocalTokenizer, device: str
) -> Transformer:
    """The model of a Hugging Face model directory."""
    pretrained = read_hf_model(path, device=device, config_dtype=True)
    if tokenizer.vocab_size > pretrained.config.vocab_size:
        raise ConfigError(
            [
                f"{path}: the tokenizer has {tokenizer.vocab_size} ids, the model only "
                f"{pretrained.config.vocab_size}"
            ],
            source="local torch teacher",
        )
    return build_model(pretrained.config, seed=0, weights=load_hf_weights(pretrained))
