"""roomd: a standalone message-room daemon speaking Socket.IO v5, on trio.

The public surface: :class:`Server` and what it hands out (namespaces,
sockets, broadcast operators, remote sockets of a cluster), the Socket.IO
client (:func:`connect`, :class:`Client`), the error hierarchy, the adapter
seam for cluster adapters, and the daemon entry point used by the ``roomd``
command. Everything else is internal, except ``roomd.auth`` (a module:
``import roomd.auth``), the JWT middleware ``roomd.auth.jwt(io, ...)`` and
its key-loading helpers.

The package is layered, bottom up: ``protocol/`` (sans-IO codecs),
``transport/`` (HTTP, Engine.IO sessions, outboxes, timers), ``rooms/``
(the RoomManager actor and the per-namespace adapters), ``api/`` (this
public API) beside ``cluster/`` (Redis adapters) and ``client/`` (the
Socket.IO client), ``apps/`` (the relay
app) and ``ops/`` (config, admin socket, systemd, the daemon). Each layer
imports only from the layers below it (see docs/architecture.md).

The names are imported on first use (PEP 562), so that ``import
roomd.ops.config`` and the admin commands of the ``roomd`` CLI (``roomd
status``...) do not pay for importing the server and trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._errors import (
        AckTimeout,
        AdminError,
        ClientError,
        ClusterTimeout,
        ConfigError,
        ConnectError,
        ConnectRefused,
        Disconnected,
        EventRefused,
        ProtocolError,
        RoomdError,
    )
    from ._version import VERSION as __version__
    from .api.broadcast import BroadcastOperator, RemoteSocket
    from .api.namespace import Namespace, NamespaceFamily
    from .api.server import Server
    from .api.socket import Handshake, Socket
    from .client import Client, ReceivedEvent, connect
    from .ops.daemon import run_daemon
    from .rooms.adapter import (
        AdapterContext,
        AdapterFactory,
        BroadcastOptions,
        Emission,
        InMemoryAdapter,
        RemoteSocketRecord,
    )
    from .rooms.recovery import RecoveryOptions

_WHERE = {
    "AckTimeout": "_errors", "AdminError": "_errors", "ConfigError": "_errors",
    "ConnectRefused": "_errors", "EventRefused": "_errors", "ProtocolError": "_errors",
    "RoomdError": "_errors",
    "ClientError": "_errors", "ConnectError": "_errors", "Disconnected": "_errors",
    "ClusterTimeout": "_errors",
    "Client": "client", "ReceivedEvent": "client", "connect": "client",
    "__version__": "_version",
    "BroadcastOperator": "api.broadcast", "RemoteSocket": "api.broadcast",
    "Namespace": "api.namespace", "NamespaceFamily": "api.namespace",
    "Server": "api.server", "Handshake": "api.socket", "Socket": "api.socket",
    "run_daemon": "ops.daemon",
    "AdapterContext": "rooms.adapter", "AdapterFactory": "rooms.adapter",
    "BroadcastOptions": "rooms.adapter", "Emission": "rooms.adapter",
    "InMemoryAdapter": "rooms.adapter", "RemoteSocketRecord": "rooms.adapter",
    "RecoveryOptions": "rooms.recovery",
}

__all__ = [
    "AckTimeout", "AdapterContext", "AdapterFactory", "AdminError", "BroadcastOperator",
    "BroadcastOptions", "Client", "ClientError", "ClusterTimeout", "ConfigError", "ConnectError",
    "ConnectRefused", "Disconnected", "Emission", "EventRefused",
    "Handshake", "InMemoryAdapter", "Namespace",
    "NamespaceFamily", "ProtocolError", "ReceivedEvent", "RecoveryOptions", "RemoteSocket",
    "RemoteSocketRecord", "RoomdError", "Server", "Socket", "__version__", "connect",
    "run_daemon",
]


def __getattr__(name: str) -> Any:
    if name == "auth":  # a module of its own: ``roomd.auth.jwt(io, ...)``
        return importlib.import_module(".auth", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'roomd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__),
                    "VERSION" if name == "__version__" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
