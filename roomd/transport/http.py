"""The HTTP front door: one h11 parser per TCP connection.

Long-polling requests are answered here. A WebSocket upgrade is handed to
trio-websocket with the bytes h11 already read put back in front of the
stream. Every refusal is an HTTP status with a JSON body in Engine.IO's
format, ``{"code": N, "message": "..."}``; nothing a client sends raises out
of :func:`handle_connection`.
"""

from __future__ import annotations

import http
import json
import logging
import time
import urllib.parse
from collections.abc import Sequence

import h11
import trio

from .._errors import ProtocolError
from ..protocol import eio
from ..protocol.websocket import accept_token, handshake_error
from .engine import ConnectionRefusal, Engine, EngineSession, RequestInfo
from .outbox import PollingOutbox

logger = logging.getLogger("roomd.transport")

# Engine.IO's error codes, as the JS server sends them.
TRANSPORT_UNKNOWN = (0, "Transport unknown")
SESSION_UNKNOWN = (1, "Session ID unknown")
BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
BAD_REQUEST = (3, "Bad request")
FORBIDDEN = (4, "Forbidden")
UNSUPPORTED_VERSION = (5, "Unsupported protocol version")
# Each code's own message: what the refusal counters are keyed by (an allow_request
# verdict may carry any message; the counters' keys stay this bounded set).
CODE_NAMES = dict((TRANSPORT_UNKNOWN, SESSION_UNKNOWN, BAD_HANDSHAKE_METHOD, BAD_REQUEST,
                   FORBIDDEN, UNSUPPORTED_VERSION))

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 30.0
KEEPALIVE_TIMEOUT = 60.0
RECEIVE_SIZE = 64 * 1024


class _Refusal(Exception):
    def __init__(self, status: int, code_message: tuple[int, str], detail: str = "") -> None:
        super().__init__(detail or code_message[1])
        self.status = status
        self.code, self.message = code_message
        self.detail = detail


class _HttpConnection:
    def __init__(self, engine: Engine, stream: trio.SocketStream) -> None:
        self.engine = engine
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.websocket: tuple[bytes, RequestInfo, str | None] | None = None
        try:
            peer = stream.socket.getpeername()
            self.address = peer[0] if isinstance(peer, tuple) else str(peer)
        except OSError:
            self.address = ""

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.conn.receive_data(data)
                continue
            return event  # type: ignore[return-value]  # NEED_DATA looped above

    async def _send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def respond(self, status: int, body: bytes, content_type: str,
                      extra: Sequence[tuple[str, str]] = (), close: bool = False) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), *extra]
        if close:
            headers.append(("Connection", "close"))
        await self._send(h11.Response(status_code=status, headers=headers), h11.Data(data=body),
                         h11.EndOfMessage())

    async def refuse(self, refusal: _Refusal, extra: list[tuple[str, str]]) -> None:
        key = (refusal.status, CODE_NAMES.get(refusal.code, "Bad request"))
        self.engine.refusals[key] = self.engine.refusals.get(key, 0) + 1
        body = json.dumps({"code": refusal.code, "message": refusal.message}).encode()
        await self.respond(refusal.status, body, "application/json", extra, close=True)

    async def serve(self) -> None:
        while True:
            timeout = HEAD_TIMEOUT if self.conn.their_state is h11.SEND_BODY else KEEPALIVE_TIMEOUT
            with trio.move_on_after(timeout) as scope:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as exc:
                    await self._bad_http(exc)
                    return
            if scope.cancelled_caught or event is None:
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            keep_going = await self.handle_request(event)
            if not keep_going or self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _bad_http(self, exc: h11.RemoteProtocolError) -> None:
        logger.info("%s: malformed HTTP: %s", self.address, exc)
        status = exc.error_status_hint or 400
        body = json.dumps({"code": BAD_REQUEST[0], "message": BAD_REQUEST[1]}).encode()
        # h11 refuses to send once the peer's side is broken; write by hand.
        head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            await self.stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _cors_headers(self, headers: dict[str, str]) -> list[tuple[str, str]]:
        allowed = self.engine.options.cors_origins
        origin = headers.get("origin")
        if not allowed or origin is None:
            return []
        if "*" not in allowed and origin not in allowed:
            raise _Refusal(403, FORBIDDEN, f"origin {origin!r} not allowed")
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
            # h11 bounds only a head that arrives in pieces; one read may hold a bigger one.
            if len(request.target) + sum(len(k) + len(v) + 4 for k, v in
                                         request.headers.raw_items()) > MAX_HEAD_BYTES:
                raise _Refusal(431, BAD_REQUEST, "request head too large")
            if path.rstrip("/") + "/" != self.engine.options.path:
                raise _Refusal(404, BAD_REQUEST, "not found")
            cors = self._cors_headers(headers)
            if method == "OPTIONS":
                await self._read_body(0)
                await self.respond(204, b"", "text/plain", cors + [
                    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                    ("Access-Control-Allow-Headers", headers.get(
                        "access-control-request-headers", "content-type"))])
                return True
            if query.get("EIO") != "4":
                raise _Refusal(400, UNSUPPORTED_VERSION)
            transport = query.get("transport")
            if transport not in self.engine.options.transports:
                raise _Refusal(400, TRANSPORT_UNKNOWN)
            info = RequestInfo(headers=headers, query=query, address=self.address,
                               time=time.time(), url=target)
            sid = query.get("sid")
            if transport == "websocket":
                return await self._websocket(request, headers, info, sid)
            if headers.get("upgrade", "").lower() == "websocket":
                raise _Refusal(400, BAD_REQUEST, "polling request asks for an upgrade")
            if sid is None:
                if method != "GET":
                    raise _Refusal(400, BAD_HANDSHAKE_METHOD)
                await self._read_body(0)
                await self._open_polling(info, cors)
                return True
            session = self.engine.polling_session(sid)
            if session is None:
                raise _Refusal(400, SESSION_UNKNOWN)
            if session.closed and method != "GET":
                # The client is closing too: nobody will fetch the last packets.
                self.engine.closing_polls.pop(sid, None)
                raise _Refusal(400, SESSION_UNKNOWN)
            if session.transport != "polling":
                raise _Refusal(400, BAD_REQUEST, "session was upgraded")
            if method == "GET":
                await self._read_body(0)
                await self._poll(session, cors)
            elif method == "POST":
                await self._post(session, headers, cors)
            else:
                raise _Refusal(400, BAD_HANDSHAKE_METHOD)
            return True
        except _Refusal as refusal:
            # A late request of a session that has just closed is routine: DEBUG.
            level = logging.DEBUG if refusal.code == SESSION_UNKNOWN[0] else logging.INFO
            logger.log(level, "%s: %s %s refused: %s", self.address, method, target[:200],
                       refusal)
            if self.engine.error_listeners:
                self.engine.report_error(ConnectionRefusal(
                    refusal.code, refusal.message, refusal.detail or refusal.message,
                    self.address, target))
            await self.refuse(refusal, cors if refusal.status != 403 else [])
            return False

    async def _read_body(self, limit: int) -> bytes | None:
        """Read the request body; None when it is over ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        with trio.fail_after(HEAD_TIMEOUT):
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        return None
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:
                    raise _Refusal(400, BAD_REQUEST, "truncated body")

    async def _open_polling(self, info: RequestInfo, cors: list[tuple[str, str]]) -> None:
        if not self.engine.accepting or self.engine.full():
            raise _Refusal(503, BAD_REQUEST, "server is not accepting connections")
        await self._check_allowed(info)
        session = self.engine.new_session("polling", info)
        payload = eio.encode_payload([self.engine.open_packet(session.sid, websocket=False)])
        await self.respond(200, payload.encode(), "text/plain; charset=UTF-8", cors)

    async def _check_allowed(self, info: RequestInfo) -> None:
        refusal = await self.engine.refusal_of(info)
        if refusal is not None:
            raise _Refusal(403, (FORBIDDEN[0], refusal), "refused by allow_request")

    async def _poll(self, session: EngineSession, cors: list[tuple[str, str]]) -> None:
        self.engine.polls_in_flight += 1
        try:
            await self._answer_poll(session, cors)
        finally:
            self.engine.polls_in_flight -= 1

    async def _answer_poll(self, session: EngineSession, cors: list[tuple[str, str]]) -> None:
        outbox = session.outbox
        if session.poll_pending:
            session.close("transport error")
            raise _Refusal(400, BAD_REQUEST, "overlapping long-poll")
        session.poll_pending = True
        try:
            assert isinstance(outbox, PollingOutbox)
            if not session.noop_pending:
                await outbox.wait()
            if session.noop_pending or session.transport != "polling":
                session.noop_pending = False
                packets = [eio.Packet(eio.PacketType.NOOP)]
            else:
                packets = outbox.take(self.engine.options.max_payload)
        finally:
            session.poll_pending = False
        if session.closed:
            self.engine.closing_polls.pop(session.sid, None)
        body = eio.encode_payload(packets).encode()
        await self.respond(200, body, "text/plain; charset=UTF-8", cors)

    async def _post(self, session: EngineSession, headers: dict[str, str],
                    cors: list[tuple[str, str]]) -> None:
        limit = self.engine.options.max_payload
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            session.close("transport error")
            raise _Refusal(413, BAD_REQUEST, f"payload of {length} bytes over maxPayload")
        if session.post_pending:
            session.close("transport error")
            raise _Refusal(400, BAD_REQUEST, "overlapping POST")
        session.post_pending = True
        try:
            body = await self._read_body(limit)
            if body is None:
                session.close("transport error")
                raise _Refusal(413, BAD_REQUEST, "payload over maxPayload")
            self.engine.bytes_in += len(body)
            try:
                for packet in eio.decode_payload(body.decode("utf-8")):
                    await session.receive(packet)
            except (ProtocolError, UnicodeDecodeError) as exc:
                logger.warning("session %s: closing on malformed payload: %s", session.sid, exc)
                session.close("parse error")
                raise _Refusal(400, BAD_REQUEST, str(exc)) from None
        finally:
            session.post_pending = False
        await self.respond(200, b"ok", "text/html", cors)

    async def _websocket(self, request: h11.Request, headers: dict[str, str],
                         info: RequestInfo, sid: str | None) -> bool:
        if request.method != b"GET" or headers.get("upgrade", "").lower() != "websocket":
            raise _Refusal(400, BAD_REQUEST, "websocket transport without an upgrade")
        if sid is not None:
            # A known session that is already upgraded (or upgrading) gets the
            # handshake, then an immediate close (run_websocket), as in engine.io.
            if sid not in self.engine.sessions:
                raise _Refusal(400, SESSION_UNKNOWN)
        elif not self.engine.accepting or self.engine.full():
            raise _Refusal(503, BAD_REQUEST, "server is not accepting connections")
        else:
            await self._check_allowed(info)
        problem = handshake_error(headers)
        if problem is not None:
            raise _Refusal(400, BAD_REQUEST, problem)
        event = await self._next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise _Refusal(400, BAD_REQUEST, "websocket upgrade with a body")
        response = h11.InformationalResponse(status_code=101, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_token(headers["sec-websocket-key"]))])
        await self.stream.send_all(self.conn.send(response) or b"")
        received, _ = self.conn.trailing_data
        # Served by handle_connection once this request's frames are gone.
        self.websocket = (received, info, sid)
        return False


async def handle_connection(engine: Engine, stream: trio.SocketStream) -> None:
    """Serve one TCP connection until it closes.

    Errors caused by the peer end that connection only; cancellation
    propagates.
    """
    try:
        http = _HttpConnection(engine, stream)
        await http.serve()
        websocket = http.websocket
        del http  # the HTTP side's objects go before the WebSocket's life starts
        if websocket is not None:
            await engine.run_websocket(stream, *websocket)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except trio.TooSlowError:
        pass
    except Exception:
        logger.exception("connection handler failed")
    # trio.serve_listeners closes the stream when this returns.
