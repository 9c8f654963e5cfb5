"""The Redis cluster adapter: roomd nodes and Node.js Socket.IO servers share rooms.

``wire`` holds the sans-IO codecs of the two protocols the Node.js packages
speak; ``link`` the Redis connections a server's adapters share (publisher,
subscriber, reconnection); ``classic`` and ``sharded`` the pub/sub
adapters; ``streams`` the Redis Streams adapter (its stream connections,
reader task and cross-node connection state recovery);
``factory`` what ``roomd.Server(adapter=...)`` takes. Only this package
imports coredis, and nothing imports this package unless a cluster is
configured.
"""

from __future__ import annotations

from .factory import RedisAdapterFactory

__all__ = ["RedisAdapterFactory"]
