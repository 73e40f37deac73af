"""Token generation with a KV cache, prompt log-probabilities, and frozen sampler snapshots."""

from __future__ import annotations

import copy
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from crucible_kitchen.adapters.local_torch._lora import merge_lora

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crucible_kitchen.adapters.local_torch._model import Transformer

StopReason = Literal["stop", "length"]


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


def _prompt_logprobs_from_logits(logits: Tensor, prompt: Tensor) -> tuple[float | None, ...]:
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
        return _prompt_logprobs_from_logits(model(tokens), tokens)


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
    one token per sample. With ``use_kv_cache=False`` every step re-runs the whole sequence
    instead (slow; a reference for tests). The model is put in eval mode for the call.

    ``stop_when``, if given, is called after each step with the tokens a still-running sample
    has generated so far; when it returns ``True`` the sample ends there (stop reason
    ``"stop"``), as if its last token were a stop token. Stop strings are built on it.

    Raises:
        ValueError: the prompt is empty, has ids outside the vocabulary, or leaves no room for
            ``max_tokens`` within ``max_seq_len``.
    """
    prompt_tensor = _check_prompt(model, prompt)
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
    seed = secrets.randbits(63) if options.seed is None else options.seed
    generator = torch.Generator(device=model.device).manual_seed(seed)
    stop_ids = torch.tensor(options.stop_token_ids, dtype=torch.int64, device=model.device)
    n = options.num_samples
    with _evaluation_mode(model):
        cache = model.new_cache(1, capacity=len(prompt) + max_tokens) if use_kv_cache else None
        prompt_logits = model(prompt_tensor, cache=cache)
        prompt_scores = None
        if options.include_prompt_logprobs:
            prompt_scores = _prompt_logprobs_from_logits(prompt_logits, prompt_tensor)
        next_logits = prompt_logits[:, -1].expand(n, -1)
        if cache is not None:
            cache = cache.repeat_batch(n)
        sequences = prompt_tensor.expand(n, -1)
        steps_tokens: list[Tensor] = []
        steps_logprobs: list[Tensor] = []
        finished = torch.zeros(n, dtype=torch.bool, device=model.device)
        generated: list[list[int]] = [[] for _ in range(n)]
        stopped_at: list[int | None] = [None] * n
        for step in range(max_tokens):
            tokens, logprobs = _choose(next_logits, options, generator)
            steps_tokens.append(tokens)
            steps_logprobs.append(logprobs)
            newly_finished = torch.isin(tokens, stop_ids)
            if stop_when is not None:
                _check_stop_callback(
                    stop_when, tokens, newly_finished, finished, generated, stopped_at, step
                )
            finished |= newly_finished
            if step == max_tokens - 1 or bool(finished.all()):
                break
            if cache is not None:
                next_logits = model(tokens[:, None], cache=cache)[:, -1]
            else:
                sequences = torch.cat((sequences, tokens[:, None]), dim=1)
                next_logits = model(sequences)[:, -1]
    all_tokens = torch.stack(steps_tokens, dim=1)
    all_logprobs = torch.stack(steps_logprobs, dim=1)
    return GenerationResult(
        sequences=tuple(
            _trim(all_tokens[row], all_logprobs[row], stop_ids, stopped_at[row]) for row in range(n)
        ),
        prompt_logprobs=prompt_scores,
    )


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
    snapshot = copy.deepcopy(model)
    merge_lora(snapshot)
    snapshot.requires_grad_(False)
    return snapshot.eval()
