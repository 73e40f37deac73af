"""The actor runtime: actors, mailboxes, supervisors, child specs and exit reasons.

An OTP-style runtime on anyio that runs unchanged on asyncio and trio. It imports nothing from
the layers above it (workflows, stages, ports, adapters, kitchen). See ``docs/runtime.md``.
"""

from __future__ import annotations

from ._actor import Actor as Actor
from ._actor import ActorRef as ActorRef
from ._actor import Monitor as Monitor
from ._actor import PendingCall as PendingCall
from ._actor import ReplyHandle as ReplyHandle
from ._exit import ExitKind as ExitKind
from ._exit import ExitReason as ExitReason
from ._exit import ExitRecord as ExitRecord
from ._messages import ActorStatistics as ActorStatistics
from ._messages import ChildCounts as ChildCounts
from ._messages import ChildInfo as ChildInfo
from ._messages import Message as Message
from ._messages import MessageCodec as MessageCodec
from ._messages import SupervisorStatistics as SupervisorStatistics
from ._supervisor import AutoShutdown as AutoShutdown
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import RestartType as RestartType
from ._supervisor import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor
from ._supervisor import exponential_backoff as exponential_backoff
from ._supervisor import open_supervisor as open_supervisor

__all__ = (
    "Actor",
    "ActorRef",
    "ActorStatistics",
    "AutoShutdown",
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "ExitKind",
    "ExitReason",
    "ExitRecord",
    "Message",
    "MessageCodec",
    "Monitor",
    "PendingCall",
    "ReplyHandle",
    "RestartType",
    "Strategy",
    "Supervisor",
    "SupervisorStatistics",
    "exponential_backoff",
    "open_supervisor",
)
