"""roomd: a standalone message-room daemon speaking Socket.IO v5, on trio.

The public surface: :class:`Server` and what it hands out (namespaces,
sockets, broadcast operators), the error hierarchy, and the daemon entry
points used by the ``roomd`` command.

The names are imported on first use (PEP 562), so that ``import roomd._config``
and the admin commands of the ``roomd`` CLI (``roomd status``...) do not pay
for importing the server and trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._errors import (
        AckTimeout,
        AdminError,
        ConfigError,
        ConnectRefused,
        ProtocolError,
        RoomdError,
    )
    from .api.broadcast import BroadcastOperator
    from .api.namespace import Namespace, NamespaceFamily
    from .api.server import VERSION as __version__
    from .api.server import Server
    from .api.socket import Handshake, Socket
    from .ops.daemon import run_daemon

_WHERE = {
    "AckTimeout": "_errors", "AdminError": "_errors", "ConfigError": "_errors",
    "ConnectRefused": "_errors", "ProtocolError": "_errors", "RoomdError": "_errors",
    "BroadcastOperator": "api.broadcast", "run_daemon": "ops.daemon",
    "Namespace": "api.namespace", "NamespaceFamily": "api.namespace",
    "Server": "api.server", "__version__": "api.server", "Handshake": "api.socket", "Socket": "api.socket",
}

__all__ = [
    "AckTimeout", "AdminError", "BroadcastOperator", "ConfigError", "ConnectRefused",
    "Handshake", "Namespace", "NamespaceFamily", "ProtocolError", "RoomdError", "Server",
    "Socket", "__version__", "run_daemon",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'roomd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__),
                    "VERSION" if name == "__version__" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
