"""The trio Socket.IO client: :func:`connect` and :class:`Client`.

One :class:`Client` is one Engine.IO connection and one namespace (the path of
the URL), opened by :mod:`._handshake`. Its protocol state is a sans-IO
:class:`~roomd.protocol.client.ClientProtocol`; this module only moves bytes and
runs two tasks in the nursery that :func:`connect` opens:

- the reader: receives from the transport, feeds the protocol, sends what it
  queued (a PONG for each PING), resolves acks at once (so a handler may await
  :meth:`Client.emit_with_ack`), and hands events to the dispatcher through a
  bounded channel. It waits at most the server's pingInterval + pingTimeout
  for each packet ("ping timeout").
- the dispatcher: runs the handler registered with :meth:`Client.on` for each
  event, in order (its return value is the ack when the server asked for one),
  or puts the event in the inbox that ``async for event in client`` reads.

Backpressure, not unbounded memory: when the inbox (``inbox_size`` events) is
full, the dispatcher waits, then the reader stops reading. Acks travel in the
same stream as events, so while the inbox is full no ack arrives either: a
program that waits for acks in a busy namespace reads events concurrently (or
registers handlers); one that reads no events at all passes ``inbox_size=0``,
which drops the events no handler takes.

Sending is serialized by one FIFO lock, so packets leave in the order the
protocol queued them. When the connection ends, for whatever reason, every
pending :meth:`Client.emit_with_ack` raises :class:`~roomd.Disconnected`, the
event iteration ends after the events already received, and
:attr:`Client.disconnect_reason` says why.
"""

from __future__ import annotations

import inspect
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from .._errors import AckTimeout, ConnectError, Disconnected
from ..protocol import client as proto
from ._handshake import CLOSE_TIMEOUT, Opening, feed, make_ssl_context, open_connection
from ._transports import Target, TransportGone, close_quietly, parse_url

logger = logging.getLogger("roomd.client")

DEFAULT_CONNECT_TIMEOUT = 20.0  # socket.io-client's default "timeout" option
DEFAULT_ACK_TIMEOUT = 10.0
DEFAULT_INBOX_SIZE = 256
# trio-websocket's own default; a Socket.IO server's maxPayload is 1 MB by default.
DEFAULT_MAX_MESSAGE_SIZE = 2**20
# Events travel from the reader to the dispatcher through this many slots.
_HANDOFF_SIZE = 16

Handler = Callable[..., Any]


@dataclass
class ReceivedEvent:
    """An event the server sent: ``name``, ``args``, and when (``time``, unix seconds).

    When the server asked for an acknowledgement (``wants_ack``), answer with
    ``await event.ack(*args)``; only the first answer is sent.
    """

    namespace: str
    name: str
    args: list
    time: float
    ack_id: int | None = None
    _client: Client | None = field(default=None, repr=False, compare=False)
    _acked: bool = field(default=False, repr=False, compare=False)

    @property
    def wants_ack(self) -> bool:
        return self.ack_id is not None

    async def ack(self, *args: Any) -> None:
        if self.ack_id is None or self._acked or self._client is None:
            return
        self._acked = True
        await self._client._send_ack(self.ack_id, args)


class _PendingAck:
    __slots__ = ("done", "args", "closed")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.args: list = []
        self.closed: proto.Closed | None = None


class Client:
    """A connected Socket.IO client; made by :func:`connect`, not directly."""

    def __init__(self, target: Target, opening: Opening, inbox_size: int) -> None:
        self.target = target
        self.namespace = target.namespace
        self.sid = opening.sid
        self._transport = opening.transport
        self._proto = opening.protocol
        self._send_lock = trio.StrictFIFOLock()
        self._acks: dict[int, _PendingAck] = {}
        self._handlers: dict[str, Handler] = {}
        self._any_handler: Handler | None = None
        self._handoff_send, self._handoff_recv = trio.open_memory_channel[ReceivedEvent](
            _HANDOFF_SIZE)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[ReceivedEvent](
            max(inbox_size, 0))
        self._drop_unhandled = inbox_size <= 0
        self._closed = trio.Event()
        self._early = opening.early  # the reader's first work
        self.disconnect_reason: Disconnected | None = None

    # ---- public

    @property
    def transport(self) -> str:
        return "polling" if self._transport.polling else "websocket"

    @property
    def connected(self) -> bool:
        return self.disconnect_reason is None

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Run ``handler(*args)`` (sync or async) for each ``event``; usable as a decorator.

        ``event="*"`` is the catch-all, called as ``handler(event, *args)`` for
        events without a handler of their own. When the server asked for an
        ack, the return value is sent as the ack (a tuple: several arguments;
        None: no arguments). Events with a handler do not reach the inbox.
        An exception in a handler ends the client (it propagates out of
        ``async with connect(...)``).
        """
        def register(fn: Handler) -> Handler:
            if event == "*":
                self._any_handler = fn
            else:
                self._handlers[event] = fn
            return fn

        return register(handler) if handler is not None else register

    async def emit(self, event: str, *args: Any) -> None:
        """Send an event (arguments: anything JSON-serializable, bytes anywhere)."""
        self._check()
        self._proto.emit(self.namespace, event, args)
        await self._flush()

    async def emit_with_ack(self, event: str, *args: Any,
                            timeout: float = DEFAULT_ACK_TIMEOUT) -> Any:
        """Send an event and wait for the server's acknowledgement.

        Returns the ack's arguments like the server API does: none -> None,
        one -> that value, several -> a tuple (:meth:`call` gives the list).
        Raises AckTimeout after ``timeout`` seconds, Disconnected when the
        connection ends first.
        """
        args_list = await self.call(event, *args, timeout=timeout)
        if not args_list:
            return None
        return args_list[0] if len(args_list) == 1 else tuple(args_list)

    async def call(self, event: str, *args: Any, timeout: float = DEFAULT_ACK_TIMEOUT) -> list:
        """:meth:`emit_with_ack`, returning the ack's arguments as a list."""
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError("timeout must be a positive number of seconds")
        self._check()
        ack_id = self._proto.emit(self.namespace, event, args, ack=True)
        assert ack_id is not None
        pending = self._acks[ack_id] = _PendingAck()
        try:
            await self._flush()
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            self._acks.pop(ack_id, None)
            self._proto.cancel_ack(self.namespace, ack_id)
        if pending.closed is not None:
            raise Disconnected(pending.closed.reason, pending.closed.detail)
        if not pending.done.is_set():
            raise AckTimeout(f"no acknowledgement of {event!r} within {timeout:g} s")
        return pending.args

    async def receive(self) -> ReceivedEvent:
        """The next event without a handler; raises Disconnected once the connection
        is over and every event received before was taken."""
        try:
            return await self._inbox_recv.receive()
        except trio.EndOfChannel:
            raise self.disconnect_reason or Disconnected("io client disconnect") from None

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ReceivedEvent]:
        async for event in self._inbox_recv:
            yield event

    async def wait_disconnected(self) -> Disconnected:
        """Wait until the connection is over; returns why."""
        await self._closed.wait()
        assert self.disconnect_reason is not None
        return self.disconnect_reason

    async def disconnect(self) -> None:
        """Leave the namespace and close the connection (bounded by CLOSE_TIMEOUT).

        Idempotent; :func:`connect` calls it on leaving its ``async with``.
        """
        if self._closed.is_set():
            return
        events = self._proto.close()
        await self._flush_before_close()
        self._on_closed(events)
        await close_quietly(self._transport, CLOSE_TIMEOUT)

    # ---- internals

    def _check(self) -> None:
        if self.disconnect_reason is not None:
            raise Disconnected(self.disconnect_reason.reason, self.disconnect_reason.detail)

    async def _send_ack(self, ack_id: int, args: Any) -> None:
        self._check()
        self._proto.send_ack(self.namespace, ack_id, args)
        await self._flush()

    async def _flush(self) -> None:
        """Send what the protocol queued, in order (one sender at a time)."""
        async with self._send_lock:
            packets = self._proto.packets_to_send()
            if not packets:
                return
            try:
                await self._transport.send_packets(packets)
            except TransportGone as exc:
                self._on_closed(self._proto.transport_closed(exc.detail, error=exc.error))
                raise self.disconnect_reason or Disconnected("transport close") from None

    async def _flush_before_close(self) -> None:
        """Send what the protocol queued last (its DISCONNECT), bounded by CLOSE_TIMEOUT."""
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._flush()
            except Disconnected:
                pass

    async def _reader(self) -> None:
        try:
            try:
                await self._flush()  # a PONG that came with the CONNECT
            except Disconnected:
                pass
            for event in self._early:
                await self._handle(event)
            while not self._closed.is_set():
                timeout = self._proto.heartbeat_timeout or DEFAULT_CONNECT_TIMEOUT
                with trio.move_on_after(timeout) as scope:
                    try:
                        item = await self._transport.receive()
                    except TransportGone as exc:
                        events = self._proto.transport_closed(exc.detail, error=exc.error)
                    else:
                        events = feed(self._proto, self._transport, item)
                if scope.cancelled_caught:
                    events = self._proto.heartbeat_expired()
                try:
                    await self._flush()  # the PONG first: handling may wait for the inbox
                except Disconnected:
                    pass
                for event in events:
                    await self._handle(event)
        finally:
            self._handoff_send.close()

    async def _handle(self, event: proto.Event) -> None:
        if isinstance(event, proto.EventReceived):
            received = ReceivedEvent(event.namespace, event.name, event.args, time.time(),
                                     event.ack_id, self)
            await self._handoff_send.send(received)
        elif isinstance(event, proto.AckReceived):
            pending = self._acks.get(event.ack_id)
            if pending is not None:
                pending.args = event.args
                pending.done.set()
        elif isinstance(event, proto.NamespaceDisconnected):
            self.disconnect_reason = Disconnected("io server disconnect")
            self._on_closed(self._proto.close())
            await self._flush_before_close()
            await close_quietly(self._transport, CLOSE_TIMEOUT)
        elif isinstance(event, proto.Closed):
            self._on_closed([event])
            await close_quietly(self._transport, CLOSE_TIMEOUT)

    def _on_closed(self, events: list[proto.Event]) -> None:
        """Record why the connection ended (the first reason wins) and wake everyone."""
        for event in events:
            if isinstance(event, proto.Closed) and self.disconnect_reason is None:
                self.disconnect_reason = Disconnected(event.reason, event.detail)
                if event.reason != "io client disconnect":
                    logger.info("disconnected from %s: %s", self.target.origin,
                                self.disconnect_reason)
        if self.disconnect_reason is None and self._proto.close_reason is not None:
            closed = self._proto.close_reason  # closed earlier, e.g. by a parse error
            self.disconnect_reason = Disconnected(closed.reason, closed.detail)
        if self.disconnect_reason is None:
            return
        closed = proto.Closed(self.disconnect_reason.reason, self.disconnect_reason.detail)
        for pending in self._acks.values():
            pending.closed = closed
            pending.done.set()
        self._closed.set()

    async def _dispatcher(self) -> None:
        try:
            async for event in self._handoff_recv:
                handler = self._handlers.get(event.name)
                if handler is not None:
                    await self._run_handler(event, handler(*event.args))
                elif self._any_handler is not None:
                    await self._run_handler(event, self._any_handler(event.name, *event.args))
                elif not self._drop_unhandled:
                    await self._inbox_send.send(event)
        finally:
            self._inbox_send.close()

    async def _run_handler(self, event: ReceivedEvent, result: Any) -> None:
        if inspect.isawaitable(result):
            result = await result
        if event.wants_ack and self.connected:
            args = () if result is None else result if isinstance(result, tuple) else (result,)
            try:
                await event.ack(*args)
            except Disconnected:
                pass


@asynccontextmanager
async def connect(
    url: str,
    *,
    auth: dict | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    path: str = "/socket.io/",
    transport: str = "websocket",
    ssl_context: ssl.SSLContext | None = None,
    cafile: str | None = None,
    insecure: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    inbox_size: int = DEFAULT_INBOX_SIZE,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[Client]:
    """Connect to a Socket.IO server: ``async with roomd.connect(url) as client:``.

    ``url`` is ``http(s)://`` or ``ws(s)://`` host, port and namespace
    (``https://example.com/orders``); its query string is sent along. ``auth``
    is the CONNECT payload (``{"token": ...}``); ``headers`` go with the
    WebSocket upgrade (or every polling request); ``query`` adds query
    parameters; ``path`` is the server's Engine.IO path. ``transport`` is
    "websocket" (straight to WebSocket, no polling first) or "polling". TLS:
    ``ssl_context``, or ``cafile`` (trust this CA) / ``insecure`` (verify
    nothing); by default the system's CAs and the host name are checked.

    Raises ConnectError when the server cannot be reached, refuses the
    namespace (``refused`` true, ``message`` e.g. "Invalid namespace") or
    the handshake does not finish within ``connect_timeout`` seconds; ValueError
    for a bad URL or option. On leaving the block the client disconnects.
    """
    if transport not in ("websocket", "polling"):
        raise ValueError(f"transport must be 'websocket' or 'polling', not {transport!r}")
    if not connect_timeout > 0:
        raise ValueError("connect_timeout must be a positive number of seconds")
    if auth is not None and not isinstance(auth, dict):
        raise ValueError("auth must be a dict (sent as a JSON object)")
    if ssl_context is not None and (cafile is not None or insecure):
        raise ValueError("give ssl_context, or cafile / insecure, not both")
    target = parse_url(url, path=path, query=query, headers=headers)
    context = ssl_context or make_ssl_context(cafile, insecure)
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(connect_timeout):
                    opening = await open_connection(
                        nursery, target, transport=transport, auth=auth, ssl_context=context,
                        max_message_size=max_message_size)
            except trio.TooSlowError:
                raise ConnectError(f"no Socket.IO connection to {target.origin} within "
                                   f"{connect_timeout:g} s") from None
            client = Client(target, opening, inbox_size)
            nursery.start_soon(client._reader)
            nursery.start_soon(client._dispatcher)
            try:
                yield client
            finally:
                await client.disconnect()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one exception that matters in the nursery's group: the first that is not
    Cancelled (the block's own, or a handler's), else the group itself."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real and leaves:
        return leaves[0]
    return group
