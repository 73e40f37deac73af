"""Typed messages: the base class, a codec for the wire, and the runtime's own records."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeAlias, TypeVar, dataclass_transform

import msgspec

from crucible_kitchen.errors import MessageDecodeError

from ._exit import ExitRecord

T = TypeVar("T")

Count: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]


@dataclass_transform(frozen_default=True, kw_only_default=True)
class _KeywordOnlyMeta(msgspec.StructMeta):
    """Makes every subclass keyword-only too (msgspec applies ``kw_only`` per class)."""

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> _KeywordOnlyMeta:
        kwargs.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **kwargs)


class Message(msgspec.Struct, metaclass=_KeywordOnlyMeta, frozen=True, tag=True):
    """Base for actor messages: frozen, keyword-only, tagged with the class name.

    Declare one message class per request and a union per actor protocol::

        class Increment(Message):
            by: int = 1

        class Read(Message):
            pass

        CounterMsg = Increment | Read
    """


class MessageCodec(Generic[T]):
    """Encodes messages of type ``T`` (a tagged union, usually) to bytes and back.

    Decoding validates the whole message; bad bytes raise :class:`MessageDecodeError` naming the
    path of the bad field. The encoders and decoders are built once, here.
    """

    def __init__(self, message_type: type[T] | Any, *, format: Literal["json", "msgpack"] = "json"):
        self.message_type: Any = message_type
        self.format = format
        if format == "json":
            self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder = msgspec.json.Encoder()
            self._decoder: msgspec.json.Decoder[T] | msgspec.msgpack.Decoder[T] = (
                msgspec.json.Decoder(message_type)
            )
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._decoder = msgspec.msgpack.Decoder(message_type)

    def encode(self, message: T) -> bytes:
        """Serialize one message."""
        return self._encoder.encode(message)

    def decode(self, data: bytes) -> T:
        """Deserialize and validate one message.

        Raises:
            MessageDecodeError: ``data`` is not bytes, or the bytes are malformed or do not
                match the message type.
        """
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise MessageDecodeError(f"invalid {self.format} message: {exc}") from exc
        except TypeError as exc:  # msgspec's answer to an argument that is not a buffer
            raise MessageDecodeError(
                f"a {self.format} message must be bytes, not {type(data).__name__}"
            ) from exc


class ChildInfo(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One row of ``Supervisor.which_children()``."""

    id: str
    kind: Literal["worker", "supervisor"] | None
    """``None`` while no incarnation has run (an ignored start, say)."""
    restart: Literal["permanent", "transient", "temporary"]
    state: Literal["running", "restarting", "stopped"]
    incarnation: Count
    """How many times this child has been started (1 after the first start)."""


class ChildCounts(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """``Supervisor.count_children()``, as OTP's ``count_children/1``."""

    specs: Count
    active: Count
    supervisors: Count
    workers: Count


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A snapshot of one actor's mailbox and history."""

    actor: str
    state: Literal["running", "restarting", "stopped", "deleted"]
    incarnation: Count
    mailbox_used: Count
    mailbox_size: Count
    calls_handled: Count
    casts_handled: Count
    dead_letters: Count
    """Casts dropped because the actor stopped for good while they were queued."""
    last_exit: ExitRecord | None


class SupervisorStatistics(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A snapshot of one supervisor's children and restart history."""

    supervisor: str
    strategy: str
    children: Count
    active: Count
    restarts: Count
    """Restarts performed since the supervisor started (failed attempts included)."""
    restarts_in_window: Count
    intensity: Count
    period: Annotated[float, msgspec.Meta(gt=0)]
