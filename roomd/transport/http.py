"""The HTTP front door: one h11 parser per TCP connection.

Long-polling requests are answered here. A WebSocket upgrade is checked and
answered with a 101 from the request h11 already parsed; the bytes h11 read
after it are the first WebSocket bytes (``engine.run_websocket``). Every
refusal is an HTTP status with a JSON body in Engine.IO's format,
``{"code": N, "message": "..."}``; nothing a client sends raises out of
:func:`handle_connection`, and nothing a client sends is logged once per
event (``limits.RateLog`` counts them).

Every wait on the client is bounded (docs/limits.md): the request head
(``head_timeout``, then ``keepalive_timeout`` between requests), the body
(``body_timeout``), every response write (``send_timeout``). Before any
parsing, a new connection must fit the per-address connection cap (else 429);
at most ``max_half_open`` connections are read at once, the others wait their
turn (``turns``); a new session must fit its address's rate (else 429 with
Retry-After).

With an SSLContext, the TLS handshake (``tls.start_tls``) runs after those
admission checks and counts as half-open time; everything after it reads and
writes through the ``trio.SSLStream``.
"""

from __future__ import annotations

import _socket
import http
import json
import logging
import math
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Coroutine

import h11
import trio

from .._errors import ProtocolError
from ..protocol import eio
from ..protocol.eio import ErrorCode
from ..protocol.websocket import accept_token, handshake_error, upgrade_answer
from .engine import ConnectionRefusal, Engine, EngineSession, RequestInfo, SessionState
from .limits import client_address
from .outbox import PollingOutbox
from .tcp import TCPStream, stream_fd
from .tls import close_tls, start_tls

logger = logging.getLogger("roomd.transport")
# Each code's own message: what the refusal counters are keyed by (an allow_request
# verdict may carry any message; the counters' keys stay this bounded set).
CODE_NAMES = {int(code): code.message for code in ErrorCode}

# A request head (line and headers) larger than this is refused (431): the
# stock clients send well under 2 KiB, browsers with cookies a few KiB.
MAX_HEAD_BYTES = 16 * 1024
RECEIVE_SIZE = 64 * 1024
# A refused connection is given this long for its request to arrive, so that
# the refusal is read rather than lost to a TCP reset.
REFUSAL_LINGER = 1.0

# The fast path of a new WebSocket (see _HttpConnection._fast_upgrade): the
# request line and header lines it takes without h11. Anything else (other
# methods, obs-text, folded or repeated headers, a body) goes to h11.
_FAST_REQUEST_LINE = re.compile(r"(GET|POST) (/[!-~]*) HTTP/1\.1")
_FAST_HEADER = re.compile(
    r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[!-~](?:[ \t!-~]*[!-~])?)?)[ \t]*")


class _Refusal(Exception):
    def __init__(self, status: int, code: ErrorCode, detail: str = "",
                 headers: list[tuple[str, str]] | None = None,
                 message: str | None = None) -> None:
        super().__init__(detail or message or code.message)
        self.status = status
        self.code = code
        self.message = message or code.message
        self.detail = detail
        self.headers = headers or []


def _canned(status: int, code: ErrorCode, extra: str = "") -> bytes:
    """A complete HTTP response closing the connection, written without h11."""
    body = json.dumps({"code": int(code), "message": code.message}).encode()
    return (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + body


class _HttpConnection:
    def __init__(self, engine: Engine, stream: trio.abc.Stream, address: str,
                 sock: _socket.socket | None = None) -> None:
        self.engine = engine
        self.stream = stream
        # The plain TCP socket under ``stream`` (None over TLS), for the half-open turn of
        # a keep-alive connection's next request (``_next_turn``).
        self.sock = sock
        self._conn: h11.Connection | None = None
        # (bytes after the request, the request, its sid, whether the 101 is still to send)
        self.websocket: tuple[bytes, RequestInfo, str | None, bool] | None = None
        self.address = address
        self.half_open = True  # counted in engine.admission (turns.Turns.take)
        # A polling request being answered without h11 (``_fast_polling``): its
        # answer is written by hand, byte for byte as h11 would.
        self._fast = False
        self._fast_body = b""
        self._fast_close = False  # the request said "Connection: close"

    @property
    def conn(self) -> h11.Connection:
        """The h11 parser, made on first use (a fast upgrade never needs one)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = h11.Connection(h11.SERVER,
                                               max_incomplete_event_size=MAX_HEAD_BYTES)
        return conn

    def _set_half_open(self, half_open: bool) -> bool:
        """Count this connection as half-open (reading a request) or not; False when full."""
        if half_open == self.half_open:
            return True
        admission = self.engine.admission
        if half_open:
            if not admission.open_half():
                return False
        else:
            admission.close_half()
        self.half_open = half_open
        return True

    async def _next_event(self) -> object:
        """The next h11 event (an h11.Event, or h11.PAUSED); reads as needed."""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.conn.receive_data(data if isinstance(data, bytes) else bytes(data))
                continue
            return event

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self.conn.send(e) or b"" for e in events)
        with trio.fail_after(self.engine.options.send_timeout):
            await self.stream.send_all(data)

    async def respond(self, status: int, body: bytes, content_type: str,
                      extra: list[tuple[str, str]] | None = None, close: bool = False) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), *(extra or ())]
        if close or self._fast_close:
            # Last, once: where h11 puts it when either side closes.
            headers.append(("Connection", "close"))
        if self._fast:
            await self._send_fast(b"".join([
                b"HTTP/1.1 %d \r\n" % status,
                *(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers), b"\r\n", body]))
            return
        await self._send(h11.Response(status_code=status, headers=headers), h11.Data(data=body),
                         h11.EndOfMessage())

    async def _send_fast(self, data: bytes) -> None:
        """Write ``data``: at once when the socket takes it all (it usually does)."""
        try:
            sent = os.write(stream_fd(self.stream), data)
        except BlockingIOError:
            sent = 0
        except OSError:
            raise trio.BrokenResourceError from None
        if sent < len(data):
            with trio.fail_after(self.engine.options.send_timeout):
                await self.stream.send_all(data[sent:])

    async def refuse(self, refusal: _Refusal, extra: list[tuple[str, str]]) -> None:
        key = (refusal.status, CODE_NAMES.get(int(refusal.code), "Bad request"))
        self.engine.refusals[key] = self.engine.refusals.get(key, 0) + 1
        body = json.dumps({"code": int(refusal.code), "message": refusal.message}).encode()
        extra = [*extra, *refusal.headers]
        if self._fast or self.conn.our_state is h11.SEND_RESPONSE:
            await self.respond(refusal.status, body, "application/json", extra, close=True)
            return
        # h11 will not send once the peer broke the protocol: write the answer by hand.
        lines = "".join(f"{k}: {v}\r\n" for k, v in extra)
        await self._send_raw(_canned(refusal.status, refusal.code, lines))

    async def _send_raw(self, data: bytes) -> None:
        try:
            with trio.move_on_after(self.engine.options.send_timeout):
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def serve(self) -> None:
        options = self.engine.options
        timeout = options.head_timeout
        if await self._fast_upgrade():
            return
        while True:
            if not await self._next_turn():
                return
            with trio.move_on_after(timeout) as scope:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as exc:
                    await self._bad_http(exc)
                    return
            if scope.cancelled_caught:
                if self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]:
                    self.engine.ratelog.note("request head timeout", self.address,
                                             f"no complete request head within {timeout} s")
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or PAUSED
            keep_going = await self.handle_request(event)
            if not keep_going or self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
            self._set_half_open(False)
            timeout = options.head_timeout if self.sock is not None else options.keepalive_timeout

    async def _next_turn(self) -> bool:
        """Count this connection as half-open for its next request; False: it ends.

        The first request took its place before serving (``turns.take``). Between two
        requests a keep-alive connection holds no place: its next request, once its first
        bytes are there (within ``keepalive_timeout``), waits its turn like a new
        connection's, and its head is then bounded by ``head_timeout``. (Holding a place
        while idle let idle keep-alive connections fill the cap in a polling storm; each
        one past it was closed, and a client already sending its next request on it saw
        a reset: "xhr post error", docs/performance.md.) Over TLS the socket's bytes do
        not say whether a request is buffered in the TLS stream: an idle connection is
        counted at once and ends when the cap is reached.
        """
        if self.half_open:
            return True
        if self.sock is None:
            return self._set_half_open(True)
        turns = self.engine.turns
        if self.conn.trailing_data[0]:
            await turns.place()  # pipelined: the request is in the parser already
        elif not await turns.take(self.sock, self.engine.options.keepalive_timeout):
            return False  # nothing came: the idle keep-alive connection ends
        self.half_open = True
        return True

    async def _fast_upgrade(self) -> bool:
        """Answer a plain WebSocket upgrade without h11; False when h11 must serve.

        A new WebSocket's request has usually arrived by the time its
        connection is served. When it is complete and plain (a GET of
        HTTP/1.1, strict header syntax, no repeated header, a Host, no body)
        and passes every check of the h11 path, it is answered here with the
        same 101; anything else is fed to h11, which answers as ever. This
        saves h11's parser and state machine, two cancel scopes and a trip
        through trio's send_all: most of what halved the instructions of a
        new connection (docs/performance.md, issue 12). Not over TLS. A check
        with a side effect (the per-address session rate) that refuses is
        answered by the h11 path's refusal, never run twice.
        """
        fd = stream_fd(self.stream)
        if fd < 0:
            return False  # TLS: the bytes on the socket are not the request's
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            # Not here yet (two connections in three in the idle bench): wait for it.
            with trio.move_on_after(self.engine.options.head_timeout) as scope:
                await trio.lowlevel.wait_readable(fd)
            if scope.cancelled_caught:
                return True  # nothing came: the connection ends, as on h11's path
            try:
                data = os.read(fd, RECEIVE_SIZE)
            except OSError:  # woken for nothing, or an error trio's read reports: h11 reads
                return False
        except OSError:
            return False
        parsed = self._fast_parse(data)
        if parsed is None:
            self.conn.receive_data(data)
            return False
        method, target, headers, received = parsed
        if method == "POST" or "upgrade" not in headers:
            return await self._fast_polling(fd, data, parsed)
        info = self._fast_checks(target, headers)
        if info is None:
            self.conn.receive_data(data)
            return False
        sid = info.query.get("sid")
        try:
            if sid is None:
                self._admit_session(info.address)
        except _Refusal as refusal:
            # Refused by a check that counts: answer through h11, as the slow path does.
            self.conn.receive_data(data)
            if isinstance(self.conn.next_event(), h11.Request):
                await self._refused(refusal, "GET", target, [])
            else:
                await self._send_raw(_canned(refusal.status, refusal.code))
            return True
        self._set_half_open(False)
        if sid is None:
            # A new session: the answer leaves with its OPEN packet, in one write.
            self.websocket = (received, info, sid, True)
            return True
        await self._send_fast(upgrade_answer(headers["sec-websocket-key"]))
        self.websocket = (received, info, sid, False)
        return True

    @staticmethod
    def _fast_parse(data: bytes) -> tuple[str, str, dict[str, str], bytes] | None:
        """(method, target, headers, bytes after the head) of a plain GET or POST, else None."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        try:
            lines = data[:end].decode("ascii").split("\r\n")
        except UnicodeDecodeError:
            return None
        match = _FAST_REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            header = _FAST_HEADER.fullmatch(line)
            if header is None:
                return None
            headers[header.group(1).lower()] = header.group(2)
        if len(headers) != len(lines) - 1 or "host" not in headers:
            return None
        if end + len(lines) > MAX_HEAD_BYTES:  # at or near the bound: h11's path measures it
            return None
        return match.group(1), match.group(2), headers, data[end + 4:]

    async def _fast_polling(self, fd: int, data: bytes,
                            parsed: tuple[str, str, dict[str, str], bytes] | None) -> bool:
        """Answer plain long-polling requests without h11; False when h11 must serve.

        ``data`` is what was read, ``parsed`` its request (None: not plain). While
        each request read is complete and plain (``_fast_parse``: a GET or a POST of
        HTTP/1.1, strict header syntax, no repeated header, a Host; a POST's body all
        there, framed by Content-Length alone; ``Connection`` absent, keep-alive or
        close, which socket.io-client under Node.js sends) and would be served by the h11 path
        without a refusal (``_fast_polling_route``), it is answered here, with the
        same bytes; the connection's next request is then read here too, after its
        turn (``turns.take``). A refusal that only the answer finds (an overlapping
        long-poll, the per-address session rate, a malformed payload) is written by
        hand as h11 writes it. Anything else is fed to h11, which answers it and
        every later request of the connection as ever: a stock
        client's polling requests cost no parser objects, no h11 state machine and
        no trip through trio's send_all (docs/performance.md, "Polling storms").
        """
        options = self.engine.options
        turns = self.engine.turns
        while True:
            route = None if parsed is None else self._fast_polling_route(*parsed)
            if route is None:
                self.conn.receive_data(data)
                return False
            del data, parsed
            if not await route:
                return True
            self._set_half_open(False)
            sock = self.sock
            if sock is None or not await turns.take(sock, options.keepalive_timeout):
                return True  # nothing came: the idle keep-alive connection ends
            self.half_open = True
            try:
                data = os.read(fd, RECEIVE_SIZE)
            except OSError:  # woken for nothing, or an error trio's read reports: h11 reads
                return False
            if not data:
                return True  # the client closed its keep-alive connection
            parsed = self._fast_parse(data)

    def _fast_polling_route(self, method: str, target: str, headers: dict[str, str],
                            body: bytes) -> Coroutine[object, object, bool] | None:
        """The answer (to await) of a plain polling request the h11 path would serve
        without a refusal; None when h11 must answer (anything unusual, or refused)."""
        engine = self.engine
        options = engine.options
        if "transfer-encoding" in headers or headers.get("upgrade", "").lower() == "websocket":
            return None
        connection = headers.get("connection", "keep-alive").lower()
        if connection != "keep-alive" and connection != "close":
            return None  # "Upgrade", several options and their like: h11's
        close = connection == "close"  # socket.io-client under Node.js: every request
        length = headers.get("content-length")
        if method == "GET":
            if length is not None or body:
                return None
        elif length is None or not length.isdigit() or int(length) != len(body) or (
                len(body) > options.max_payload):
            return None  # incomplete, pipelined or too large: h11 reads (and refuses)
        query = self._fast_query(target, headers, "polling")
        if query is None:
            return None
        sid = query.get("sid")
        if sid is None:
            if method != "GET" or engine.allow_request is not None:
                return None
            address = client_address(self.address, headers.get("x-forwarded-for"),
                                     engine.trusted_proxies)
            info = RequestInfo(headers=headers, query=query, address=address,
                               time=time.time(), url=target)
            return self._fast_answer(self._open_polling(info, []), method, target, close)
        session = engine.polling_session(sid)
        if session is None or session.transport != "polling" or (
                session.closed and method != "GET"):
            return None
        if method == "GET":
            return self._fast_answer(self._poll(session, []), method, target, close)
        self._fast_body = body
        return self._fast_answer(self._post(session, headers, []), method, target, close)

    async def _fast_answer(self, answer: Coroutine[object, object, None], method: str,
                           target: str, close: bool) -> bool:
        """Run one fast request's answer; False when the connection must end."""
        self._set_half_open(False)
        self._fast = True
        self._fast_close = close
        try:
            await answer
        except _Refusal as refusal:  # answered by hand too, as h11 would (Connection: close)
            await self._refused(refusal, method, target, [])
            return False
        finally:
            self._fast = False
            self._fast_body = b""
            self._fast_close = False
        return not close

    def _fast_query(self, target: str, headers: dict[str, str],
                    transport: str) -> dict[str, str] | None:
        """The query of an Engine.IO request for ``transport`` that the fast paths may
        take: the server's path, EIO=4, the transport enabled, no CORS origin to check.
        Else None (h11's path answers, refusals included)."""
        options = self.engine.options
        path, _, query_string = target.partition("?")
        if path.rstrip("/") + "/" != options.path:
            return None
        if options.cors_origins and "origin" in headers:
            return None
        query = dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))
        if query.get("EIO") != "4" or query.get("transport") != transport or (
                transport not in options.transports):
            return None
        return query

    def _fast_checks(self, target: str, headers: dict[str, str]) -> RequestInfo | None:
        """The request a new (or upgrading) WebSocket makes, if every check of the h11
        path without a side effect passes; else None (h11 will answer)."""
        engine = self.engine
        if ("content-length" in headers or "transfer-encoding" in headers
                or engine.allow_request is not None):
            return None
        query = self._fast_query(target, headers, "websocket")
        if query is None:
            return None
        if headers.get("upgrade", "").lower() != "websocket":
            return None
        if headers.get("sec-websocket-version") != "13" or handshake_error(headers) is not None:
            return None
        sid = query.get("sid")
        if sid is not None and sid not in engine.sessions:
            return None
        address = client_address(self.address, headers.get("x-forwarded-for"),
                                 engine.trusted_proxies)
        return RequestInfo(headers=headers, query=query, address=address, time=time.time(),
                           url=target)

    async def _bad_http(self, exc: h11.RemoteProtocolError) -> None:
        self.engine.ratelog.note("malformed HTTP", self.address, str(exc))
        status = exc.error_status_hint or 400
        await self._send_raw(_canned(status, ErrorCode.BAD_REQUEST))

    def _cors_headers(self, headers: dict[str, str]) -> list[tuple[str, str]]:
        allowed = self.engine.options.cors_origins
        origin = headers.get("origin")
        if not allowed or origin is None:
            return []
        if "*" not in allowed and origin not in allowed:
            raise _Refusal(403, ErrorCode.FORBIDDEN, f"origin {origin!r} not allowed")
        return [("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]

    async def handle_request(self, request: h11.Request) -> bool:
        """Answer one request; False when the connection must end."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        target = request.target.decode("latin-1")
        path, _, query_string = target.partition("?")
        query = dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))
        method = request.method.decode("latin-1")
        cors: list[tuple[str, str]] = []
        try:
            try:
                return await self._route(request, headers, target, path, query, method, cors)
            except h11.RemoteProtocolError as exc:
                # A body h11 cannot parse (bad chunk header, say), or the client left mid-body.
                raise _Refusal(400, ErrorCode.BAD_REQUEST, f"malformed body: {exc}") from None
        except _Refusal as refusal:
            await self._refused(refusal, method, target, cors)
            return False

    async def _refused(self, refusal: _Refusal, method: str, target: str,
                       cors: list[tuple[str, str]]) -> None:
        """Count, log (rate-limited), report and answer a refused request."""
        if refusal.code is ErrorCode.UNKNOWN_SID:
            # A late request of a session that has just closed is routine: DEBUG.
            logger.debug("%s: %s %s refused: %s", self.address, method, target[:200],
                         refusal)
        else:
            self.engine.ratelog.note(f"HTTP {refusal.status} refusal", self.address,
                                     f"{method} {target[:200]}: {refusal}")
        if self.engine.error_listeners:
            self.engine.report_error(ConnectionRefusal(
                int(refusal.code), refusal.message, refusal.detail or refusal.message,
                self.address, target))
        await self.refuse(refusal, cors if refusal.status != 403 else [])

    async def _route(self, request: h11.Request, headers: dict[str, str], target: str,
                     path: str, query: dict[str, str], method: str,
                     cors: list[tuple[str, str]]) -> bool:
        # h11 bounds only a head that arrives in pieces; one read may hold a bigger one.
        if len(request.target) + sum(len(k) + len(v) + 4 for k, v in
                                     request.headers.raw_items()) > MAX_HEAD_BYTES:
            raise _Refusal(431, ErrorCode.BAD_REQUEST, "request head too large")
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 6.3: a message framed both ways is a smuggling attempt; never reuse.
            raise _Refusal(400, ErrorCode.BAD_REQUEST,
                           "both Content-Length and Transfer-Encoding")
        if path.rstrip("/") + "/" != self.engine.options.path:
            raise _Refusal(404, ErrorCode.BAD_REQUEST, "not found")
        cors.extend(self._cors_headers(headers))
        if method == "OPTIONS":
            await self._read_body(0)
            await self.respond(204, b"", "text/plain", cors + [
                ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                ("Access-Control-Allow-Headers", headers.get(
                    "access-control-request-headers", "content-type"))])
            return True
        if query.get("EIO") != "4":
            raise _Refusal(400, ErrorCode.UNSUPPORTED_PROTOCOL_VERSION)
        transport = query.get("transport")
        if transport not in self.engine.options.transports:
            raise _Refusal(400, ErrorCode.UNKNOWN_TRANSPORT)
        address = client_address(self.address, headers.get("x-forwarded-for"),
                                 self.engine.trusted_proxies)
        info = RequestInfo(headers=headers, query=query, address=address,
                           time=time.time(), url=target,
                           secure=isinstance(self.stream, trio.SSLStream))
        sid = query.get("sid")
        if transport == "websocket":
            return await self._websocket(request, headers, info, sid)
        if headers.get("upgrade", "").lower() == "websocket":
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "polling request asks for an upgrade")
        if sid is None:
            if method != "GET":
                raise _Refusal(400, ErrorCode.BAD_HANDSHAKE_METHOD)
            await self._read_body(0)
            await self._open_polling(info, cors)
            return True
        session = self.engine.polling_session(sid)
        if session is None:
            raise _Refusal(400, ErrorCode.UNKNOWN_SID)
        if session.closed and method != "GET":
            # The client is closing too: nobody will fetch the last packets.
            self.engine.closing_polls.pop(sid, None)
            raise _Refusal(400, ErrorCode.UNKNOWN_SID)
        if session.transport != "polling":
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "session was upgraded")
        if method == "GET":
            await self._read_body(0)
            await self._poll(session, cors)
        elif method == "POST":
            await self._post(session, headers, cors)
        else:
            raise _Refusal(400, ErrorCode.BAD_HANDSHAKE_METHOD)
        return True

    async def _read_body(self, limit: int) -> bytes | None:
        """Read the request body; None when it is over ``limit`` bytes."""
        if self._fast:
            return self._fast_body  # all there, within the limit (_fast_polling_route)
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.engine.options.body_timeout):
            while True:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as exc:
                    # A bad chunk header, say, or the client left mid-body.
                    raise _Refusal(400, ErrorCode.BAD_REQUEST, f"malformed body: {exc}") from None
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        return None
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._set_half_open(False)
                    return b"".join(chunks)
                else:
                    raise _Refusal(400, ErrorCode.BAD_REQUEST, "truncated body")
        raise _Refusal(408, ErrorCode.BAD_REQUEST,
                       f"body not received within {self.engine.options.body_timeout} s")

    def _admit_session(self, address: str) -> None:
        """Refuse a new session when the server is full or the address over its rate."""
        engine = self.engine
        if not engine.accepting or engine.full():
            raise _Refusal(503, ErrorCode.BAD_REQUEST, "server is not accepting connections",
                           [("Retry-After", "5")])
        wait = engine.admission.new_session(address)
        if wait:
            raise _Refusal(429, ErrorCode.BAD_REQUEST, "too many new sessions from this address",
                           [("Retry-After", str(max(1, math.ceil(wait))))])

    async def _open_polling(self, info: RequestInfo, cors: list[tuple[str, str]]) -> None:
        self._admit_session(info.address)
        await self._check_allowed(info)
        session = self.engine.new_session("polling", info)
        payload = eio.encode_payload([self.engine.open_packet(session.sid, websocket=False)])
        await self.respond(200, payload.encode(), "text/plain; charset=UTF-8", cors)

    async def _check_allowed(self, info: RequestInfo) -> None:
        refusal = await self.engine.refusal_of(info)
        if refusal is not None:
            raise _Refusal(403, ErrorCode.FORBIDDEN, "refused by allow_request",
                           message=refusal)

    async def _poll(self, session: EngineSession, cors: list[tuple[str, str]]) -> None:
        self.engine.polls_in_flight += 1
        try:
            await self._answer_poll(session, cors)
        finally:
            self.engine.polls_in_flight -= 1

    async def _answer_poll(self, session: EngineSession, cors: list[tuple[str, str]]) -> None:
        outbox = session.outbox
        assert isinstance(outbox, PollingOutbox)
        if session.poll_pending:
            session.close("transport error")
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "overlapping long-poll")
        session.poll_pending = True
        try:
            if session.state is SessionState.POLLING or session.state is SessionState.UPGRADING:
                await outbox.wait()
            state = session.state
            packets = []
            if state is SessionState.PAUSED:
                session.noop_sent()
            elif state is not SessionState.WEBSOCKET and not (
                    state is SessionState.CLOSED and session.close_reason == "transport close"):
                packets = outbox.take(self.engine.options.max_payload)
            if not packets:
                # Paused for the upgrade, upgraded, or closed by the client itself (as
                # engine.io does): the client's long-poll ends with a noop.
                packets = [eio.Packet(eio.PacketType.NOOP)]
        finally:
            session.poll_pending = False
        if session.closed:
            # What this answer could not carry (the close packet travels alone) waits for
            # the next GET, briefly; then it is dropped.
            self.engine.closed_poll_answered(session)
        body = eio.encode_payload(packets).encode()
        del packets
        budget = self.engine.budget
        budget.hold(len(body))  # taken out of the outbox: still held until written
        try:
            await self.respond(200, body, "text/plain; charset=UTF-8", cors)
        except trio.TooSlowError:
            self.engine.ratelog.note("long-poll answer not read", self.address,
                                     f"session {session.sid}: closed after "
                                     f"{self.engine.options.send_timeout} s")
            session.close("transport error")
            raise
        finally:
            budget.give(len(body))

    async def _post(self, session: EngineSession, headers: dict[str, str],
                    cors: list[tuple[str, str]]) -> None:
        limit = self.engine.options.max_payload
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            session.close("transport error")
            raise _Refusal(413, ErrorCode.BAD_REQUEST, f"payload of {length} bytes over maxPayload")
        if session.post_pending:
            session.close("transport error")
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "overlapping POST")
        session.post_pending = True
        try:
            try:
                body = await self._read_body(limit)
            except _Refusal:
                session.close("transport error")
                raise
            if body is None:
                session.close("transport error")
                raise _Refusal(413, ErrorCode.BAD_REQUEST, "payload over maxPayload")
            budget = self.engine.budget
            if not budget.take(len(body)):
                session.close("transport error")
                raise _Refusal(503, ErrorCode.BAD_REQUEST, "memory budget spent",
                               [("Retry-After", "5")])
            self.engine.bytes_in += len(body)
            try:
                for packet in eio.decode_payload(body.decode("utf-8")):
                    await session.receive(packet)
            except (ProtocolError, UnicodeDecodeError) as exc:
                self.engine.ratelog.note("malformed payload", self.address,
                                         f"session {session.sid}: {exc}")
                session.close("parse error")
                raise _Refusal(400, ErrorCode.BAD_REQUEST, str(exc)) from None
            finally:
                budget.give(len(body))
            if not session.account_input():
                session.close("transport error")
                raise _Refusal(503, ErrorCode.BAD_REQUEST, "memory budget spent",
                               [("Retry-After", "5")])
        finally:
            session.post_pending = False
        await self.respond(200, b"ok", "text/html", cors)

    async def _websocket(self, request: h11.Request, headers: dict[str, str],
                         info: RequestInfo, sid: str | None) -> bool:
        if request.method != b"GET" or headers.get("upgrade", "").lower() != "websocket":
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "websocket transport without an upgrade")
        if request.http_version != b"1.1":
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "a WebSocket upgrade needs HTTP/1.1")
        if "content-length" in headers and headers["content-length"] != "0" or (
                "transfer-encoding" in headers):
            # Refused at once: waiting for a body nobody needs is a way to hold a connection.
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "websocket upgrade with a body")
        if headers.get("sec-websocket-version") != "13":
            raise _Refusal(426, ErrorCode.BAD_REQUEST, "Sec-WebSocket-Version must be 13",
                           [("Sec-WebSocket-Version", "13")])
        if sid is not None:
            # A known session that is already upgraded (or upgrading) gets the
            # handshake, then an immediate close (run_websocket), as in engine.io.
            if sid not in self.engine.sessions:
                raise _Refusal(400, ErrorCode.UNKNOWN_SID)
        else:
            self._admit_session(info.address)
            await self._check_allowed(info)
        problem = handshake_error(headers)
        if problem is not None:
            raise _Refusal(400, ErrorCode.BAD_REQUEST, problem)
        event = await self._next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise _Refusal(400, ErrorCode.BAD_REQUEST, "websocket upgrade with a body")
        self._set_half_open(False)
        response = h11.InformationalResponse(status_code=101, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_token(headers["sec-websocket-key"]))])
        with trio.fail_after(self.engine.options.send_timeout):
            await self.stream.send_all(self.conn.send(response) or b"")
        received, _ = self.conn.trailing_data
        # Served by handle_connection once this request's frames are gone.
        self.websocket = (received, info, sid, False)
        return False


async def _serve_http(engine: Engine, stream: trio.abc.Stream, address: str
                      ) -> tuple[bytes, RequestInfo, str | None, bool] | None:
    """Serve HTTP requests; what a WebSocket needs when the last one was an upgrade.

    The HTTP parser's frames are gone when this returns: a WebSocket holds none of them.
    """
    http = _HttpConnection(engine, stream, address,
                           stream.socket if isinstance(stream, TCPStream) else None)
    try:
        await http.serve()
    finally:
        http._set_half_open(False)
    return http.websocket


def _peer_address(stream: TCPStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""
    return peer[0] if isinstance(peer, tuple) else str(peer)


async def _refuse_early(engine: Engine, stream: TCPStream, address: str,
                        status: int, what: str, tls: bool = False) -> None:
    """Answer a connection refused before parsing anything: no parser, no session.

    On a TLS port nothing is said: a plain HTTP answer would be noise to a
    TLS client, and a handshake would cost what the refusal saves.
    """
    engine.ratelog.note(what, address, f"connection refused with {status}")
    key = (status, ErrorCode.BAD_REQUEST.message)
    engine.refusals[key] = engine.refusals.get(key, 0) + 1
    if tls:
        return
    with trio.move_on_after(REFUSAL_LINGER):
        try:
            # Read what has arrived, so that closing does not reset the answer away.
            await stream.receive_some(RECEIVE_SIZE)
            await stream.send_all(_canned(status, ErrorCode.BAD_REQUEST, "Retry-After: 5\r\n"))
            await stream.send_eof()
            await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def handle_connection(engine: Engine, stream: TCPStream,
                            ssl_context: ssl.SSLContext | None = None,
                            address: str | None = None) -> None:
    """Serve one TCP connection until it closes (then close it); over TLS with
    ``ssl_context``.

    ``address`` is the peer's (asked of the socket when not given). Errors
    caused by the peer end that connection only; cancellation propagates.
    """
    if address is None:
        address = _peer_address(stream)
    admission = engine.admission
    try:
        if not admission.connect(address):
            await _refuse_early(engine, stream, address, 429, "too many connections per address",
                                tls=ssl_context is not None)
            return
        try:
            # Counted as half-open once its first bytes are there and a place is free
            # (turns.Turns: it waits its turn, it is not refused); closed if it says nothing.
            if not await engine.turns.take(stream.socket, engine.options.head_timeout):
                return
            if ssl_context is None:
                websocket = await _serve_http(engine, stream, address)
                if websocket is not None:
                    received, request, sid, answer = websocket
                    del websocket  # an idle connection's frames hold only what they need
                    await engine.run_websocket(stream, received, request, sid, answer)
                return
            tls = await start_tls(stream, ssl_context, address)
            if tls is None:
                admission.close_half()
                return
            try:
                websocket = await _serve_http(engine, tls, address)
                if websocket is not None:
                    received, request, sid, answer = websocket
                    del websocket
                    await engine.run_websocket(tls, received, request, sid, answer)
            finally:
                await close_tls(tls)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except trio.TooSlowError:
            pass
        except Exception:
            logger.exception("connection handler failed")
        finally:
            admission.disconnect(address)
    finally:
        stream.close()  # tells trio first (notify_closing), never blocks
