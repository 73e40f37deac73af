"""What a stage reads and writes: config fields and typed state keys, checked before a run.

A stage declares its :class:`StageContract` (``contract = StageContract(...)``): the
``ctx.config`` fields it reads, the ``ctx.state`` keys it needs (``reads``), those it looks
at only if present (``may_read``) and those it sets, replaces or removes (``writes``). A state
key is a :class:`StateKey`: its name, the type of its values, and whether it is left out of
checkpoints because the stages that made it rebuild it when a resumed run repeats them.

The functions a workflow calls on the context (a loop's ``over``, a conditional's ``when``)
declare theirs with :func:`declares`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

F = TypeVar("F", bound="Callable[..., Any]")

__all__ = (
    "StageContract",
    "StateKey",
    "config_problems",
    "contract_of",
    "declares",
    "rebuilt_on_resume",
    "state_problems",
)

_REBUILT_ON_RESUME: Final[set[str]] = set()


@dataclass(frozen=True, slots=True)
class StateKey:
    """A key of ``ctx.state`` and the type of its values.

    Args:
        name: the key.
        type: what its values are instances of (a Protocol or ``object`` for anything).
        rebuilt_on_resume: the value is data the stages that wrote it compute again,
            identically, when a resumed run repeats them (datasets, data order): checkpoints
            leave it out. The module that owns the key says so, once, where it declares it.
    """

    name: str
    type: type[Any]
    rebuilt_on_resume: bool = False

    def __post_init__(self) -> None:
        if self.rebuilt_on_resume:
            _REBUILT_ON_RESUME.add(self.name)

    def __str__(self) -> str:
        return self.name


def rebuilt_on_resume() -> frozenset[str]:
    """The names of every state key declared ``rebuilt_on_resume``."""
    return frozenset(_REBUILT_ON_RESUME)


@dataclass(frozen=True, slots=True)
class StageContract:
    """What a stage reads and writes; checked when its workflow is defined and before a run.

    Args:
        config: the ``ctx.config`` attributes it reads (top-level names; ``"adam"`` for all
            of ``config.adam``). A run whose config lacks one is refused before it starts.
        reads: state keys it needs: some stage of the workflow must write each.
        may_read: state keys it uses only when present (``ctx.state.get(...)``).
        writes: state keys it sets, replaces or removes.
    """

    config: tuple[str, ...] = ()
    reads: tuple[StateKey, ...] = ()
    may_read: tuple[StateKey, ...] = ()
    writes: tuple[StateKey, ...] = ()

    def state_keys(self) -> tuple[StateKey, ...]:
        """Every state key it declares."""
        return (*self.reads, *self.may_read, *self.writes)


def declares(contract: StageContract) -> Callable[[F], F]:
    """Declare what a function of the context (a loop's ``over``, a conditional's ``when``)
    reads, as a stage does; it is checked with the stages' contracts.

    ::

        @declares(StageContract(config=("save_every",)))
        def checkpoint_due(ctx: Context) -> bool: ...
    """

    def mark(fn: F) -> F:
        fn.contract = contract  # type: ignore[attr-defined]
        return fn

    return mark


def contract_of(value: object) -> StageContract | None:
    """The contract a stage or a function of the context declares; None if none."""
    contract = getattr(value, "contract", None)
    return contract if isinstance(contract, StageContract) else None


def config_problems(contracts: Iterable[tuple[str, StageContract]], config: object) -> list[str]:
    """Every config field a ``(node name, contract)`` reads and ``config`` lacks."""
    problems: list[str] = []
    for name, contract in contracts:
        problems.extend(
            f"{field}: missing; {name!r} reads it"
            for field in contract.config
            if not hasattr(config, field)
        )
    return problems


def state_problems(contracts: Iterable[tuple[str, StageContract]], *, complete: bool) -> list[str]:
    """What is inconsistent between the contracts of a workflow's stages.

    Each key must be declared alike (type, ``rebuilt_on_resume``) everywhere; when the
    contracts are ``complete`` (every stage of the workflow declares one), every key a stage
    ``reads`` must be written by some stage.
    """
    contracts = list(contracts)
    problems: list[str] = []
    declared: dict[str, tuple[StateKey, str]] = {}
    for name, contract in contracts:
        for key in contract.state_keys():
            first = declared.setdefault(key.name, (key, name))
            if first[0] != key:
                problems.append(
                    f"{name}: state key {key.name!r} is declared as {key!r}, "
                    f"but as {first[0]!r} by {first[1]}"
                )
    if complete:
        written = {key.name for _, contract in contracts for key in contract.writes}
        problems.extend(
            f"{name}: reads state key {key.name!r}, which no stage of the workflow writes"
            for name, contract in contracts
            for key in contract.reads
            if key.name not in written
        )
    return problems
