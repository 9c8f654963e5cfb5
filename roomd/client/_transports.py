"""The client's two transports: WebSocket (trio-websocket) and long-polling (h11).

Both open an Engine.IO connection to a :class:`Target` and move Engine.IO
data; neither knows the protocol beyond that. :class:`WebSocketTransport`
carries one Engine.IO packet per WebSocket message; :class:`PollingTransport`
carries payloads (packets joined by ``\\x1e``) in HTTP GET responses and POST
bodies, over at most two keep-alive HTTP/1.1 connections (one for the pending
GET, one for POSTs) parsed by h11.

Failures are reported as :class:`TransportGone` (the transport is unusable;
``error`` tells a network or TLS error from an orderly close) and, while
opening, as :class:`roomd._errors.ConnectError` with a message saying what
went wrong ("HTTP 400: Transport unknown", "certificate verify failed", ...).
Received data is bounded: a WebSocket message by ``max_message_size``
(trio-websocket closes with 1009 above it), a polling response body by
``POLL_BODY_FACTOR`` times that.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import h11
import trio
import trio_websocket

from .._errors import ConnectError
from ..protocol import eio

logger = logging.getLogger("roomd.client")

# Bound on the bytes of one polling response: a payload may hold many messages.
POLL_BODY_FACTOR = 8
# The receive size for socket reads; h11 takes what comes.
_READ_SIZE = 65536


@dataclass(frozen=True)
class Target:
    """Where to connect: the parts of a Socket.IO URL, checked."""

    secure: bool
    host: str
    port: int
    namespace: str
    path: str  # the Engine.IO path, with leading and trailing "/"
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = field(default=())

    def resource(self, transport: str, sid: str | None = None) -> str:
        """The request target: path and query (EIO=4, transport, sid, the user's query)."""
        params = [*self.query, ("EIO", "4"), ("transport", transport)]
        if sid is not None:
            params.append(("sid", sid))
        return self.path + "?" + urllib.parse.urlencode(params)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return ("https://" if self.secure else "http://") + self.host_header


def parse_url(url: str, *, path: str = "/socket.io/", query: dict[str, str] | None = None,
              headers: dict[str, str] | None = None) -> Target:
    """Check a Socket.IO URL (``http(s)://`` or ``ws(s)://``, its path the namespace).

    Raises ValueError naming what is wrong: another scheme, no host, a bad
    port, user info, a fragment, a path (``path``) that does not start with /.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"invalid URL {url!r}: the scheme must be http, https, ws or wss")
    if not parts.hostname:
        raise ValueError(f"invalid URL {url!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"invalid URL {url!r}: user info is not supported (use --header)")
    if parts.fragment:
        raise ValueError(f"invalid URL {url!r}: a fragment means nothing here")
    if not path.startswith("/"):
        raise ValueError(f"invalid path {path!r}: it must start with '/'")
    secure = scheme in ("https", "wss")
    namespace = urllib.parse.unquote(parts.path) or "/"
    if "," in namespace:
        raise ValueError(f"invalid namespace {namespace!r}: no commas")
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    pairs += list((query or {}).items())
    for name, value in (headers or {}).items():
        if not name or any(c in name + value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"invalid header {name!r}")
    return Target(
        secure=secure, host=parts.hostname, port=port or (443 if secure else 80),
        namespace=namespace, path=path.rstrip("/") + "/", query=tuple(pairs),
        headers=tuple((headers or {}).items()))


class TransportGone(Exception):
    """The transport cannot be used any more."""

    def __init__(self, detail: str, *, error: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS error: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _unwrap(exc: BaseException) -> BaseException:
    """The OSError or TLS error behind a trio or trio-websocket error, if any."""
    while exc.__cause__ is not None and isinstance(
            exc, (trio_websocket.HandshakeError, trio.BrokenResourceError)):
        exc = exc.__cause__
    return exc


async def close_quietly(stream: trio.abc.AsyncResource | Transport, timeout: float = 1) -> None:
    """Close a stream (or transport) we are giving up on, bounded, whatever state it is in."""
    with trio.move_on_after(timeout) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _ReaderWatch:
    """Stands in for the nursery trio-websocket starts its reader task in, to notice the
    reader ending before the handshake is answered (trio-websocket would wait forever)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.scope: trio.CancelScope | None = None
        self.error: Exception | None = None

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        async def run() -> None:
            # The reader raises ConnectionRejected for a refused upgrade; later errors
            # end the connection (its message channel closes), not the client's nursery.
            try:
                await fn(*args)
            except Exception as exc:
                self.error = exc
                if self.scope is None:
                    logger.info("WebSocket reader failed: %r", exc)
            finally:
                if self.scope is not None:
                    self.scope.cancel()

        self._nursery.start_soon(run)


def _refusal(status: int, body: bytes) -> str:
    """``HTTP 400: Transport unknown`` from an Engine.IO error body, else the status."""
    text = ""
    try:
        parsed = json.loads(body.decode("utf-8", "replace"))
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            text = parsed["message"]
    except ValueError:
        text = body[:200].decode("utf-8", "replace").strip()
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


class WebSocketTransport:
    """An Engine.IO WebSocket connection through trio-websocket."""

    polling = False

    def __init__(self, connection: trio_websocket.WebSocketConnection) -> None:
        self._ws = connection

    @classmethod
    async def open(cls, nursery: trio.Nursery, target: Target, ssl_context: ssl.SSLContext | None,
                   max_message_size: int) -> WebSocketTransport:
        """Connect (TCP, then TLS when secure, here: trio-websocket would hang on a TLS
        failure), then the WebSocket handshake through trio-websocket."""
        failed = f"cannot connect to {target.origin}"
        try:
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
            stream = await trio.open_tcp_stream(target.host, target.port)
            if target.secure:
                stream = trio.SSLStream(stream, ssl_context or ssl.create_default_context(),
                                        server_hostname=target.host, https_compatible=True)
                await stream.do_handshake()
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectError(f"{failed}: {_describe(_unwrap(exc))}") from None
        watcher = _ReaderWatch(nursery)
        headers = [(k.encode(), v.encode()) for k, v in target.headers]
        try:
            with trio.CancelScope() as scope:
                watcher.scope = scope
                connection = await trio_websocket.wrap_client_stream(
                    cast(trio.Nursery, watcher), stream, target.host_header,
                    target.resource("websocket"), extra_headers=headers,
                    max_message_size=max_message_size)
            watcher.scope = None
        except trio_websocket.ConnectionRejected as exc:
            await close_quietly(stream)
            raise ConnectError(f"{failed}: {_refusal(exc.status_code, exc.body or b'')}") from None
        except (OSError, trio_websocket.HandshakeError, trio.BrokenResourceError) as exc:
            await close_quietly(stream)
            raise ConnectError(f"{failed}: {_describe(_unwrap(exc))}") from None
        if scope.cancelled_caught:
            await close_quietly(stream)
            error = watcher.error
            if isinstance(error, trio_websocket.ConnectionRejected):
                refusal = _refusal(error.status_code, error.body or b"")
                raise ConnectError(f"{failed}: {refusal}")
            if error is not None:
                raise ConnectError(f"{failed}: {_describe(_unwrap(error))}")
            raise ConnectError(f"{failed}: the server closed the connection during the "
                               f"WebSocket handshake")
        return cls(connection)

    async def receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            code = reason.code if reason is not None else None
            # 1000/1001: an orderly close, 1005: one without a code, 1006: the TCP
            # connection simply ended; anything else (1002, 1009...) is an error.
            error = code not in (1000, 1001, 1005, 1006, None)
            detail = f"WebSocket closed ({reason.code} {reason.name})" if reason else ""
            if reason is not None and reason.reason:
                detail += f": {reason.reason}"
            raise TransportGone(detail, error=error) from None

    async def send(self, messages: list[str | bytes]) -> None:
        try:
            for message in messages:
                await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            raise TransportGone("WebSocket closed") from None

    async def send_packets(self, packets: list[eio.Packet]) -> None:
        """One WebSocket message per packet."""
        await self.send([eio.encode_packet(packet) for packet in packets])

    async def aclose(self) -> None:
        await self._ws.aclose()


class _ClosedBeforeAnswer(Exception):
    """The server closed the connection before any response (maybe an idle keep-alive)."""


class _HTTPConnection:
    """One keep-alive HTTP/1.1 client connection (h11), reopened when the server closes it."""

    def __init__(self, target: Target, ssl_context: ssl.SSLContext | None, body_limit: int) -> None:
        self._target = target
        self._ssl_context = ssl_context
        self._body_limit = body_limit
        self._stream: trio.abc.Stream | None = None
        self._h11: h11.Connection | None = None

    async def _open(self) -> None:
        target = self._target
        stream: trio.abc.Stream
        if target.secure:
            context = self._ssl_context or ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(
                target.host, target.port, ssl_context=context, https_compatible=True)
        else:
            stream = await trio.open_tcp_stream(target.host, target.port)
        self._stream = stream
        self._h11 = h11.Connection(h11.CLIENT)

    async def request(self, method: str, resource: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request, return (status, body). Raises OSError, ssl.SSLError,
        trio.BrokenResourceError, h11.ProtocolError, or TransportGone (body too long,
        closed mid-response).

        A kept-alive connection the server closed while idle is reopened and the
        request sent again, once, when nothing of an answer had come.
        """
        reused = await self._reuse()
        if not reused:
            await self._open()
        try:
            return await self._exchange(method, resource, body)
        except _ClosedBeforeAnswer:
            if not reused:
                raise TransportGone("the server closed the connection before answering") from None
        except (OSError, trio.BrokenResourceError):
            if not reused:
                raise
        await self.aclose()
        await self._open()
        try:
            return await self._exchange(method, resource, body)
        except _ClosedBeforeAnswer:
            raise TransportGone("the server closed the connection before answering") from None

    async def _reuse(self) -> bool:
        """Ready the kept-alive connection for the next request; False when there is none."""
        conn = self._h11
        if conn is not None and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        await self.aclose()
        return False

    async def _exchange(self, method: str, resource: str, body: bytes) -> tuple[int, bytes]:
        conn, stream = self._h11, self._stream
        assert conn is not None and stream is not None
        headers = [("Host", self._target.host_header), *self._target.headers,
                   ("Accept", "*/*")]
        if method == "POST":
            headers += [("Content-Type", "text/plain; charset=UTF-8"),
                        ("Content-Length", str(len(body)))]
        data = conn.send(h11.Request(method=method, target=resource, headers=headers)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                received = await stream.receive_some(_READ_SIZE)
                if not received:
                    if not status:
                        raise _ClosedBeforeAnswer
                    raise TransportGone(f"the server closed the connection mid-response "
                                        f"({size} bytes of the body read)")
                conn.receive_data(bytes(received))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self._body_limit:
                    raise TransportGone(f"response body over {self._body_limit} bytes",
                                        error=True)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClosedBeforeAnswer

    async def aclose(self) -> None:
        stream, self._stream, self._h11 = self._stream, None, None
        if stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await close_quietly(stream)


class PollingTransport:
    """An Engine.IO long-polling connection: GETs for the server's packets, POSTs for ours."""

    polling = True

    def __init__(self, target: Target, ssl_context: ssl.SSLContext | None,
                 max_message_size: int) -> None:
        limit = POLL_BODY_FACTOR * max_message_size
        self._target = target
        self._get = _HTTPConnection(target, ssl_context, limit)
        self._post = _HTTPConnection(target, ssl_context, limit)
        self._first: str | None = None
        self.sid: str | None = None

    @classmethod
    async def open(cls, nursery: trio.Nursery, target: Target, ssl_context: ssl.SSLContext | None,
                   max_message_size: int) -> PollingTransport:
        """Do the handshake GET; its body (the OPEN packet) is the first :meth:`receive`."""
        transport = cls(target, ssl_context, max_message_size)
        try:
            status, body = await transport._get.request("GET", target.resource("polling"))
        except (OSError, ssl.SSLError, trio.BrokenResourceError, h11.ProtocolError,
                TransportGone) as exc:
            await transport.aclose()
            detail = _describe(_unwrap(exc))
            raise ConnectError(f"cannot connect to {target.origin}: {detail}") from None
        if status != 200:
            await transport.aclose()
            raise ConnectError(f"cannot connect to {target.origin}: {_refusal(status, body)}")
        transport._first = body.decode("utf-8", "replace")
        return transport

    def handshake_done(self, sid: str) -> None:
        """The OPEN packet named the session: every later request carries its sid."""
        self.sid = sid

    async def _request(self, conn: _HTTPConnection, method: str, body: bytes = b"") -> bytes:
        try:
            status, answer = await conn.request(
                method, self._target.resource("polling", self.sid), body)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError,
                h11.ProtocolError) as exc:
            await conn.aclose()
            raise TransportGone(_describe(_unwrap(exc)), error=True) from None
        except TransportGone:
            await conn.aclose()
            raise
        if status != 200:
            # Engine.IO answers 400 once the session is gone (closed, or timed out).
            raise TransportGone(_refusal(status, answer))
        return answer

    async def receive(self) -> str:
        if self._first is not None:
            body, self._first = self._first, None
            return body
        return (await self._request(self._get, "GET")).decode("utf-8", "replace")

    async def send(self, payload: str) -> None:
        await self._request(self._post, "POST", payload.encode("utf-8"))

    async def send_packets(self, packets: list[eio.Packet]) -> None:
        """The packets as one payload, in one POST."""
        await self.send(eio.encode_payload(packets))

    async def aclose(self) -> None:
        await self._get.aclose()
        await self._post.aclose()


# What a connected client moves its packets over.
Transport = WebSocketTransport | PollingTransport
