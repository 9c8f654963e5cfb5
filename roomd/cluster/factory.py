"""``RedisAdapterFactory``: what ``roomd.Server(adapter=...)`` takes for a cluster.

One factory per server: it owns the :class:`~roomd.cluster.link.RedisLink`
(the server's Redis connections) and a nursery for the adapters' small
background jobs (running server-side event handlers, expiring requests),
both inside :meth:`run`, which the server starts in its own nursery before
it accepts connections. ``run`` reports started at once: a Redis that is
down does not keep the server from serving its local clients.

Raises ConfigError for an unknown mode or a non-positive timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import ConfigError
from ..rooms.adapter import AdapterContext, AdapterFactory
from .base import RedisAdapterBase, RequestStats
from .classic import ClassicRedisAdapter
from .link import RedisLink
from .sharded import ShardedRedisAdapter
from .streamlink import DEFAULT_MAXLEN, DEFAULT_STREAM, StreamLink
from .streams import RedisStreamsAdapter

logger = logging.getLogger("roomd.cluster")

MODES = ("classic", "sharded", "streams")
DEFAULT_KEY = "socket.io"
# The Node.js adapters' requestsTimeout default.
DEFAULT_REQUEST_TIMEOUT = 5.0
# How often `roomd status`'s server count is refreshed (one NUMSUB per interval).
COUNT_INTERVAL = 5.0


class RedisAdapterFactory(AdapterFactory):
    """Redis adapters for every namespace of one server.

    ``url`` is a redis:// URL (a node of a Redis Cluster is found to be one);
    ``key`` the channel prefix (the Node adapters' ``key`` /
    ``channelPrefix``); ``mode`` "classic" (``createAdapter``) or "sharded"
    (``createShardedAdapter``) or "streams" (@socket.io/redis-streams-adapter's
    ``createAdapter``, which also recovers sessions across nodes; ``stream`` and
    ``stream_maxlen`` are its ``streamName`` and ``maxLen``); ``request_timeout``
    in seconds.
    """

    def __init__(self, url: str, *, key: str = DEFAULT_KEY, mode: str = "classic",
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, stream: str = DEFAULT_STREAM,
                 stream_maxlen: int = DEFAULT_MAXLEN) -> None:
        if mode not in MODES:
            raise ConfigError(f"cluster mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not request_timeout > 0:
            raise ConfigError("cluster request_timeout must be positive")
        if not key:
            raise ConfigError("cluster key must not be empty")
        if not stream:
            raise ConfigError("cluster stream must not be empty")
        if stream_maxlen < 1:
            raise ConfigError("cluster stream_maxlen must be positive")
        self.url = url
        self.key = key
        self.mode = mode
        self.request_timeout = float(request_timeout)
        self.link = RedisLink(url, sharded=mode == "sharded")
        self.streams = StreamLink(url, stream=stream, maxlen=stream_maxlen)
        self.adapters: dict[str, RedisAdapterBase] = {}
        self.servers: int | None = None  # last server count of "/" (None: not known yet)
        self.stats = RequestStats()
        self._nursery: trio.Nursery | None = None

    def create(self, namespace: str, context: AdapterContext) -> RedisAdapterBase:
        cls: type[RedisAdapterBase] = ClassicRedisAdapter
        if self.mode == "sharded":
            cls = ShardedRedisAdapter
        elif self.mode == "streams":
            cls = RedisStreamsAdapter
        adapter = self.adapters[namespace] = cls(namespace, context, self)
        return adapter

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.link.run)
            if self.mode == "streams":
                await nursery.start(self.streams.run)
            nursery.start_soon(self._count_servers)
            task_status.started()

    async def _count_servers(self) -> None:
        while True:
            await self.server_count()
            await trio.sleep(COUNT_INTERVAL)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run a background job; dropped (with a log line) when the factory is not running."""
        if self._nursery is None:
            logger.warning("cluster adapter is not running: a background job was dropped")
            return
        self._nursery.start_soon(self._guarded, fn)

    @staticmethod
    async def _guarded(fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception:
            logger.exception("cluster background job failed")

    def status(self) -> dict[str, Any]:
        status = {"adapter": "redis", "mode": self.mode, "url": self.link.shown_url,
                  "key": self.key, "request_timeout": self.request_timeout,
                  "servers": self.servers, **self.link.status(), **self.stats.status()}
        if self.mode == "streams":
            status.update(self.streams.status())
            if status["redis"] == "up" and not self.streams.up:
                status["redis"] = "down"  # up means both: pub/sub and the stream
                status["last_error"] = self.streams.last_error
        return status

    async def server_count(self) -> int:
        """Nodes serving the main namespace (this one included); 1 while Redis is down."""
        adapter = self.adapters.get("/")
        count = await adapter.server_count() if adapter is not None else 1
        self.servers = count
        return count
