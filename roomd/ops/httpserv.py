"""A small HTTP/1.1 server on trio and h11, for roomd's side listeners.

The metrics endpoint and the HTTP API each run one (:func:`serve_http`), on
their own address, away from the Engine.IO front door. A handler gets a
:class:`Request` whose body is already read and bounded, and returns a
:class:`Response`.

Bad input never reaches the handler and never raises out of the server: a
malformed request, a head over 16 KiB, a body over ``max_body`` bytes (by its
Content-Length or as it arrives) or a client that stalls gets an HTTP error
with a JSON body ``{"error": {"code": "...", "message": "..."}}`` and the
connection is closed. An exception in a handler is logged and answered 500;
the listener keeps serving.
"""

from __future__ import annotations

import dataclasses
import http
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable

import h11
import trio

logger = logging.getLogger("roomd.http")

MAX_HEAD_BYTES = 16 * 1024
# A request must arrive whole within this long; an idle keep-alive connection is closed after
# the second figure. Both bound what a slow or silent client can hold.
REQUEST_TIMEOUT = 30.0
KEEPALIVE_TIMEOUT = 60.0
RECEIVE_SIZE = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, value: object) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode() + b"\n")


def error_response(status: int, code: str, message: str) -> Response:
    """The one error shape of roomd's HTTP listeners."""
    return json_response(status, {"error": {"code": code, "message": message}})


class _Reject(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Connection:
    def __init__(self, stream: trio.SocketStream, handler: Handler, max_body: int) -> None:
        self.stream = stream
        self.handler = handler
        self.max_body = max_body
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.head = False

    async def _event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def _send(self, response: Response, close: bool) -> None:
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(response.body))), ("Cache-Control", "no-store"),
                   *response.headers]
        if close:
            headers.append(("Connection", "close"))
        data = self.conn.send(h11.Response(status_code=response.status, headers=headers,
                                           reason=http.HTTPStatus(response.status).phrase))
        if not self.head:  # a HEAD response announces the body's length but has none
            data = (data or b"") + (self.conn.send(h11.Data(data=response.body)) or b"")
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def serve(self) -> None:
        while True:
            with trio.move_on_after(KEEPALIVE_TIMEOUT):
                try:
                    event = await self._event()
                except h11.RemoteProtocolError as exc:
                    await self._raw_error(exc.error_status_hint or 400, str(exc))
                    return
            if not isinstance(event, h11.Request):
                return  # closed, paused, or idle too long
            self.head = event.method == b"HEAD"
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    request = await self._read(event)
            except _Reject as reject:
                await self._send(reject.response, close=True)
                return
            except trio.TooSlowError:
                await self._send(error_response(408, "timeout", "request not received in time"),
                                 close=True)
                return
            except h11.RemoteProtocolError as exc:
                await self._send(error_response(400, "bad_request", f"malformed HTTP: {exc}"),
                                 close=True)
                return
            response = await self._handle(request)
            await self._send(response, close=False)
            if self.conn.our_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read(self, event: h11.Request) -> Request:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if head > MAX_HEAD_BYTES:
            raise _Reject(error_response(431, "head_too_large", "request head too large"))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise _Reject(error_response(
                413, "body_too_large",
                f"request body of {length} bytes is over the limit of {self.max_body} bytes"))
        chunks: list[bytes] = []
        size = 0
        while True:
            part = await self._event()
            if isinstance(part, h11.Data):
                size += len(part.data)
                if size > self.max_body:
                    raise _Reject(error_response(
                        413, "body_too_large",
                        f"request body is over the limit of {self.max_body} bytes"))
                chunks.append(part.data)
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise _Reject(error_response(400, "bad_request", "truncated request body"))
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        return Request(event.method.decode("latin-1"), urllib.parse.unquote(path),
                       dict(urllib.parse.parse_qsl(query, keep_blank_values=True)), headers,
                       b"".join(chunks))

    async def _handle(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except Exception:
            logger.exception("%s %s: handler failed", request.method, request.path[:200])
            return error_response(500, "internal", "internal error (logged by the server)")

    async def _raw_error(self, status: int, detail: str) -> None:
        # h11 will not send once the peer's side is broken: write the response by hand.
        code = "head_too_large" if status == 431 else "bad_request"
        body = json.dumps({"error": {"code": code, "message": f"malformed HTTP: {detail}"}}
                          ).encode()
        head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            await self.stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def split_address(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def serve_http(handler: Handler, listen: str, *, name: str, max_body: int = 65536,
                     task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Serve ``handler`` on ``listen`` ("HOST:PORT", port 0 for any) until cancelled.

    ``task_status.started`` gets the bound (host, port). Raises OSError when the
    address cannot be bound. ``name`` is what the log calls this listener.
    """
    host, port = split_address(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await _Connection(stream, handler, max_body).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("%s: connection failed", name)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        where = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        logger.info("%s listening on %s", name, where)
        task_status.started((bound[0], bound[1]))
