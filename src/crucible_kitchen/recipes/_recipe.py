"""The Recipe contract: WHAT to train — a workflow, a config model with defaults, its ports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from crucible_kitchen.errors import ConfigError
from crucible_kitchen.workflows import Workflow

__all__ = ("Recipe", "validate_config")


def validate_config(model: type[pydantic.BaseModel], raw: object, *, source: str) -> Any:
    """``raw`` (a mapping, a model instance or None) as a validated ``model``.

    Raises:
        ConfigError: every problem at once, each with its field path (``optimizer.lr: ...``).
    """
    if isinstance(raw, model):
        return raw
    if raw is None:
        raw = {}
    if isinstance(raw, pydantic.BaseModel):
        raw = raw.model_dump()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [f"expected a mapping of settings, not {type(raw).__name__}"], source=source
        )
    try:
        return model.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, error['loc'])) or '<root>'}: {error['msg']}"
            + (f" (got {error['input']!r})" if error["type"] != "missing" else "")
            for error in exc.errors()
        ]
        raise ConfigError(problems, source=source) from None


class _AnyConfig(pydantic.BaseModel):
    """The config of a workflow run without a recipe: any settings, kept as given."""

    model_config = pydantic.ConfigDict(extra="allow", frozen=True)


@dataclass(frozen=True)
class Recipe:
    """A named training definition.

    Args:
        name: what users type (``kitchen run NAME``).
        description: one line for ``kitchen recipes``.
        workflow: the workflow, or a function of the validated config that builds one.
        config_model: a pydantic model whose defaults are the recipe's defaults
            (``extra="forbid"`` recommended, so a typo is an error).
        adapters: the adapter set used when the caller names none (``"noop"``,
            ``"local_torch"``, ...).
        requires: ports needed beyond those its stages declare.
        adapter_options: ``(config, adapter_set_name) -> options`` for
            ``Adapters.named(name, **options)`` when a run's adapters are given by name
            (e.g. the model preset of a ``local_torch`` run).
        writes_run_dir: by default a run writes a run directory
            (``<runs_root>/<run_id>``, see ``Kitchen.start``).
    """

    name: str
    description: str
    workflow: Workflow | Callable[[Any], Workflow]
    config_model: type[pydantic.BaseModel] = _AnyConfig
    adapters: str = "noop"
    requires: tuple[str, ...] = ()
    adapter_options: Callable[[Any, str], Mapping[str, Any]] | None = None
    writes_run_dir: bool = False

    def config(self, raw: object = None) -> Any:
        """Validate ``raw`` against the config model (see :func:`validate_config`)."""
        return validate_config(self.config_model, raw, source=f"config for {self.name!r}")

    def build(self, config: Any) -> Workflow:
        """The workflow for a validated config."""
        return self.workflow if isinstance(self.workflow, Workflow) else self.workflow(config)

    def options_for(self, config: Any, adapters: str) -> dict[str, Any]:
        """The options of the named adapter set ``adapters`` for a validated config."""
        return {} if self.adapter_options is None else dict(self.adapter_options(config, adapters))
