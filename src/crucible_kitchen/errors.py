"""Every exception crucible-kitchen raises, as one tree under :class:`KitchenError`.

This module is the bottom layer of the package: it imports nothing from crucible-kitchen, and
every other layer may import it.

::

    KitchenError
    ├── Shutdown                    raised by a child to exit with reason "shutdown"
    ├── ActorError                  talking to an actor failed
    │   ├── ActorExited             the actor died before it replied
    │   ├── ActorNotRunning         no live actor behind the reference ("noproc")
    │   ├── CallTimeout             no reply within the timeout  (also a TimeoutError)
    │   ├── CallToSelf              an actor called itself and would wait for ever ("calling_self")
    │   ├── MailboxFull             cast_nowait into a full mailbox
    │   └── MessageTypeError        the message is not in the actor's protocol  (also a TypeError)
    ├── BackendError                a call through a port to a backend failed
    │   ├── TransientBackendError   may succeed if re-sent (timeout, lost connection, overload)
    │   └── PermanentBackendError   re-sending cannot help
    │       ├── InvalidRequest      the backend refused the request's content  (also a ValueError)
    │       ├── RequestIdConflict   a request_id was reused for a different request
    │       ├── RequestExpired      a request_id was re-sent after its result was dropped
    │       ├── CollectiveError     a collective across the data-parallel ranks failed or timed
    │       │   │                   out; names the rank
    │       │   └── CollectiveDesync  the ranks are at different requests (a one-sided retry)
    │       └── ResourceNotFound    no dataset, blob, model or checkpoint by that name
    │                               (also a LookupError)
    ├── ConfigError                 invalid configuration; every problem listed with its path
    │   │                           (also a ValueError)
    │   └── TokenizerFileError      a tokenizer.json or tokenizer_config.json is missing or
    │                               corrupt; names the file
    ├── CheckpointError             a checkpoint cannot be written or read; names the path
    │   ├── CheckpointCorrupted     a file is missing, truncated or fails its sha256 check
    │   ├── CheckpointExists        the target already exists  (also a FileExistsError)
    │   ├── CheckpointMismatch      a sound checkpoint that does not fit the model or config
    │   │   └── WorldSizeMismatch   resumed with another number of ranks where that changes
    │   │                           the training
    │   └── PretrainedModelError    a Hugging Face model directory cannot be loaded or written:
    │                               an unsupported architecture, a missing, unexpected or
    │                               mis-shaped tensor, an unreadable file; names file and tensor
    ├── DataError                   a dataset file or row is malformed; names the row and field
    │                               (also a ValueError)
    ├── GgufError                   a GGUF model file cannot be converted; names file and tensor
    │   ├── GgufCorrupted           not a GGUF file, truncated, or inconsistent  (also a ValueError)
    │   └── GgufUnsupported         an architecture, tokenizer or quantization not supported
    ├── MessageDecodeError          bytes that are not a valid message  (also a ValueError)
    ├── PortError                   an adapter is missing or does not implement its port
    │   └── AdapterSetNotFound      no adapter set registered by that name  (also a LookupError)
    ├── RecipeNotFound              no recipe or workflow by that name  (also a LookupError)
    ├── RegistryError               a registered adapter set or recipe (an entry point) cannot be
    │                               loaded, is registered twice, or is not what its group holds
    ├── RenderError                 a conversation cannot be rendered or a completion parsed
    │   │                           (also a ValueError)
    │   └── ChatTemplateError       a Jinja chat template fails to compile or render, or is not
    │                               prefix-stable
    ├── RunDirectoryError           a run directory cannot be written, read or resumed
    ├── TelemetryError              a bad telemetry handler spec, or a tracing exporter that is
    │                               unknown or not installed
    ├── TrainingInputError          bad arguments to the training math: shapes, schedule steps,
    │                               token ids  (also a ValueError)
    ├── WorkflowError               a workflow is invalid, or a run of it failed
    │   ├── WorkflowDefinitionError the workflow is malformed; raised when it is defined
    │   │                           (also a ValueError)
    │   ├── StageFailed             a stage failed for good; names the stage, path and attempt
    │   └── RunCancelled            the run was cancelled before it finished
    └── SupervisorError             a supervisor refused a request or gave up
        ├── ChildSpecError          invalid flags or child specification  (also a ValueError)
        ├── ChildStartError         a child failed to start ("failed_to_start_child")
        ├── ChildNotFound           no child with that id  (also a LookupError)
        ├── ChildStateError         the child is in the wrong state ("running", "restarting", ...)
        ├── RestartIntensityExceeded  too many restarts in the window: gave up (also a Shutdown)
        └── SupervisorNotRunning    the supervisor has stopped
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crucible_kitchen.supervisors import ExitReason

__all__ = (
    "ActorError",
    "ActorExited",
    "ActorNotRunning",
    "AdapterSetNotFound",
    "BackendError",
    "CallTimeout",
    "CallToSelf",
    "ChatTemplateError",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointExists",
    "CheckpointMismatch",
    "ChildNotFound",
    "ChildSpecError",
    "ChildStartError",
    "ChildStateError",
    "CollectiveDesync",
    "CollectiveError",
    "ConfigError",
    "DataError",
    "GgufCorrupted",
    "GgufError",
    "GgufUnsupported",
    "InvalidRequest",
    "KitchenError",
    "MailboxFull",
    "MessageDecodeError",
    "MessageTypeError",
    "PermanentBackendError",
    "PortError",
    "PretrainedModelError",
    "RecipeNotFound",
    "RegistryError",
    "RenderError",
    "RequestExpired",
    "RequestIdConflict",
    "ResourceNotFound",
    "RestartIntensityExceeded",
    "RunCancelled",
    "RunDirectoryError",
    "Shutdown",
    "StageFailed",
    "SupervisorError",
    "SupervisorNotRunning",
    "TelemetryError",
    "TokenizerFileError",
    "TrainingInputError",
    "TransientBackendError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorldSizeMismatch",
)


class KitchenError(Exception):
    """Root of every exception raised by crucible-kitchen."""


class Shutdown(KitchenError):
    """Raise inside an actor to stop it with exit reason ``shutdown`` (OTP's ``{shutdown, Term}``).

    A ``transient`` child that raises it is not restarted; a ``permanent`` one is.
    """

    def __init__(self, reason: str = "shutdown") -> None:
        super().__init__(reason)
        self.reason = reason


class ActorError(KitchenError):
    """Talking to an actor failed."""

    def __init__(self, message: str, *, actor: str) -> None:
        super().__init__(message)
        self.actor = actor


class ActorExited(ActorError):
    """The actor exited before it replied to a call; ``reason`` says how it exited."""

    def __init__(self, message: str, *, actor: str, reason: ExitReason) -> None:
        super().__init__(message, actor=actor)
        self.reason = reason


class ActorNotRunning(ActorError):
    """No live actor stands behind the reference (OTP's ``noproc``)."""


class CallTimeout(ActorError, TimeoutError):
    """No reply arrived within the call's timeout. A late reply is dropped."""

    def __init__(self, message: str, *, actor: str, timeout: float) -> None:
        super().__init__(message, actor=actor)
        self.timeout = timeout


class CallToSelf(ActorError):
    """An actor called itself (OTP's ``calling_self``): it cannot answer while it waits.

    Raised at once by ``call`` from the actor's own ``on_start`` or message loop (a handler, or
    a task a handler started). Cast to yourself to queue work for later, or do it in place.
    """


class MailboxFull(ActorError):
    """``cast_nowait`` found the actor's bounded mailbox full."""


class MessageTypeError(ActorError, TypeError):
    """The message is not one of the types the actor declared it accepts."""


class BackendError(KitchenError):
    """A call through a port to a backend failed.

    ``port`` names the port (``"training_client"``), ``operation`` the method (``"optim_step"``)
    and ``request_id`` the request, when it had one. A foreign error is in ``__cause__``.
    """

    def __init__(
        self, message: str, *, port: str, operation: str, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.port = port
        self.operation = operation
        self.request_id = request_id


class TransientBackendError(BackendError):
    """The call may succeed if re-sent with the same ``request_id`` (timeout, overload, 5xx).

    A transiently failed request had no effect on the backend.
    """


class PermanentBackendError(BackendError):
    """Re-sending the call cannot help (bad request, missing permission, unsupported feature)."""


class InvalidRequest(PermanentBackendError, ValueError):
    """The backend refused the request's content; the text names the bad argument."""


class RequestIdConflict(PermanentBackendError):
    """A ``request_id`` already used for one request was sent with a different request."""

    @classmethod
    def reused(
        cls, request_id: str, *, earlier: str, port: str, operation: str
    ) -> RequestIdConflict:
        """The error for ``request_id``, accepted before for a different ``earlier`` request."""
        return cls(
            f"request_id {request_id!r} was already used for a different {earlier} request",
            port=port,
            operation=operation,
            request_id=request_id,
        )


class RequestExpired(PermanentBackendError):
    """A ``request_id`` was re-sent after the backend stopped keeping that request's result.

    The request was applied once and is not applied again; re-sending it this late means the
    caller's retry reaches further back than the backend remembers.
    """


class CollectiveError(PermanentBackendError):
    """A collective across the data-parallel ranks failed or timed out: another rank failed,
    stopped or never arrived. ``rank`` is the rank that reports it, of ``world_size``."""

    def __init__(
        self,
        message: str,
        *,
        port: str,
        operation: str,
        rank: int,
        world_size: int,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, port=port, operation=operation, request_id=request_id)
        self.rank = rank
        self.world_size = world_size


class CollectiveDesync(CollectiveError):
    """The ranks reached different requests (a stage re-ran or skipped requests on some ranks
    only), so their collectives would pair up wrongly; the job stops instead."""


class ResourceNotFound(PermanentBackendError, LookupError):
    """No dataset, blob, model or checkpoint exists under the name in ``resource``."""

    def __init__(
        self,
        message: str,
        *,
        port: str,
        operation: str,
        resource: str,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, port=port, operation=operation, request_id=request_id)
        self.resource = resource


class CheckpointError(KitchenError):
    """A checkpoint could not be written or read; ``path`` is the file or directory at fault."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class CheckpointCorrupted(CheckpointError):
    """A checkpoint file is missing, truncated, unparsable or fails its sha256 check."""


class CheckpointExists(CheckpointError, FileExistsError):
    """Something already exists where a checkpoint was to be written; nothing is overwritten."""


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint that does not fit the model it is loaded into.

    ``differences`` lists each mismatch: a config field, a tensor, missing optimizer state.
    """

    def __init__(self, message: str, *, path: str, differences: list[str]) -> None:
        super().__init__(message, path=path)
        self.differences = differences


class WorldSizeMismatch(CheckpointMismatch):
    """A checkpoint written by a job with another number of data-parallel ranks, resumed where
    the number of ranks changes the training (per-rank dropout streams)."""


class PretrainedModelError(CheckpointError):
    """A Hugging Face model directory cannot be loaded (or a model cannot be exported as one).

    ``path`` is the file at fault (``config.json``, a safetensors file, the export target),
    ``tensor`` the tensor's name in that file when one is at fault, and ``problems`` every
    problem found.
    """

    def __init__(
        self, message: str, *, path: str, tensor: str | None = None, problems: list[str]
    ) -> None:
        super().__init__(message, path=path)
        self.tensor = tensor
        self.problems = problems


class PortError(KitchenError):
    """An adapter is missing for a port, or does not implement it; ``problems`` lists why."""

    def __init__(self, message: str, *, port: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.port = port
        self.problems = problems or []


class AdapterSetNotFound(PortError, LookupError):
    """No adapter set is registered under that name; ``known`` lists the registered ones."""

    def __init__(self, name: str, *, known: list[str], group: str) -> None:
        super().__init__(
            f"no adapter set named {name!r}; known: {', '.join(known) or 'none registered'} "
            f"(the {group!r} entry points of the installed packages)",
            port="*",
        )
        self.name = name
        self.known = known


class RegistryError(KitchenError):
    """An entry point of ``group`` named ``name`` cannot be used: it fails to load, two
    packages register that name, or it is not what the group holds."""

    def __init__(self, message: str, *, group: str, name: str) -> None:
        super().__init__(message)
        self.group = group
        self.name = name


class MessageDecodeError(KitchenError, ValueError):
    """Bytes that do not decode to a valid message; the text names the bad field's path."""


class DataError(KitchenError, ValueError):
    """A dataset file or row is malformed; the text names the file, the row and the field."""


class GgufError(KitchenError):
    """A GGUF model file (llama.cpp's format) cannot be converted.

    ``path`` is the file; ``tensor`` the tensor at fault, when one is.
    """

    def __init__(self, message: str, *, path: str, tensor: str | None = None) -> None:
        where = path if tensor is None else f"{path}, tensor {tensor!r}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.tensor = tensor


class GgufCorrupted(GgufError, ValueError):
    """Not a GGUF file, a truncated one, or one whose metadata and tensors contradict each
    other (a missing tensor, a shape that does not fit the model its metadata describes)."""


class GgufUnsupported(GgufError):
    """A sound GGUF file that the converter cannot convert: its architecture, tokenizer model,
    pre-tokenizer or a tensor's quantization is not one it supports."""


class RenderError(KitchenError, ValueError):
    """A conversation cannot be rendered into tokens, or a sampled completion cannot be parsed."""


class ChatTemplateError(RenderError):
    """A Jinja chat template fails to compile or render (``raise_exception`` included), or is
    not prefix-stable: rendering a conversation rewrites what it rendered for a shorter one."""


class TelemetryError(KitchenError):
    """A telemetry handler spec is invalid, or a tracing exporter is unknown or not installed."""


class TrainingInputError(KitchenError, ValueError):
    """Bad arguments to the training math: mismatched shapes, a step out of range, bad token ids."""


class SupervisorError(KitchenError):
    """A supervisor refused a request, or gave up."""


class ChildSpecError(SupervisorError, ValueError):
    """Invalid supervisor flags or child specification; every problem is listed at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "invalid supervisor specification:\n" + "\n".join(f"  - {p}" for p in problems)
        )
        self.problems = problems


class ChildStartError(SupervisorError):
    """A child failed to start; the cause is in ``__cause__`` and in ``cause``."""

    def __init__(self, message: str, *, child_id: str, cause: BaseException) -> None:
        super().__init__(message)
        self.child_id = child_id
        self.cause = cause


class ChildNotFound(SupervisorError, LookupError):
    """The supervisor has no child with that id."""

    def __init__(self, child_id: str) -> None:
        super().__init__(f"no child with id {child_id!r}")
        self.child_id = child_id


class ChildStateError(SupervisorError):
    """The child is in a state that does not allow the request.

    ``state`` is OTP's word for it: ``"running"``, ``"restarting"`` or ``"already_present"``.
    """

    def __init__(self, message: str, *, child_id: str, state: str) -> None:
        super().__init__(message)
        self.child_id = child_id
        self.state = state


class RestartIntensityExceeded(SupervisorError, Shutdown):
    """More restarts than ``intensity`` within ``period`` seconds: the supervisor gave up.

    It is a :class:`Shutdown`, so the supervisor exits with reason ``shutdown`` as in OTP: its
    parent restarts it only if it is a ``permanent`` child. ``last_exit`` is the exit that
    tipped it over; its error, if any, is also ``__cause__``.
    """

    def __init__(self, message: str, *, supervisor: str, last_exit: ExitReason | None) -> None:
        super().__init__(message)
        self.reason = "reached_max_restart_intensity"
        self.supervisor = supervisor
        self.last_exit = last_exit


class SupervisorNotRunning(SupervisorError):
    """The supervisor has stopped and takes no more requests."""


class ConfigError(KitchenError, ValueError):
    """Invalid configuration. ``problems`` lists every error at once, each with its field path."""

    def __init__(self, problems: list[str], *, source: str = "config") -> None:
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems
        self.source = source


class TokenizerFileError(ConfigError):
    """A ``tokenizer.json`` or ``tokenizer_config.json`` is missing or corrupt; names the file
    (``path``)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__([f"{path}: {message}"], source="tokenizer")
        self.path = path


class RunDirectoryError(KitchenError):
    """A run directory cannot be written, read or resumed; names the directory (``path``)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class RecipeNotFound(KitchenError, LookupError):
    """No recipe or workflow is registered under that name."""

    def __init__(self, name: str, *, known: list[str]) -> None:
        super().__init__(f"no recipe or workflow named {name!r}; known: {', '.join(known)}")
        self.name = name
        self.known = known


class WorkflowError(KitchenError):
    """A workflow is invalid, or a run of it failed."""


class WorkflowDefinitionError(WorkflowError, ValueError):
    """The workflow is malformed; ``problems`` lists every problem found at definition time."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        super().__init__(
            f"workflow {workflow!r} is invalid:\n" + "\n".join(f"  - {p}" for p in problems)
        )
        self.workflow = workflow
        self.problems = problems


class StageFailed(WorkflowError):
    """A stage failed for good: no attempts left, or an error that retrying cannot fix.

    The original exception is ``__cause__``.
    """

    def __init__(self, message: str, *, stage: str, path: str, attempt: int) -> None:
        super().__init__(message)
        self.stage = stage
        self.path = path
        self.attempt = attempt


class RunCancelled(WorkflowError):
    """The run was cancelled before it finished; its cleanup stages ran."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} was cancelled")
        self.run_id = run_id
