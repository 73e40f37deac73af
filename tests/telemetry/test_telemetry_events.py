"""Telemetry event types: names, shape, JSON round trips through the union, light imports."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _strategies import for_type
from crucible_kitchen.errors import MessageDecodeError
from crucible_kitchen.telemetry import (
    BaseEvent,
    StageException,
    TelemetryEvent,
    TrainingStep,
    WorkflowStart,
    decode_event,
    encode_event,
    event_name,
)
from crucible_kitchen.telemetry._events import EVENT_TYPES

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def event_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of ``cls``; ``Any`` fields (a run's config) get arbitrary JSON values."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for field in msgspec.structs.fields(cls):
        hint = hints[field.name]
        fields[field.name] = (
            st.dictionaries(st.text(max_size=8), json_values, max_size=4)
            if hint == dict[str, Any]
            else for_type(hint)
        )
    return st.builds(cls, **fields)


REQUIRED_NAMES = {
    "crucible_kitchen.workflow.run.start",
    "crucible_kitchen.workflow.run.stop",
    "crucible_kitchen.workflow.run.exception",
    "crucible_kitchen.stage.run.start",
    "crucible_kitchen.stage.run.stop",
    "crucible_kitchen.stage.run.exception",
    "crucible_kitchen.training.step",
    "crucible_kitchen.training.epoch",
    "crucible_kitchen.training.checkpoint",
    "crucible_kitchen.eval.complete",
    "crucible_kitchen.model.registered",
    "crucible_kitchen.dpo.step",
    "crucible_kitchen.rl.rollout_complete",
    "crucible_kitchen.rl.advantages_computed",
    "crucible_kitchen.rl.step",
    "crucible_kitchen.distillation.step",
    "crucible_kitchen.feedback.triggers_checked",
    "crucible_kitchen.feedback.data_curated",
    "crucible_kitchen.feedback.data_exported",
    "crucible_kitchen.feedback.baseline_updated",
    "crucible_kitchen.supervisor.restart",
}


def test_every_event_has_a_distinct_dotted_name_and_the_required_ones_exist() -> None:
    names = [event_name(cls) for cls in EVENT_TYPES]
    assert len(set(names)) == len(names)
    assert all(name.startswith("crucible_kitchen.") for name in names)
    assert set(names) >= REQUIRED_NAMES
    assert set(typing.get_args(TelemetryEvent)) == set(EVENT_TYPES)


def test_events_are_frozen_keyword_only_and_carry_the_common_fields() -> None:
    for cls in EVENT_TYPES:
        assert issubclass(cls, BaseEvent)
        fields = {f.name for f in msgspec.structs.fields(cls)}
        assert {"run_id", "timestamp", "seq"} <= fields, cls
    step = TrainingStep(step=1, loss=0.5)
    with pytest.raises(AttributeError):
        step.loss = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        TrainingStep(1)  # type: ignore[call-arg, arg-type]


def test_the_wire_form_is_tagged_with_the_name_in_the_event_field() -> None:
    event = StageException(
        run_id="r1",
        seq=7,
        stage="optim_step",
        path="epochs/batches/optim_step",
        attempt=2,
        loop={"epochs": 0, "batches": 3},
        duration_s=0.25,
        error_type="ValueError",
        error_message="boom",
        will_retry=True,
    )
    wire = msgspec.json.decode(encode_event(event))
    assert wire["event"] == "crucible_kitchen.stage.run.exception"
    assert wire["loop"] == {"epochs": 0, "batches": 3}
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: event_name(cls))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_event_round_trips_through_the_union(cls: type[Any], data: st.DataObject) -> None:
    event = data.draw(event_strategy(cls))
    decoded = decode_event(encode_event(event))
    assert type(decoded) is cls
    assert decoded == event
    assert decode_event(encode_event(event).decode()) == event


def test_decode_names_what_is_wrong() -> None:
    with pytest.raises(MessageDecodeError, match="loss"):
        decode_event(b'{"event": "crucible_kitchen.training.step", "step": 1, "loss": "x"}')
    with pytest.raises(MessageDecodeError, match="nope"):
        decode_event(b'{"event": "crucible_kitchen.nope"}')
    with pytest.raises(MessageDecodeError, match="seq"):
        decode_event(b'{"event": "crucible_kitchen.training.step", "step": 1, "seq": -1}')


def test_workflow_start_keeps_an_arbitrary_json_config() -> None:
    event = WorkflowStart(workflow="supervised", config={"lr": 1e-4, "layers": [1, 2]})
    assert decode_event(encode_event(event)) == event


def test_importing_telemetry_imports_neither_rich_nor_the_otel_sdk() -> None:
    code = "import sys, crucible_kitchen.telemetry; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    heavy = [m for m in loaded if m.startswith(("rich", "opentelemetry.sdk", "trio"))]
    assert heavy == []
