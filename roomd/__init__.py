"""roomd: a standalone message-room daemon speaking Socket.IO v5, on trio.

The public surface: :class:`Server` and what it hands out (namespaces,
sockets, broadcast operators), the error hierarchy, and the daemon entry
points used by the ``roomd`` command.
"""

from ._broadcast import BroadcastOperator
from ._daemon import run_daemon
from ._errors import (AckTimeout, AdminError, ConfigError, ConnectRefused, ProtocolError,
                      RoomdError)
from ._namespace import Namespace, NamespaceFamily
from ._server import VERSION as __version__
from ._server import Server
from ._socket import Handshake, Socket

__all__ = [
    "AckTimeout", "AdminError", "BroadcastOperator", "ConfigError", "ConnectRefused",
    "Handshake", "Namespace", "NamespaceFamily", "ProtocolError", "RoomdError", "Server",
    "Socket", "__version__", "run_daemon",
]
