"""What adapters handle: local members, operation targets, events, remote sockets.

Plain values shared by the adapters (``adapter.py``), the API that builds
them and cluster adapters that put them on a wire. ``Emission`` encodes its
event once, in the emitting task: an argument that cannot be encoded
raises TypeError there, before anything is sent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from ..protocol import sio
from ..transport.outbox import OutgoingMessage
from .delivery import Session


class LocalSocket(Protocol):
    """What an adapter needs of the API's socket object."""

    async def disconnect(self, close: bool = False) -> None:
        """Disconnect from the namespace (the whole connection with ``close``)."""

    def details(self) -> dict[str, Any]:
        """``{"id", "handshake", "rooms", "data"}`` as a cluster fetch reply carries it."""

    @property
    def data(self) -> Any:
        """The application's data of this socket (kept in a recovery session)."""


class Member:
    """One local socket's membership record; ``rooms`` is changed only by the manager.

    With recovery on, ``pid`` is the socket's private session id and
    ``from_seq`` where a reconnect without offset resumes.
    """

    __slots__ = ("id", "namespace", "session", "rooms", "owner", "pid", "from_seq")

    def __init__(self, sid: str, namespace: str, session: Session, owner: LocalSocket,
                 pid: str | None = None) -> None:
        self.id = sid
        self.namespace = namespace
        self.session = session
        self.rooms: set[str] = set()
        self.owner = owner
        self.pid = pid
        self.from_seq = 0


@dataclasses.dataclass(frozen=True, slots=True)
class BroadcastOptions:
    """Who an operation is for: rooms (none = everyone), excluded rooms, flags.

    A socket in several of the rooms is targeted once. ``local`` keeps the
    operation on this node (set on what arrives from the cluster).
    """

    rooms: frozenset[str] = frozenset()
    except_rooms: frozenset[str] = frozenset()
    volatile: bool = False
    local: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteSocketRecord:
    """A socket of another node, as a cluster fetch returns it."""

    id: str
    rooms: frozenset[str]
    data: Any
    handshake: dict[str, Any]


class Emission:
    """One event on its way to sockets: its data, encoded once on first use.

    ``data`` is ``[event, *args]`` (args may hold bytes anywhere). ``source``
    says who emitted it ("server", "client", "admin", "cluster") for taps.
    Raises TypeError (from the JSON encoder) when an argument cannot be
    encoded; that happens in the emitting task, before anything is sent.
    """

    __slots__ = ("namespace", "data", "source", "_parts", "_message")

    def __init__(self, namespace: str, data: list, source: str = "server") -> None:
        self.namespace = namespace
        self.data = data
        self.source = source
        self._parts: list[str | bytes] | None = None
        self._message: OutgoingMessage | None = None

    @property
    def event(self) -> str:
        return self.data[0]

    def parts(self) -> list[str | bytes]:
        """The Socket.IO packet's parts without an ack id (cached)."""
        parts = self._parts
        if parts is None:
            parts = self._parts = sio.encode_event(self.namespace, self.data)
        return parts

    def message(self, ack_id: int | None = None) -> OutgoingMessage:
        """The encoded packet (cached, unless it carries an ack id)."""
        if ack_id is not None:
            return OutgoingMessage(sio.encode_event(self.namespace, self.data, ack_id))
        message = self._message
        if message is None:
            message = self._message = OutgoingMessage(self.parts())
        return message

    def tap(self) -> dict[str, Any]:
        return {"event": self.data[0], "args": self.data[1:], "source": self.source}
