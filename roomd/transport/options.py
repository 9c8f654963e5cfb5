"""The transport's settings, in a module without trio (the CLI reads the defaults).

Every limit on what a client can make roomd hold has its default here, and
only here: the Server's keyword arguments and the ``[limits]`` section of the
configuration take theirs from :class:`EngineOptions`. docs/limits.md says
why each value, and what the defaults allow at 10,000 connections.
"""

from __future__ import annotations

import dataclasses

__all__ = ["EngineOptions"]


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The transport's settings (seconds and bytes; 0 means unlimited).

    docs/limits.md explains each one and the worst case they allow.
    """

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    path: str = "/socket.io/"
    cors_origins: tuple[str, ...] = ()
    outbox_limit: int = 1024
    max_connections: int = 0
    transports: tuple[str, ...] = ("polling", "websocket")
    # Bytes: one outbox, and everything every connection buffers together.
    outbox_bytes: int = 4 * 1024 * 1024
    memory_budget: int = 512 * 1024 * 1024
    # Per address (exempt: loopback, unless configured otherwise).
    connections_per_ip: int = 256
    sessions_per_ip_rate: float = 20.0
    sessions_per_ip_burst: int = 100
    exempt_addresses: tuple[str, ...] = ("127.0.0.1", "::1")
    trusted_proxies: tuple[str, ...] = ()
    # Connections accepted but not yet past their request head and body.
    max_half_open: int = 1024
    # Seconds: every wait on a client.
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 30.0
    send_timeout: float = 30.0
    upgrade_timeout: float = 10.0
