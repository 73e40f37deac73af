"""The evaluator port for verifiable arithmetic problems: greedy (and sampled) replies, scored
exactly."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import msgspec

from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import EvalResult, Message, SamplingParams
from crucible_kitchen.training import arithmetic_reward

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports import DatasetRow, Renderer, SamplingClient

__all__ = ("ArithmeticEvaluator",)

_PORT: Final = "evaluator"


class ArithmeticEvaluator:
    """Implements :class:`~crucible_kitchen.ports.Evaluator` on rows with a ``question`` and
    an integer ``answer`` (the bundled ``arithmetic_rl``), as the RL environment scores them.

    Each question is rendered as a one-turn conversation and answered greedily
    (temperature 0, so an evaluation is deterministic). Metrics, means over the rows:
    ``correct`` (the reply's last integer is the answer), ``format`` (the reply ended with
    the renderer's stop sequence) and ``reward`` (``correct - format_coef * (1 - format)``,
    the environment's reward). With ``samples``, each question is also answered that many
    times at temperature 1 (seeded, so still deterministic), as RL rollouts sample:
    ``sampled_correct`` is the mean over all those replies, the held-out value of what RL
    maximises (greedy accuracy on a few dozen questions moves in steps of one question, and
    RL need not move it).

    Args:
        renderer: renders the questions and parses the replies.
        max_tokens: tokens per reply.
        format_coef: the reward's penalty for a reply that did not end properly.
        samples: sampled replies per question (0: greedy only).
    """

    def __init__(
        self,
        renderer: Renderer,
        *,
        max_tokens: int = 16,
        format_coef: float = 0.1,
        samples: int = 0,
    ) -> None:
        self._renderer = renderer
        self._max_tokens = max_tokens
        self._format_coef = format_coef
        self._samples = samples

    async def evaluate(self, model: SamplingClient, rows: Sequence[DatasetRow]) -> EvalResult:
        """See :meth:`crucible_kitchen.ports.Evaluator.evaluate`.

        Raises:
            InvalidRequest: a row lacks a string ``question`` or an integer ``answer``.
        """
        params = SamplingParams(
            max_tokens=self._max_tokens,
            temperature=0.0,
            stop=self._renderer.get_stop_sequences(),
            seed=0,
        )
        pending = []
        for index, row in enumerate(rows):
            question, answer = row.get("question"), row.get("answer")
            if not isinstance(question, str) or type(answer) is not int:
                raise InvalidRequest(
                    f"evaluate: row {index} needs a string 'question' and an integer "
                    f"'answer', got {sorted(row)}",
                    port=_PORT,
                    operation="evaluate",
                )
            prompt = self._renderer.build_generation_prompt(
                [Message(role="user", content=question)]
            )
            greedy = await model.sample(prompt, 1, params)
            sampled = None
            if self._samples:
                sampling = msgspec.structs.replace(params, temperature=1.0, seed=index)
                sampled = await model.sample(prompt, self._samples, sampling)
            pending.append((answer, greedy, sampled))
        correct, formatted, sampled_correct = [], [], []
        for answer, greedy, sampled in pending:
            reply, ended = self._renderer.parse_response(
                (await greedy.result()).sequences[0].tokens
            )
            correct.append(arithmetic_reward(reply.content, answer))
            formatted.append(1.0 if ended else 0.0)
            if sampled is not None:
                for sequence in (await sampled.result()).sequences:
                    reply, _ = self._renderer.parse_response(sequence.tokens)
                    sampled_correct.append(arithmetic_reward(reply.content, answer))
        count = len(correct)
        if not count:
            return EvalResult(metrics={}, num_samples=0)
        accuracy = math.fsum(correct) / count
        format_rate = math.fsum(formatted) / count
        metrics = {
            "correct": accuracy,
            "format": format_rate,
            "reward": accuracy - self._format_coef * (1.0 - format_rate),
        }
        if sampled_correct:
            metrics["sampled_correct"] = math.fsum(sampled_correct) / len(sampled_correct)
        return EvalResult(metrics=metrics, num_samples=count)
