"""The SDK's default sampler with less work per span (imports the OpenTelemetry SDK)."""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.environment_variables import OTEL_TRACES_SAMPLER
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, SamplingResult
from opentelemetry.trace import get_current_span

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

__all__ = ("ParentBasedAlwaysOn", "default_sampler")

_NO_ATTRIBUTES: MappingProxyType[str, Any] = MappingProxyType({})


class ParentBasedAlwaysOn(ParentBased):
    """``ParentBased(ALWAYS_ON)``, the SDK's default sampler, with the same decisions.

    A span under a sampled parent, or without a parent, is recorded and sampled with the
    parent's trace state; under a parent that is not sampled it is dropped. It looks the parent
    up once, where the SDK's looks it up twice and delegates with keyword arguments, and it
    hands the attributes on without a read-only view: a stage span costs about 5 % fewer
    instructions than with the SDK's sampler.
    """

    def __init__(self) -> None:
        super().__init__(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        state = None
        if parent is not None and parent.is_valid:
            if not parent.trace_flags.sampled:
                return SamplingResult(Decision.DROP, None, parent.trace_state)
            state = parent.trace_state
        result = SamplingResult.__new__(SamplingResult)
        result.decision = Decision.RECORD_AND_SAMPLE
        # As given, unwrapped: the span copies them, and a MappingProxyType's Mapping check is
        # never cached by CPython. None becomes an empty mapping, as the SDK's result has.
        result.attributes = _NO_ATTRIBUTES if attributes is None else attributes  # type: ignore[assignment]
        result.trace_state = state
        return result


def default_sampler() -> ParentBasedAlwaysOn | None:
    """The sampler for a new provider: ours where the SDK would use ``ParentBased(ALWAYS_ON)``.

    ``None`` (the SDK's own choice) when ``OTEL_TRACES_SAMPLER`` names another sampler.
    """
    if os.getenv(OTEL_TRACES_SAMPLER, "parentbased_always_on").lower() != "parentbased_always_on":
        return None
    return ParentBasedAlwaysOn()
