"""The Redis stream's connections of one server: commands, and the one reader task.

:class:`StreamLink` is to the streams adapter what :class:`~roomd.cluster.link.RedisLink`
is to the pub/sub ones. Its reader task reads the stream with ``XREAD BLOCK`` on its own
connection and hands each entry to the handler its namespace registered, in stream order;
commands (XADD, SET, GETDEL, XRANGE) go through another connection and never wait behind
the reader. The reader starts at the stream's last entry on first connect and resumes
from the last entry it read after an outage (reconnecting with the link's backoff).

While Redis is down every command fails at once and returns None (counted in
``failed``); a command that takes longer than ``COMMAND_TIMEOUT`` counts as an outage.
A Redis Cluster cannot carry the stream: each connection attempt fails with
:class:`StreamsUnsupported`, the link's last error. Malformed entries are logged at
debug level and dropped (:class:`~roomd.cluster.wire.WireError`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import coredis
import trio
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from .._errors import RoomdError
from . import wire
from .link import BACKOFF_FIRST, BACKOFF_MAX, COMMAND_TIMEOUT, CONNECT_TIMEOUT, describe

logger = logging.getLogger("roomd.cluster")

EntryHandler = Callable[[str, dict[str, Any]], Awaitable[None]]

# The Node adapter's defaults (streamName, maxLen, readCount, blockTimeInMs).
DEFAULT_STREAM = "socket.io"
DEFAULT_MAXLEN = 10_000
READ_COUNT = 100
BLOCK_MS = 5_000
# The Node adapter's bound on XRANGE calls of one restore (100 entries each by default here).
RESTORE_MAX_CALLS = 100
RANGE_COUNT = 1_000
# A restore waits at most this long for the reader to have applied the entries it replays.
CATCH_UP = 2.0


class StreamsUnsupported(RoomdError):
    """The Redis at the URL cannot carry the stream (a Redis Cluster node)."""


class StreamLink:
    """The stream's connections of one server: commands, and the reader task."""

    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM,
                 maxlen: int = DEFAULT_MAXLEN, block_ms: int = BLOCK_MS) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.up = False
        self.appended = 0
        self.failed = 0
        self.read = 0
        self.last_error: str | None = None
        self.read_through: tuple[int, int] = (0, 0)  # the last entry read and handed over
        self._cursor: str | None = None
        self._client: Any = None
        self._handlers: dict[str, EntryHandler] = {}
        self._progress = trio.Event()
        self._scope: trio.CancelScope | None = None

    def register(self, namespace: str, handler: EntryHandler) -> None:
        self._handlers[namespace] = handler

    def unregister(self, namespace: str) -> None:
        self._handlers.pop(namespace, None)

    def status(self) -> dict[str, Any]:
        return {"stream": self.stream, "stream_up": self.up, "stream_appended": self.appended,
                "stream_read": self.read, "stream_failed": self.failed,
                "stream_last_error": self.last_error}

    # -- commands (None: Redis did not answer; never waits longer than COMMAND_TIMEOUT) ------
    async def _command(self, what: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        client = self._client
        if client is None or not self.up:
            self.failed += 1
            return None
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                return await call(client)
        except coredis.exceptions.ResponseError as exc:  # Redis answered: still up
            self.failed += 1
            logger.debug("redis stream %s: %s failed: %s", self.stream, what, describe(exc))
            return None
        except Exception as exc:  # any other failure of Redis: the caller goes on without it
            self.failed += 1
            self._lost(f"{what}: {describe(exc)}")
            return None

    async def add(self, fields: dict[str, str]) -> str | None:
        """XADD with MAXLEN ~; the new entry's id."""
        entry_id = await self._command("XADD", lambda c: c.xadd(
            self.stream, fields, trim_strategy=PureToken.MAXLEN, threshold=self.maxlen,
            trim_operator=PureToken.APPROXIMATELY))
        if entry_id is None:
            return None
        self.appended += 1
        return _text(entry_id)

    async def set_session(self, key: str, value: str, px: int) -> bool:
        return await self._command("SET", lambda c: c.set(key, value, px=px)) is not None

    async def take_session(self, key: str) -> tuple[bool, bytes | None]:
        """GETDEL: (whether Redis answered, the value)."""
        found: list[Any] = []

        async def getdel(client: Any) -> bool:
            found.append(await client.getdel(key))
            return True
        if await self._command("GETDEL", getdel) is None:
            return False, None
        value = found[0]
        return True, (value.encode() if isinstance(value, str) else value)

    async def entries_after(self, offset: str) -> list[tuple[str, Any]] | None:
        """The entries after ``offset`` (at most RESTORE_MAX_CALLS ranges); None when
        ``offset`` is no longer in the stream or Redis did not answer."""
        start = wire.parse_stream_id(offset)
        if start is None:
            return None
        exists = await self._command("XRANGE", lambda c: c.xrange(self.stream, offset, offset))
        if not exists:
            return None
        out: list[tuple[str, Any]] = []
        for _ in range(RESTORE_MAX_CALLS):
            begin = wire.next_stream_id(start)

            async def xrange(client: Any, begin: str = begin) -> Any:
                return await client.xrange(self.stream, begin, "+", count=RANGE_COUNT)
            batch = await self._command("XRANGE", xrange)
            if batch is None:
                return None
            for entry in batch:
                out.append((_text(entry.identifier), entry.field_values))
            if len(batch) < RANGE_COUNT:
                return out
            parsed = wire.parse_stream_id(out[-1][0])
            assert parsed is not None
            start = parsed
        return None  # more than a restore may read: incomplete

    async def caught_up(self, target: tuple[int, int]) -> bool:
        """Wait (at most CATCH_UP) until the reader handed over every entry up to ``target``."""
        with trio.move_on_after(CATCH_UP):
            while self.read_through < target:
                await self._progress.wait()
        return self.read_through >= target

    # -- the task ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connections up and read the stream until cancelled; started at once."""
        task_status.started()
        backoff = BACKOFF_FIRST
        while True:
            was = self.read
            try:
                with trio.CancelScope() as self._scope:
                    await self._session()
            except BaseException as exc:
                await trio.lowlevel.checkpoint()
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                self._lost(describe(exc))
            finally:
                self._scope = None
                self._client = None
            self.up = False
            if self.read != was:
                backoff = BACKOFF_FIRST
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _connection(self, stream_timeout: float) -> Any:
        return coredis.Redis.from_url(self.url, retry_policy=NoRetryPolicy(),
                                      connect_timeout=CONNECT_TIMEOUT,
                                      stream_timeout=stream_timeout)

    async def _session(self) -> None:
        async with AsyncExitStack() as stack:
            # The clients open their own task groups: not inside a cancel scope of ours.
            client = await stack.enter_async_context(self._connection(COMMAND_TIMEOUT))
            reader = await stack.enter_async_context(
                self._connection(self.block_ms / 1000 + COMMAND_TIMEOUT))
            with trio.fail_after(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
                info = await client.info("cluster")
                if info.get("cluster_enabled"):
                    raise StreamsUnsupported("the streams adapter needs a single Redis, "
                                             "not a Redis Cluster")
                if self._cursor is None:
                    last = await reader.xrevrange(self.stream, count=1)
                    self._cursor = _text(last[0].identifier) if last else "0-0"
                    parsed = wire.parse_stream_id(self._cursor)
                    self.read_through = parsed or (0, 0)
            self._client = client
            self.up = True
            if self.last_error is not None:
                logger.info("redis stream %s: reading again from %s", self.stream, self._cursor)
            self.last_error = None
            while True:
                reply = await reader.xread({self.stream: self._cursor}, count=READ_COUNT,
                                           block=self.block_ms)
                if reply:
                    for entries in reply.values():
                        for entry in entries:
                            await self._hand_over(_text(entry.identifier), entry.field_values)
                    progress, self._progress = self._progress, trio.Event()
                    progress.set()

    async def _hand_over(self, entry_id: str, fields: Any) -> None:
        self._cursor = entry_id
        self.read += 1
        try:
            message = wire.decode_stream_entry(fields)
            handler = self._handlers.get(message["nsp"])
            if handler is not None:
                await handler(entry_id, message)
        except wire.WireError as exc:
            logger.debug("stream entry %s dropped: %s", entry_id, exc)
        except Exception:
            logger.exception("applying stream entry %s failed", entry_id)
        parsed = wire.parse_stream_id(entry_id)
        if parsed is not None:
            self.read_through = parsed

    def _lost(self, reason: str) -> None:
        if self.up or self.last_error is None:
            logger.warning("redis stream %s: unavailable (%s); serving local clients only, "
                           "reconnecting", self.stream, reason)
        self.up = False
        self.last_error = reason
        if self._scope is not None:
            self._scope.cancel()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
