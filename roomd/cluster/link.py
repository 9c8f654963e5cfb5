"""The Redis connections one server's cluster adapters share.

A :class:`RedisLink` owns a publisher (one client, commands pipelined in
batches), a subscriber (one pub/sub connection for every namespace; on a
Redis Cluster one per shard for sharded pub/sub) and the subscriptions the
adapters asked for. It runs as one task in the server's nursery
(:meth:`RedisLink.run`), which connects, subscribes, and on any failure
marks the link down, waits (exponential backoff, capped) and starts over,
resubscribing everything. A Redis that is down when the server starts is
just the first outage: the server serves its local clients meanwhile.

Redis never blocks a caller: :meth:`send` puts the message into a bounded
queue and drops it (counting it) at once while Redis is down; while Redis
is up, a burst that fills the queue makes its sender wait for room (at most
SEND_WAIT), as a full RoomManager queue does. :meth:`publish`, for answers
sent from code that cannot wait, drops when the queue is full. Pub/sub does
not keep messages for absent subscribers either. Messages from one publisher
reach every subscriber in the order they were published (one publisher task,
pipelines in order).
Received messages are handed to the subscribing adapter's handler in the
subscriber task, one at a time, in arrival order; a handler that raises is
logged and the link carries on.

Whether the URL names a Redis Cluster is asked of the server itself
(``INFO cluster``) on every connection. State changes are logged once each
(``roomd.cluster``), never per message.
"""

from __future__ import annotations

import enum
import logging
import math
import urllib.parse
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import coredis
import trio
from coredis.commands.constants import CommandName
from coredis.connection import TCPLocation
from coredis.patterns.pubsub import PubSub
from coredis.retry import NoRetryPolicy

logger = logging.getLogger("roomd.cluster")

Handler = Callable[[str, bytes], Awaitable[None]]

# Messages waiting for the publisher; past this, publishing drops (and counts).
PUBLISH_QUEUE = 10_000
# A sender waits at most this long for room in a full queue while Redis is up.
SEND_WAIT = 2.0
# Messages sent to Redis in one pipeline (one round trip).
PUBLISH_BATCH = 256
# Reconnection backoff: first wait, cap (seconds).
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
# A connection attempt, or a command, that takes longer than this has failed.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0
# Subscriptions of one batch to be acknowledged within this.
SUBSCRIBE_TIMEOUT = 5.0
# A subscriber connection silent this long is checked with a PING.
IDLE_PING = 5.0
# Failed message handlers logged with a traceback (then one in a thousand).
LOGGED_ERRORS = 10


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"


class StandaloneShardedPubSub(PubSub):
    """Sharded pub/sub (SSUBSCRIBE) on a single Redis server.

    coredis offers sharded pub/sub only on its cluster client; a single
    Redis 7 answers SSUBSCRIBE too, and the Node.js sharded adapter uses it
    there. This sends SSUBSCRIBE/SUNSUBSCRIBE where PubSub sends
    SUBSCRIBE/UNSUBSCRIBE; coredis already parses ``ssubscribe`` and
    ``smessage`` replies. Built on coredis 6 internals, hence the pinned
    major version in pyproject and the tests on a real Redis.
    """

    async def subscribe(self, *channels: Any, **handlers: Any) -> None:
        new: dict[Any, Any] = dict.fromkeys(map(self._encode, channels))
        for channel, handler in handlers.items():
            new[self._encode(channel)] = handler
        waiters = {channel: anyio.Event() for channel in new}
        for channel, event in waiters.items():
            self._subscription_waiters[channel].append(event)
        for channel in new:  # one per command: a cluster would need one slot per call
            self._execute_command(CommandName.SSUBSCRIBE, channel)
        await self._ensure_subscribed(waiters)
        self.channels.update(new)

    async def unsubscribe(self, *channels: Any) -> None:
        for channel in channels:
            self._execute_command(CommandName.SUNSUBSCRIBE, channel)

    def _unsubscribe(self, *channels: Any) -> None:
        for channel in channels or list(self.channels):
            self._execute_command(CommandName.SUNSUBSCRIBE, channel)


def redacted(url: str) -> str:
    """The URL without its password, for logs and ``roomd status``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def describe(exc: BaseException) -> str:
    """One line for the log, out of an exception or an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class RedisLink:
    """Publisher, subscriber and subscriptions for one server; see the module doc.

    ``sharded`` selects SSUBSCRIBE/SPUBLISH/SHARDNUMSUB instead of
    (P)SUBSCRIBE/PUBLISH/NUMSUB.
    """

    def __init__(self, url: str, *, sharded: bool = False,
                 publish_queue: int = PUBLISH_QUEUE) -> None:
        self.url = url
        self.shown_url = redacted(url)
        self.sharded = sharded
        self.state = LinkState.CONNECTING
        self.cluster = False
        self.published = 0
        self.dropped = 0
        self.connects = 0
        self.handler_errors = 0
        self.last_error: str | None = None
        self._queue_send, self._queue_receive = trio.open_memory_channel[tuple[str, bytes]](
            publish_queue)
        self._changes_send, self._changes_receive = trio.open_memory_channel[
            tuple[str, str]](math.inf)
        self._channels: dict[str, Handler] = {}
        self._patterns: dict[str, Handler] = {}
        self._client: Any = None
        # While a session lives, subscription changes go to it through the queue;
        # otherwise the next session subscribes the sets as they are then.
        self._live = False

    # -- what adapters call ----------------------------------------------------
    async def send(self, channel: str, payload: bytes) -> bool:
        """Queue a message; False (and counted) when dropped.

        While Redis is down it is dropped at once. While it is up and the queue
        is full (a burst faster than Redis takes it), the caller waits for room,
        as it would for the RoomManager's queue, up to SEND_WAIT; then it is
        dropped: a Redis that takes no more is about to be found down.
        """
        if self.state is not LinkState.UP:
            self.dropped += 1
            return False
        item = (channel, payload)
        try:
            self._queue_send.send_nowait(item)
        except trio.WouldBlock:
            with trio.move_on_after(SEND_WAIT):
                await self._queue_send.send(item)
                return True
            self.dropped += 1
            return False
        return True

    def publish(self, channel: str, payload: bytes) -> bool:
        """Queue a message without waiting; False (and counted) when dropped.

        For answers sent from code that cannot wait (callbacks in the
        RoomManager task).
        """
        if self.state is not LinkState.UP:
            self.dropped += 1
            return False
        try:
            self._queue_send.send_nowait((channel, payload))
        except trio.WouldBlock:
            self.dropped += 1
            return False
        return True

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Deliver the channel's messages to ``handler(channel, payload)`` from now on."""
        self._channels[channel] = handler
        self._change("subscribe", channel)

    def psubscribe(self, pattern: str, handler: Handler) -> None:
        if self.sharded:
            raise ValueError("sharded pub/sub has no pattern subscriptions")
        self._patterns[pattern] = handler
        self._change("psubscribe", pattern)

    def unsubscribe(self, channel: str) -> None:
        if self._channels.pop(channel, None) is not None:
            self._change("unsubscribe", channel)

    def punsubscribe(self, pattern: str) -> None:
        if self._patterns.pop(pattern, None) is not None:
            self._change("punsubscribe", pattern)

    def _change(self, action: str, name: str) -> None:
        if self._live:
            self._changes_send.send_nowait((action, name))

    async def subscriber_count(self, channel: str) -> int | None:
        """How many connections subscribe to ``channel`` (every node of a Redis
        Cluster added up); None when Redis cannot tell us now.

        Classic: PUBSUB NUMSUB; sharded: PUBSUB SHARDNUMSUB.
        """
        client = self._client
        if client is None or self.state is not LinkState.UP:
            return None
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                if self.sharded:
                    counts = await client.pubsub_shardnumsub(channel)
                else:
                    counts = await client.pubsub_numsub(channel)
        except Exception as exc:  # any failure of Redis: the caller works without it
            logger.debug("subscriber count of %s failed: %s", channel, describe(exc))
            return None
        return int(sum(counts.values()))

    def status(self) -> dict[str, Any]:
        return {"redis": self.state.value, "redis_cluster": self.cluster,
                "published": self.published, "dropped": self.dropped,
                "connects": self.connects, "last_error": self.last_error}

    # -- the task ------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled; ``started`` at once (Redis may be down)."""
        task_status.started()
        backoff = BACKOFF_FIRST
        while True:
            connects = self.connects
            try:
                await self._session()
            except BaseException as exc:
                # Being cancelled: leave with a plain Cancelled (coredis may add its own
                # errors while it is torn down). Otherwise every failure is an outage.
                await trio.lowlevel.checkpoint()
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                self._set_down(describe(exc))
            else:
                self._set_down("connection closed")
            if self.connects != connects:  # it was up: start the backoff anew
                backoff = BACKOFF_FIRST
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(await self._connect())
            publisher = client
            if self.cluster and not self.sharded:
                # PUBLISH on any node of a Redis Cluster reaches every node; coredis'
                # cluster pipeline cannot route keyless commands, a node's client can.
                publisher = await stack.enter_async_context(self._node_client())
            pubsub = await stack.enter_async_context(self._pubsub(client))
            self._drain_queue()  # what senders queued while it went down is stale
            self._live = True
            try:
                await self._subscribe_all(pubsub)
                self._client = client
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._publisher, publisher)
                    nursery.start_soon(self._apply_changes, pubsub)
                    self._set_up()
                    while True:
                        message = await pubsub.get_message()
                        if message is not None:
                            await self._dispatch(message)
            finally:
                self._client = None
                self._live = False

    def _node_client(self) -> Any:
        return coredis.Redis.from_url(self.url, retry_policy=NoRetryPolicy(),
                                      connect_timeout=CONNECT_TIMEOUT,
                                      stream_timeout=COMMAND_TIMEOUT)

    async def _connect(self) -> Any:
        options: dict[str, Any] = dict(retry_policy=NoRetryPolicy(),
                                       connect_timeout=CONNECT_TIMEOUT,
                                       stream_timeout=COMMAND_TIMEOUT)
        probe = self._node_client()
        with trio.fail_after(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
            async with probe:
                info = await probe.info("cluster")
        self.cluster = bool(info.get("cluster_enabled"))
        if self.cluster:
            # Startup node as a TCPLocation: coredis deprecates the Node it makes itself.
            parsed = urllib.parse.urlsplit(self.url)
            seed = TCPLocation(parsed.hostname or "127.0.0.1", parsed.port or 6379)
            return coredis.RedisCluster.from_url(self.url, startup_nodes=[seed], **options)
        return self._node_client()

    def _pubsub(self, client: Any) -> Any:
        options: dict[str, Any] = dict(retry_policy=NoRetryPolicy(),
                                       ignore_subscribe_messages=True,
                                       subscription_timeout=SUBSCRIBE_TIMEOUT,
                                       max_idle_seconds=IDLE_PING)
        if not self.sharded:
            return client.pubsub(**options)
        if self.cluster:
            return client.sharded_pubsub(**options)
        return StandaloneShardedPubSub(client.connection_pool, **options)

    async def _subscribe_all(self, pubsub: Any) -> None:
        # Changes queued so far are covered by subscribing the current sets.
        while True:
            try:
                self._changes_receive.receive_nowait()
            except trio.WouldBlock:
                break
        if self._channels:
            await pubsub.subscribe(*self._channels)
        if self._patterns:
            await pubsub.psubscribe(*self._patterns)

    async def _apply_changes(self, pubsub: Any) -> None:
        async for action, name in self._changes_receive:
            if action == "subscribe" and name in self._channels:
                await pubsub.subscribe(name)
            elif action == "psubscribe" and name in self._patterns:
                await pubsub.psubscribe(name)
            elif action == "unsubscribe" and name not in self._channels:
                await pubsub.unsubscribe(name)
            elif action == "punsubscribe" and name not in self._patterns:
                await pubsub.punsubscribe(name)

    async def _publisher(self, client: Any) -> None:
        receive = self._queue_receive
        command = "spublish" if self.sharded else "publish"
        while True:
            batch = [await receive.receive()]
            while len(batch) < PUBLISH_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for channel, payload in batch:
                        getattr(pipe, command)(channel, payload)
            except BaseException:
                self.dropped += len(batch)
                raise
            self.published += len(batch)

    async def _dispatch(self, message: Any) -> None:
        kind = message.get("type")
        if kind not in ("message", "pmessage", "smessage"):
            return
        channel = _text(message["channel"])
        pattern = message.get("pattern")
        handler = (self._patterns.get(_text(pattern)) if pattern else
                   self._channels.get(channel))
        if handler is None:
            return
        try:
            await handler(channel, bytes(message["data"]))
        except Exception:
            # Anyone who can publish can send garbage: the log must not drown in it.
            self.handler_errors += 1
            if self.handler_errors <= LOGGED_ERRORS or self.handler_errors % 1000 == 0:
                logger.exception("handling a message on %s failed (%d so far)", channel,
                                 self.handler_errors)

    # -- state ------------------------------------------------------------------------
    def _set_up(self) -> None:
        self.connects += 1
        if self.state is not LinkState.UP:
            logger.info("redis %s: connected%s, %d channel(s) and %d pattern(s) subscribed",
                        self.shown_url, " (cluster)" if self.cluster else "",
                        len(self._channels), len(self._patterns))
        self.state = LinkState.UP
        self.last_error = None

    def _set_down(self, reason: str) -> None:
        self._drain_queue()
        if self.state is not LinkState.DOWN:
            logger.warning("redis %s: unavailable (%s); serving local clients only, "
                           "reconnecting", self.shown_url, reason)
        self.state = LinkState.DOWN
        self.last_error = reason

    def _drain_queue(self) -> None:
        while True:
            try:
                self._queue_receive.receive_nowait()
            except trio.WouldBlock:
                return
            self.dropped += 1


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
