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


class AckTimeout(RoomdError):
    """An acknowledgement did not arrive within the timeout.

    ``replies`` holds what did arrive (for a broadcast, one entry per socket
    that answered in time).
    """

    def __init__(self, message: str, replies: list | None = None) -> None:
        super().__init__(message)
        self.replies = replies if replies is not None else []
