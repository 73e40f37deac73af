"""configure_tracing's sampler: the SDK's default decisions, and OTEL_TRACES_SAMPLER respected."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from crucible_kitchen.telemetry import configure_tracing
from crucible_kitchen.telemetry._sampler import ParentBasedAlwaysOn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
STATE = TraceState([("vendor", "value")])


def parent(*, remote: bool, sampled: bool) -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    context = SpanContext(TRACE_ID, SPAN_ID, is_remote=remote, trace_flags=flags, trace_state=STATE)
    return trace.set_span_in_context(NonRecordingSpan(context), Context())


PARENTS = {
    "no parent": None,
    "an empty context": Context(),
    "a remote sampled parent": parent(remote=True, sampled=True),
    "a remote parent not sampled": parent(remote=True, sampled=False),
    "a local sampled parent": parent(remote=False, sampled=True),
    "a local parent not sampled": parent(remote=False, sampled=False),
}


@pytest.mark.parametrize("context", PARENTS.values(), ids=PARENTS.keys())
def test_decisions_match_the_sdk_default_sampler(context: Context | None) -> None:
    attributes: dict[str, AttributeValue] = {
        "crucible_kitchen.stage": "train",
        "crucible_kitchen.attempt": 2,
    }
    ours = ParentBasedAlwaysOn().should_sample(context, TRACE_ID, "stage", attributes=attributes)
    sdk = ParentBased(ALWAYS_ON).should_sample(context, TRACE_ID, "stage", attributes=attributes)
    assert ours.decision is sdk.decision
    assert dict(ours.attributes) == dict(sdk.attributes)
    assert ours.trace_state == sdk.trace_state


def test_a_dropped_span_keeps_no_attributes() -> None:
    result = ParentBasedAlwaysOn().should_sample(
        PARENTS["a remote parent not sampled"], TRACE_ID, "stage", attributes={"a": 1}
    )
    assert result.decision is Decision.DROP
    assert dict(result.attributes) == {}
    assert result.trace_state == STATE


@pytest.fixture
def made() -> Iterator[list[TracerProvider]]:
    providers: list[TracerProvider] = []
    yield providers
    for provider in providers:
        provider.shutdown()


def test_configure_tracing_uses_it_unless_the_environment_names_a_sampler(
    monkeypatch: pytest.MonkeyPatch, made: list[TracerProvider]
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = configure_tracing("memory")
    assert provider is not None
    made.append(provider)
    assert isinstance(provider.sampler, ParentBasedAlwaysOn)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "ParentBased_Always_On")
    provider = configure_tracing("memory")
    assert provider is not None
    made.append(provider)
    assert isinstance(provider.sampler, ParentBasedAlwaysOn)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing("memory")
    assert provider is not None
    made.append(provider)
    assert provider.sampler is ALWAYS_OFF
    tracer = provider.get_tracer("test")
    assert not tracer.start_span("dropped").is_recording()
