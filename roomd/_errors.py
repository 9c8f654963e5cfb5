"""The one exception hierarchy of roomd.

Everything roomd raises on purpose derives from :class:`RoomdError`, so an
embedding application (and the CLI) can catch one type.
"""

from __future__ import annotations


class RoomdError(Exception):
    """Base class of every error roomd raises on purpose."""


class ProtocolError(RoomdError):
    """A peer sent bytes that are not valid Engine.IO / Socket.IO.

    The message says what was wrong. The connection that sent them is closed;
    the server keeps serving everyone else.
    """


class ConfigError(RoomdError):
    """A configuration file, flag or argument is invalid.

    The message names the offending key or option.
    """


class AdminError(RoomdError):
    """The admin socket could not be reached or answered with an error."""


class ConnectRefused(RoomdError):
    """Raised by a middleware (or connection handler) to refuse a connection.

    The client receives a CONNECT_ERROR packet whose data is
    ``{"message": message}`` plus ``"data": data`` when data is not None.
    """

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class EventRefused(RoomdError):
    """Raised by a packet middleware (``socket.use``) to refuse one event.

    No handler runs; a client that asked for an acknowledgement gets
    ``{"error": message}``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AckTimeout(RoomdError):
    """An acknowledgement did not arrive within the timeout.

    ``replies`` holds what did arrive (for a broadcast, one entry per socket
    that answered in time).
    """

    def __init__(self, message: str, replies: list | None = None) -> None:
        super().__init__(message)
        self.replies = replies if replies is not None else []


class ClientError(RoomdError):
    """Base class of the errors of roomd's Socket.IO client (:func:`roomd.connect`)."""


class ConnectError(ClientError):
    """The client could not connect.

    Either the server could not be reached (DNS, TCP, TLS, an HTTP refusal, no
    Engine.IO handshake in time), or it refused the namespace with a
    CONNECT_ERROR packet: then ``refused`` is true, ``message`` is its message
    ("Invalid namespace", a middleware's refusal) and ``data`` its data.
    """

    def __init__(self, message: str, data: object = None, *, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.refused = refused


class Disconnected(ClientError):
    """The client's connection is over; it cannot send, and no ack will come.

    ``reason`` is one of Socket.IO's disconnect reasons: "io server disconnect"
    (the server disconnected the namespace), "io client disconnect" (this side
    did), "transport close" (the connection was closed or lost), "ping timeout"
    (the server fell silent), "parse error" (it sent invalid Engine.IO or
    Socket.IO data), "transport error" (a network or TLS error). ``detail``
    says more when there is more to say.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ClusterTimeout(AckTimeout):
    """Some node of the cluster did not answer a request in time.

    Raised by cluster-wide ``fetch_sockets`` and ``all_rooms`` (through
    ``roomd.cluster``); ``replies`` holds what this node and the nodes that
    did answer returned, so a caller can go on with partial results.
    """
