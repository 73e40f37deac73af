"""Token generation with a KV cache, prompt log-probabilities, and frozen sampler snapshots."""

from __future__ import annotations

import copy
import secrets
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import torch
from torch import Tensor

from crucible_kitchen.adapters.local_torch._lora import merge_lora
from crucible_kitchen.adapters.local_torch._model import RowPositions

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crucible_kitchen.adapters.local_torch._model import KVCache, Transformer

StopReason = Literal["stop", "length"]

MIN_CACHE_POSITIONS: Final = 64
"""Fewest positions a :class:`DecodeBatch` with grouped attention allocates per slot."""


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """How to sample continuations of one prompt.

    Attributes:
        max_tokens: Most tokens to generate per sample; ``None`` fills the context window.
        temperature: Softmax temperature; 0 means greedy (argmax, ties to the lowest id).
        top_k: Keep only the ``top_k`` most likely tokens; -1 keeps all (0 too, here; the
            port's ``SamplingParams`` accepts only -1).
        top_p: Keep the smallest set of tokens whose probability reaches ``top_p``; 1 keeps all.
        stop_token_ids: Generation of a sample ends after it emits one of these (it is kept).
        num_samples: Independent samples drawn for the prompt.
        seed: Seed of this request's generator; ``None`` draws one from the OS. The same seed,
            prompt, options and weights give the same samples.
        include_prompt_logprobs: Also return the log-probability of each prompt token.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    num_samples: int = 1
    seed: int | None = None
    include_prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.max_tokens is not None and self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < -1:
            problems.append(f"top_k must be -1 (off) or >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be at least 1, got {self.num_samples}")
        if problems:
            raise ValueError("invalid SamplingOptions:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, kw_only=True)
class GeneratedSequence:
    """One sample: its tokens, their log-probabilities, and why it ended.

    ``logprobs[i]`` is ``log p(tokens[i] | prompt + tokens[:i])`` under the model itself
    (temperature 1, before top-k/top-p), so it equals what training computes for the same
    sequence; that is what importance-sampling losses need.
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    stop_reason: StopReason


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """The samples of one request and, when asked for, the prompt's log-probabilities."""

    sequences: tuple[GeneratedSequence, ...]
    prompt_logprobs: tuple[float | None, ...] | None


@contextmanager
def _evaluation_mode(model: Transformer) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _check_prompt(model: Transformer, prompt: Sequence[int]) -> Tensor:
    if not prompt:
        raise ValueError("the prompt must contain at least one token")
    vocab_size = model.config.vocab_size
    bad = [token for token in prompt if not 0 <= token < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    return torch.tensor([list(prompt)], dtype=torch.int64, device=model.device)


def prompt_logprobs_from_logits(logits: Tensor, prompt: Tensor) -> tuple[float | None, ...]:
    """``log p(prompt[i] | prompt[:i])`` from the model's ``logits`` of ``prompt`` (shape
    ``(1, length)``); ``None`` at position 0."""
    logprobs = torch.log_softmax(logits[0, :-1].to(torch.float32), dim=-1)
    scored = logprobs.gather(-1, prompt[0, 1:, None])[:, 0]
    return (None, *scored.tolist())


def prompt_logprobs(model: Transformer, prompt: Sequence[int]) -> tuple[float | None, ...]:
    """``log p(prompt[i] | prompt[:i])`` for each position; position 0 has none (``None``).

    Raises:
        ValueError: the prompt is empty, too long, or has ids outside the vocabulary.
    """
    tokens = _check_prompt(model, prompt)
    with _evaluation_mode(model):
        return prompt_logprobs_from_logits(model(tokens), tokens)


def _filter_logits(logits: Tensor, options: SamplingOptions) -> Tensor:
    """Temperature-scaled logits with tokens outside top-k / top-p set to -inf."""
    logits = logits / options.temperature
    if 0 < options.top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the tokens ranked above it already reach top_p; the first stays.
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= options.top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def _choose(
    logits: Tensor, options: SamplingOptions, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Pick one token per row; return the tokens and their raw model log-probabilities."""
    logits = logits.to(torch.float32)
    if options.temperature == 0:
        tokens = torch.argmax(logits, dim=-1)
    else:
        probs = torch.softmax(_filter_logits(logits, options), dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
    raw_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
    return tokens, raw_logprobs


def _room(model: Transformer, prompt: Sequence[int], options: SamplingOptions) -> int:
    """The number of tokens to generate: ``max_tokens``, or what fills the context window."""
    max_seq_len = model.config.max_seq_len
    room = max_seq_len - len(prompt)
    if room < 1:
        raise ValueError(f"a prompt of {len(prompt)} tokens fills max_seq_len={max_seq_len}")
    max_tokens = room if options.max_tokens is None else options.max_tokens
    if max_tokens > room:
        raise ValueError(
            f"a prompt of {len(prompt)} tokens plus max_tokens={max_tokens} exceeds "
            f"max_seq_len={max_seq_len}"
        )
    return max_tokens


class DecodeRequest:
    """One request's rows in a :class:`DecodeBatch`: its options, random stream and progress.

    Its samples depend only on its own prompt, options and seed (its own generator draws
    for its own rows), never on the requests decoded beside it.
    """

    def __init__(
        self,
        model: Transformer,
        prompt: Sequence[int],
        options: SamplingOptions,
        stop_when: Callable[[Sequence[int]], bool] | None,
    ) -> None:
        self.prompt = _check_prompt(model, prompt)
        self.max_tokens = _room(model, prompt, options)
        self.options = options
        self.stop_when = stop_when
        seed = secrets.randbits(63) if options.seed is None else options.seed
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.stop_ids = torch.tensor(options.stop_token_ids, dtype=torch.int64, device=model.device)
        rows = options.num_samples
        self.finished = torch.zeros(rows, dtype=torch.bool, device=model.device)
        self.generated: list[list[int]] = [[] for _ in range(rows)]
        self.stopped_at: list[int | None] = [None] * rows
        self.steps_tokens: list[Tensor] = []
        self.steps_logprobs: list[Tensor] = []
        self.next_logits: Tensor | None = None
        self.prompt_scores: tuple[float | None, ...] | None = None
        self.first_slot: int | None = None  # its rows hold slots first_slot .. + rows
        self.position = 0  # where its rows' next token goes
        self.result: GenerationResult | None = None
        self.error: Exception | None = None

    @property
    def rows(self) -> int:
        """Samples decoded for this request."""
        return self.options.num_samples

    @property
    def length(self) -> int:
        """Positions its rows fill once done at the latest (prompt plus ``max_tokens``)."""
        return self.prompt.shape[1] + self.max_tokens

    def advance(self) -> None:
        """Choose each row's next token from ``next_logits`` and mark the rows that stopped."""
        assert self.next_logits is not None
        step = len(self.steps_tokens)
        tokens, logprobs = _choose(self.next_logits, self.options, self.generator)
        self.steps_tokens.append(tokens)
        self.steps_logprobs.append(logprobs)
        newly_finished = torch.isin(tokens, self.stop_ids)
        if self.stop_when is not None:
            _check_stop_callback(
                self.stop_when,
                tokens,
                newly_finished,
                self.finished,
                self.generated,
                self.stopped_at,
                step,
            )
        self.finished |= newly_finished

    def finish(self, all_stopped: bool) -> bool:
        """Whether the request is done (every row stopped, or ``max_tokens`` reached); if so,
        its result is set."""
        if not all_stopped and len(self.steps_tokens) < self.max_tokens:
            return False
        all_tokens = torch.stack(self.steps_tokens, dim=1)
        all_logprobs = torch.stack(self.steps_logprobs, dim=1)
        self.result = GenerationResult(
            sequences=tuple(
                _trim(all_tokens[row], all_logprobs[row], self.stop_ids, self.stopped_at[row])
                for row in range(self.rows)
            ),
            prompt_logprobs=self.prompt_scores,
        )
        return True

    def outcome(self) -> GenerationResult:
        """The samples, or the error that ended the request."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class DecodeBatch:
    """Continuous batching: the rows of every running request decoded together, one token per
    row per step, over one key/value cache of a fixed number of slots.

    Requests :meth:`add`-ed from any thread wait in a queue; each step (:meth:`run_until`, in
    the thread that computes) first admits waiting requests in order while their rows fit in
    ``max_rows`` (a request with more rows is admitted alone, into an empty batch): it runs the
    prompt once and copies its keys and values into free cache slots, one per sample. Then each
    request picks its rows' tokens with its own generator, a finished request leaves (freeing
    its slots), and one forward pass feeds every slot its token at its own position.

    The cache always has ``max_rows`` slots (more only while a larger request runs alone), a
    request's rows take consecutive slots, and every step decodes all slots. So the step's
    matrix products have one shape whatever requests come and go, and a row's numbers do not
    depend on its neighbours: a request's samples and logprobs are the same, bit for bit,
    whichever requests it was batched with (a product of a fixed shape computes each row
    alike). Attention is row-local either way: with ``grouped_attention`` (the default on CPU,
    where memory traffic dominates) each request's rows attend over their own filled prefix;
    without (the default on GPUs: one kernel, static shapes) every row attends over the whole
    cache under a mask.

    ``capacity`` (default ``max_seq_len``) is the most positions a request may fill. With
    grouped attention, where the cache's length changes no number, the cache holds only what
    the running requests need: a power of two of at least :data:`MIN_CACHE_POSITIONS`
    positions, fitted to the first request admitted into an empty batch, and grown (the filled
    prefix copied) when a longer request joins. Under a mask the cache's length is part of
    the attention's shape, so it keeps ``capacity`` positions (zero-filled) for every request.

    ``use_kv_cache=False`` recomputes each request's whole sequence at every step, one request
    at a time (slow; a reference for tests).
    """

    def __init__(
        self,
        model: Transformer,
        *,
        max_rows: int,
        capacity: int | None = None,
        use_kv_cache: bool = True,
        grouped_attention: bool | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self.capacity = model.config.max_seq_len if capacity is None else capacity
        self.use_kv_cache = use_kv_cache
        self.grouped_attention = (
            model.device.type == "cpu" if grouped_attention is None else grouped_attention
        )
        self._lock = threading.Lock()
        self._waiting: deque[DecodeRequest] = deque()
        self._running: list[DecodeRequest] = []
        self._cache: KVCache | None = None
        self._positions = torch.zeros(0, dtype=torch.int64)  # per slot: filled positions
        self._active = torch.zeros(0, dtype=torch.int64)  # per slot: 1 while a row holds it
        self._tokens = torch.zeros((0, 1), dtype=torch.int64)  # per slot: the token to feed
        self._taken: list[bool] = []  # per slot: held by a running request
        self.steps = 0
        """Batched decode passes run so far (a statistic)."""

    def add(self, request: DecodeRequest) -> None:
        """Queue ``request``; it joins the batch at the next step.

        Raises:
            ValueError: the request needs more positions than the cache holds.
        """
        if request.length > self.capacity:
            raise ValueError(
                f"a request of {request.length} positions exceeds the cache's {self.capacity}"
            )
        with self._lock:
            self._waiting.append(request)

    @property
    def cache_positions(self) -> int:
        """Positions per slot of the cache now allocated (0 before the first request)."""
        return 0 if self._cache is None else self._cache.capacity

    @property
    def running_rows(self) -> int:
        """Rows of the running requests."""
        return sum(request.rows for request in self._running)

    def run_until(self, request: DecodeRequest) -> GenerationResult:
        """Step the batch until ``request`` is done; its samples (or its error).

        Call from one thread at a time. Other requests progress meanwhile, and those that
        finish keep their results for their own call.

        Raises:
            RuntimeError: ``request`` was never added.
        """
        if request.result is None and request.error is None:
            with _evaluation_mode(self.model):
                while request.result is None and request.error is None:
                    if not self.busy:
                        raise RuntimeError("run_until: the request was never added")
                    self.step()
        return request.outcome()

    @property
    def busy(self) -> bool:
        """Whether a request is running or waiting."""
        return bool(self._running or self._waiting)

    def step(self) -> None:
        """One step: admit waiting requests (one forward pass over each one's prompt), choose
        every running row's next token, let finished requests leave, and decode (one forward
        pass, if a request still runs). Call in eval mode without gradients, from one thread
        at a time; :meth:`run_until` does."""
        self._admit()
        for running in list(self._running):
            try:
                running.advance()
            except Exception as exc:
                running.error = exc
                self._leave(running)
        if self._running:
            # One device-to-host copy for every request's "all rows stopped".
            stopped = torch.stack([running.finished.all() for running in self._running]).tolist()
            for running, all_stopped in zip(list(self._running), stopped, strict=True):
                if running.finish(all_stopped):
                    self._leave(running)
        if self._running:
            try:
                self._forward()
            except Exception as exc:
                for running in list(self._running):
                    running.error = exc
                    self._leave(running)

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    return
                request = self._waiting[0]
                if self._running and self._free_run(request.rows) is None:
                    return
                self._waiting.popleft()
            try:
                self._prefill(request)
            except Exception as exc:
                request.error = exc
            else:
                self._running.append(request)

    def _prefill(self, request: DecodeRequest) -> None:
        model = self.model
        prompt = request.prompt
        cache = model.new_cache(1, capacity=prompt.shape[1]) if self.use_kv_cache else None
        logits = model(prompt, cache=cache)
        if request.options.include_prompt_logprobs:
            request.prompt_scores = prompt_logprobs_from_logits(logits, prompt)
        request.next_logits = logits[:, -1].expand(request.rows, -1)
        if cache is None:
            return
        positions = self._positions_for(request.length)
        if not self._running:
            self._allocate(max(self.max_rows, request.rows), positions)
        elif self.cache_positions < positions:
            self._grow(positions)
        assert self._cache is not None
        first = self._free_run(request.rows)
        assert first is not None
        end = first + request.rows
        length = prompt.shape[1]
        for layer, (keys, values) in enumerate(zip(cache.keys, cache.values, strict=True)):
            self._cache.keys[layer][first:end, :, :length] = keys
            self._cache.values[layer][first:end, :, :length] = values
        self._positions[first:end] = length
        self._active[first:end] = 1
        self._taken[first:end] = [True] * request.rows
        request.first_slot, request.position = first, length

    def _free_run(self, rows: int) -> int | None:
        """The first of ``rows`` consecutive free slots, if there are."""
        run = 0
        for slot, taken in enumerate(self._taken):
            run = 0 if taken else run + 1
            if run == rows:
                return slot - rows + 1
        return None

    def _positions_for(self, length: int) -> int:
        """Cache positions per slot for a request of ``length`` positions."""
        if not self.grouped_attention:
            return self.capacity
        return min(self.capacity, max(MIN_CACHE_POSITIONS, 1 << (length - 1).bit_length()))

    def _allocate(self, slots: int, positions: int) -> None:
        """A cache of ``slots`` rows of ``positions``, unless the current one (empty) is one."""
        shape = None if self._cache is None else (self._cache.batch_size, self._cache.capacity)
        if shape == (slots, positions):
            return
        self._cache = None  # freed before the new one is allocated
        device = self.model.device
        zeroed = not self.grouped_attention  # masked attention reads every position
        self._cache = self.model.new_cache(slots, capacity=positions, zeroed=zeroed)
        self._positions = torch.zeros(slots, dtype=torch.int64, device=device)
        self._active = torch.zeros(slots, dtype=torch.int64, device=device)
        self._tokens = torch.zeros((slots, 1), dtype=torch.int64, device=device)
        self._taken = [False] * slots

    def _grow(self, positions: int) -> None:
        """Replace the cache with one of ``positions`` per slot holding the filled prefix."""
        old = self._cache
        assert old is not None
        filled = max(running.position for running in self._running)
        grown = self.model.new_cache(old.batch_size, capacity=positions)
        for new, kept in zip(grown.keys + grown.values, old.keys + old.values, strict=True):
            new[:, :, :filled] = kept[:, :, :filled]
        self._cache = grown

    def _leave(self, request: DecodeRequest) -> None:
        self._running.remove(request)
        first = request.first_slot
        if first is not None:
            end = first + request.rows
            self._active[first:end] = 0
            self._taken[first:end] = [False] * request.rows
            request.first_slot = None
        request.next_logits = None

    def _forward(self) -> None:
        """Feed every slot its last token; set each running request's next logits."""
        if not self.use_kv_cache:
            for running in self._running:
                steps = (tokens[:, None] for tokens in running.steps_tokens)
                sequences = torch.cat((running.prompt.expand(running.rows, -1), *steps), dim=1)
                running.next_logits = self.model(sequences)[:, -1]
            return
        assert self._cache is not None
        groups = []
        for running in self._running:
            assert running.first_slot is not None
            first, end = running.first_slot, running.first_slot + running.rows
            self._tokens[first:end, 0] = running.steps_tokens[-1]
            groups.append((first, end, running.position))
        at = RowPositions(self._positions, tuple(groups) if self.grouped_attention else None)
        logits = self.model(self._tokens, cache=self._cache, positions=at)[:, -1]
        self.steps += 1
        # A free slot is decoded too, writing only at its own stale position, which stays.
        self._positions += self._active
        for running in self._running:
            assert running.first_slot is not None
            running.next_logits = logits[running.first_slot : running.first_slot + running.rows]
            running.position += 1


def generate(
    model: Transformer,
    prompt: Sequence[int],
    options: SamplingOptions,
    *,
    use_kv_cache: bool = True,
    stop_when: Callable[[Sequence[int]], bool] | None = None,
) -> GenerationResult:
    """Sample ``options.num_samples`` continuations of ``prompt`` as one batch.

    The prompt is run once and its key/value cache copied to every sample; each step then feeds
    one token per sample (a :class:`DecodeBatch` of this one request). With
    ``use_kv_cache=False`` every step re-runs the whole sequence instead (slow; a reference for
    tests). The model is put in eval mode for the call.

    ``stop_when``, if given, is called after each step with the tokens a still-running sample
    has generated so far; when it returns ``True`` the sample ends there (stop reason
    ``"stop"``), as if its last token were a stop token. Stop strings are built on it.

    Raises:
        ValueError: the prompt is empty, has ids outside the vocabulary, or leaves no room for
            ``max_tokens`` within ``max_seq_len``.
    """
    request = DecodeRequest(model, prompt, options, stop_when)
    batch = DecodeBatch(
        model, max_rows=request.rows, capacity=request.length, use_kv_cache=use_kv_cache
    )
    batch.add(request)
    return batch.run_until(request)


def _check_stop_callback(
    stop_when: Callable[[Sequence[int]], bool],
    tokens: Tensor,
    newly_finished: Tensor,
    finished: Tensor,
    generated: list[list[int]],
    stopped_at: list[int | None],
    step: int,
) -> None:
    """Ask ``stop_when`` about every still-running row; mark the rows it stops."""
    new_tokens = tokens.tolist()
    already = finished.tolist()
    for row, token in enumerate(new_tokens):
        if already[row]:
            continue
        generated[row].append(token)
        if stop_when(generated[row]):
            newly_finished[row] = True
            stopped_at[row] = step


def _trim(
    tokens: Tensor, logprobs: Tensor, stop_ids: Tensor, stopped_at: int | None = None
) -> GeneratedSequence:
    """Cut a row after its first stop token, or after step ``stopped_at`` (the row may run on
    while others generate)."""
    stops = torch.isin(tokens, stop_ids).nonzero()
    ends = [int(stops[0, 0]) + 1] if len(stops) else []
    if stopped_at is not None:
        ends.append(stopped_at + 1)
    if ends:
        end = min(ends)
        return GeneratedSequence(
            tokens=tuple(tokens[:end].tolist()),
            logprobs=tuple(logprobs[:end].tolist()),
            stop_reason="stop",
        )
    return GeneratedSequence(
        tokens=tuple(tokens.tolist()), logprobs=tuple(logprobs.tolist()), stop_reason="length"
    )


def snapshot_for_sampling(model: Transformer) -> Transformer:
    """A frozen copy of ``model`` for sampling: later training of ``model`` does not affect it.

    The copy owns its tensors, has LoRA adapters merged into its weights, needs no gradients
    and is in eval mode.
    """
    return frozen_for_sampling(copy.deepcopy(model))


def frozen_for_sampling(model: Transformer) -> Transformer:
    """``model`` itself made ready for sampling: LoRA adapters merged into its weights, no
    gradients, eval mode."""
    merge_lora(model)
    model.requires_grad_(False)
    return model.eval()
