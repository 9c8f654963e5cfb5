"""Issue 2: limits and timeouts, with real and raw clients over real sockets.

- maxPayload on WebSocket (close) and on polling (413 and the session closed), without the
  server's memory growing by the payload's size (a 50 MB body sent in chunks; the server
  runs in this process, so its RSS is this process's RSS);
- heartbeats: a client that stops answering pings is dropped within pingInterval +
  pingTimeout and its ``disconnect`` handler sees "ping timeout";
- connect_timeout: an Engine.IO session that never sends CONNECT is closed;
- CORS with an allow-list; a custom path.
"""

from __future__ import annotations

import json
import struct

import h11
import pytest
import trio
from e2e_app import make_app
from harness import (
    ConnectError,
    HarnessError,
    build_request,
    http_request,
    open_raw_ws,
    raw_ws_upgrade,
    read_ws_frame,
    ws_frame,
)

EIO = "/socket.io/?EIO=4"
MAX_PAYLOAD = 1_000_000
BIG = 50 * 1024 * 1024       # what the bad client sends (or says it will)
CHUNK = b"a" * 65536         # one buffer, sent over and over: the test holds no 50 MB
MAX_GROWTH = 10 * 1024 * 1024


def _poll(sid: str | None = None) -> str:
    return f"{EIO}&transport=polling" + (f"&sid={sid}" if sid else "")


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssWatch:
    """The peak RSS of this process (server included) while the block runs, sampled."""

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _rss())
            await trio.sleep(0.002)

    def growth(self) -> int:
        return self.peak - self.base


async def _with_rss_watch(body):
    watch = RssWatch()
    watch.base = watch.peak = _rss()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch._sample)
        result = await body()
        watch.peak = max(watch.peak, _rss())
        nursery.cancel_scope.cancel()
    return watch, result


async def _healthy(start_server, py_client, **server_kwargs):
    io, log = make_app(**server_kwargs)
    srv = await start_server(io)
    healthy = await py_client()
    await healthy.connect(srv.url, ["/"], transports=["websocket"])
    return io, log, srv, healthy


async def _wait_gone(io, sid: str, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while sid in io.engine.sessions:
            await trio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# maxPayload
# ---------------------------------------------------------------------------------------------

def _frame_head(length: int, opcode: int = 1, fin: bool = True) -> bytes:
    """A masked client frame head with an all-zero mask: the payload goes as it is."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return head + b"\0\0\0\0"


async def _send_until_refused(stream, pieces) -> int:
    """Send the pieces until the server stops reading (or all are sent); bytes sent."""
    sent = 0
    try:
        for piece in pieces:
            await stream.send_all(piece)
            sent += len(piece)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


def _ws_pieces(kind: str):
    if kind == "one-frame":
        yield _frame_head(BIG) + b"4"
        for _ in range(BIG // len(CHUNK)):
            yield CHUNK
    else:  # one message in many small frames, each under the limit
        first = True
        for _ in range(BIG // len(CHUNK)):
            yield _frame_head(len(CHUNK), opcode=1 if first else 0, fin=False) + CHUNK
            first = False


@pytest.mark.parametrize("kind", ["one-frame", "fragmented"])
async def test_websocket_payload_over_max_payload(start_server, py_client, kind):
    io, log, srv, healthy = await _healthy(start_server, py_client, max_payload=MAX_PAYLOAD)
    stream, status, leftover = await raw_ws_upgrade(srv.port)
    async with stream:
        assert status == 101
        buf = bytearray(leftover)
        opcode, payload = await read_ws_frame(stream, buf)
        sid = json.loads(payload[1:])["sid"]
        await stream.send_all(ws_frame("40"))
        opcode, payload = await read_ws_frame(stream, buf)
        sock_id = json.loads(payload[2:])["sid"]

        async def attack():
            sent = await _send_until_refused(stream, _ws_pieces(kind))
            # the answer is a close: a close frame (1009 "message too big") and/or EOF
            codes = []
            with trio.fail_after(10):
                while True:
                    try:
                        got = await read_ws_frame(stream, buf)
                    except trio.BrokenResourceError:
                        break
                    if got is None:
                        break
                    if got[0] == 8:
                        codes.append(struct.unpack("!H", got[1][:2])[0] if got[1] else None)
                        break
            return sent, codes

        watch, (sent, codes) = await _with_rss_watch(attack)
    assert codes in ([], [1009]), codes
    assert sent < BIG, "the server read the whole oversized message"
    assert watch.growth() < MAX_GROWTH, f"RSS grew by {watch.growth()} bytes"
    await _wait_gone(io, sid)
    await log.wait("disconnect", "/", sock_id)
    assert await healthy.call("sum", 2, 3) == [5]


async def _polling_session(port: int) -> tuple[str, str]:
    status, _, body = await http_request(port, "GET", _poll())
    sid = json.loads(body[1:])["sid"]
    assert (await http_request(port, "POST", _poll(sid), body=b"40"))[:1] == (200,)
    status, _, body = await http_request(port, "GET", _poll(sid))
    assert body.startswith(b"40{"), body
    return sid, json.loads(body[2:])["sid"]


async def _upload(port: int, head: bytes, pieces) -> tuple[int | None, dict, bytes, int]:
    """Send a request head, then body pieces until refused; read the response (if the
    connection was not reset first). Returns (status or None, headers, body, bytes sent)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        sent = 0
        response: list = []

        async def reader():
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
            status, headers, body = None, {}, bytearray()
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                        headers = {k.decode(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
            except (trio.BrokenResourceError, h11.RemoteProtocolError):
                pass  # reset by the server: "answered by a close"
            response.append((status, headers, bytes(body)))

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                sent = await _send_until_refused(stream, pieces)
    status, headers, body = response[0]
    return status, headers, body, sent


def _chunked(total: int):
    for _ in range(total // len(CHUNK)):
        yield b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_polling_payload_over_max_payload(start_server, py_client, framing):
    io, log, srv, healthy = await _healthy(start_server, py_client, max_payload=MAX_PAYLOAD)
    sid, sock_id = await _polling_session(srv.port)
    if framing == "content-length":
        head = build_request("POST", _poll(sid), headers={"Content-Length": str(BIG)})
        pieces = (CHUNK for _ in range(BIG // len(CHUNK)))
    else:
        head = build_request("POST", _poll(sid), headers={"Transfer-Encoding": "chunked"})
        pieces = _chunked(BIG)

    async def attack():
        return await _upload(srv.port, head, pieces)

    watch, (status, headers, body, sent) = await _with_rss_watch(attack)
    assert sent < BIG, "the server read the whole oversized body"
    if status is not None:  # else the connection was reset before the answer was read
        assert status in (413, 400), (status, body)
        err = json.loads(body)
        assert isinstance(err["code"], int) and isinstance(err["message"], str)
    assert watch.growth() < MAX_GROWTH, f"RSS grew by {watch.growth()} bytes"
    # the session is closed
    await _wait_gone(io, sid)
    assert (await log.wait("disconnect", "/", sock_id)).args == ["transport error"]
    status, _, body = await http_request(srv.port, "GET", _poll(sid))
    assert status == 400 and json.loads(body)["code"] == 1
    assert await healthy.call("sum", 2, 3) == [5]


async def test_stock_clients_over_max_payload_are_disconnected(start_server, node, py_client):
    """A real client sending more than maxPayload is disconnected; others are not."""
    io, log, srv, healthy = await _healthy(start_server, py_client, max_payload=100_000)
    big = b"x" * 200_000
    n = await node.connect(srv.url, "/", transports=["websocket"])
    assert await n.emit_with_ack("kiss", b"small") == [b"ack:small", {"nested": b"small"}]
    await n.emit("kiss", big)
    assert (await n.next_event("disconnect")).args == ["transport close"]
    await log.wait("disconnect", "/", n.sid)
    p = await py_client()
    await p.connect(srv.url, ["/"], transports=["polling"])
    sid = p.get_sid("/")
    try:
        await p.emit("kiss", big)
    except Exception:
        pass  # the POST is refused: python-engineio may report it
    await log.wait("disconnect", "/", sid)
    assert await healthy.call("sum", 2, 3) == [5]


# ---------------------------------------------------------------------------------------------
# Heartbeat
# ---------------------------------------------------------------------------------------------

PING_INTERVAL, PING_TIMEOUT = 0.3, 0.3
SLACK = 1.0  # scheduling slack on a loaded machine


async def test_silent_websocket_client_is_dropped_with_ping_timeout(start_server, py_client):
    io, log, srv, healthy = await _healthy(start_server, py_client, ping_interval=PING_INTERVAL,
                                           ping_timeout=PING_TIMEOUT)
    async with open_raw_ws(srv.port) as silent, open_raw_ws(srv.port) as answering:
        await answering.handshake()
        await answering.send("40")
        assert (await answering.recv_skip_pings()).startswith("40{")
        answering_id = log.items[-1].sid
        replies: list = []

        async def keep_answering():  # a client that does answer pings, all along
            while True:
                replies.append(await answering.recv_skip_pings(timeout=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_answering)
            opened = await silent.handshake()
            assert opened["pingInterval"] == 300 and opened["pingTimeout"] == 300
            start = trio.current_time()
            await silent.send("40")
            assert (await silent.recv()).startswith("40{")
            sock_id = log.items[-1].sid

            # the silent client gets a ping, never answers, and is dropped
            assert await silent.recv(timeout=PING_INTERVAL + SLACK) == "2"
            seen = await log.wait("disconnect", "/", sock_id,
                                  timeout=PING_INTERVAL + PING_TIMEOUT + SLACK)
            assert seen.args == ["ping timeout"]
            elapsed = trio.current_time() - start
            assert PING_TIMEOUT <= elapsed <= PING_INTERVAL + PING_TIMEOUT + SLACK, elapsed
            await silent.wait_closed()
            assert opened["sid"] not in io.engine.sessions

            # clients that answer pings stay, well past a few heartbeats
            await trio.sleep(3 * (PING_INTERVAL + PING_TIMEOUT))
            await answering.send('421["sum",1,2]')
            with trio.fail_after(5):
                while "431[3]" not in replies:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert log.find("disconnect", sid=answering_id) == []
    assert healthy.connected
    assert await healthy.call("sum", 2, 3) == [5]
    assert log.find("disconnect", sid=healthy.get_sid("/")) == []


async def test_silent_polling_client_is_dropped_with_ping_timeout(start_server, py_client):
    io, log, srv, healthy = await _healthy(start_server, py_client, ping_interval=PING_INTERVAL,
                                           ping_timeout=PING_TIMEOUT)
    start = trio.current_time()
    sid, sock_id = await _polling_session(srv.port)
    seen = await log.wait("disconnect", "/", sock_id, timeout=PING_INTERVAL + PING_TIMEOUT + SLACK)
    assert seen.args == ["ping timeout"]
    assert trio.current_time() - start <= PING_INTERVAL + PING_TIMEOUT + SLACK
    assert sid not in io.engine.sessions
    assert await healthy.call("sum", 2, 3) == [5]


# ---------------------------------------------------------------------------------------------
# connect_timeout
# ---------------------------------------------------------------------------------------------

CONNECT_TIMEOUT = 0.3


async def test_connect_timeout_over_websocket(start_server, py_client):
    io, log, srv, healthy = await _healthy(start_server, py_client,
                                           connect_timeout=CONNECT_TIMEOUT)
    async with open_raw_ws(srv.port) as ws:
        opened = await ws.handshake()
        start = trio.current_time()
        await ws.wait_closed(timeout=CONNECT_TIMEOUT + SLACK)
        assert trio.current_time() - start >= CONNECT_TIMEOUT * 0.5
    assert opened["sid"] not in io.engine.sessions
    await trio.sleep(CONNECT_TIMEOUT)  # the healthy client (it connected) is not touched
    assert await healthy.call("sum", 2, 3) == [5]


async def test_connect_timeout_over_polling(start_server, py_client):
    io, log, srv, healthy = await _healthy(start_server, py_client,
                                           connect_timeout=CONNECT_TIMEOUT)
    status, _, body = await http_request(srv.port, "GET", _poll())
    sid = json.loads(body[1:])["sid"]
    await _wait_gone(io, sid, timeout=CONNECT_TIMEOUT + SLACK)
    status, _, body = await http_request(srv.port, "GET", _poll(sid))
    assert status == 400 and json.loads(body) == {"code": 1, "message": "Session ID unknown"}
    assert await healthy.call("sum", 2, 3) == [5]


# ---------------------------------------------------------------------------------------------
# CORS
# ---------------------------------------------------------------------------------------------

OK, EVIL = "http://ok.example", "http://evil.example"


async def test_cors_allow_list(start_server, py_client):
    io, log = make_app(cors_origins=[OK])
    srv = await start_server(io)

    # handshake from an allowed origin
    status, headers, body = await http_request(srv.port, "GET", _poll(), headers={"Origin": OK})
    assert status == 200 and body.startswith(b"0{")
    assert headers["access-control-allow-origin"] == OK
    assert headers.get("access-control-allow-credentials") == "true"
    sid = json.loads(body[1:])["sid"]
    status, headers, body = await http_request(srv.port, "POST", _poll(sid), body=b"40",
                                               headers={"Origin": OK})
    assert (status, body) == (200, b"ok")
    assert headers["access-control-allow-origin"] == OK

    # a bad origin: 403 with a JSON body, no CORS headers
    for method, target, body in (("GET", _poll(), b""), ("POST", _poll(sid), b"40")):
        status, headers, resp = await http_request(srv.port, method, target, body=body,
                                                   headers={"Origin": EVIL})
        assert status == 403, (method, status)
        assert json.loads(resp) == {"code": 4, "message": "Forbidden"}
        assert "access-control-allow-origin" not in headers
    stream, status, _ = await raw_ws_upgrade(srv.port, extra_headers={"Origin": EVIL})
    async with stream:
        assert status == 403

    # preflight
    status, headers, _ = await http_request(
        srv.port, "OPTIONS", _poll(),
        headers={"Origin": OK, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"})
    assert status in (200, 204)
    assert headers["access-control-allow-origin"] == OK
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"].lower()
    status, headers, _ = await http_request(srv.port, "OPTIONS", _poll(),
                                            headers={"Origin": EVIL,
                                                     "Access-Control-Request-Method": "POST"})
    assert status == 403 and "access-control-allow-origin" not in headers

    # the stock client: allowed origin works (polling and websocket), a bad one is refused
    good = await py_client()
    await good.connect(srv.url, ["/"], transports=["polling"], headers={"Origin": OK})
    assert await good.call("sum", 1, 2) == [3]
    good_ws = await py_client()
    await good_ws.connect(srv.url, ["/"], transports=["websocket"], headers={"Origin": OK})
    assert await good_ws.call("sum", 1, 2) == [3]
    bad = await py_client()
    with pytest.raises(ConnectError):
        await bad.connect(srv.url, ["/"], transports=["polling"], headers={"Origin": EVIL})
    # no Origin (not a browser): allowed
    plain = await py_client()
    await plain.connect(srv.url, ["/"], transports=["websocket"])
    assert await plain.call("sum", 1, 2) == [3]


# ---------------------------------------------------------------------------------------------
# A custom path
# ---------------------------------------------------------------------------------------------

async def test_custom_path(start_server, node, py_client):
    io, log = make_app(path="/rt/")
    srv = await start_server(io)
    a = await node.connect(srv.url, "/", path="/rt/")  # default transports, then the upgrade
    assert await a.wait_upgrade() == "websocket"
    b = await node.connect(srv.url, "/orders", path="/rt/")
    assert await a.emit_with_ack("sum", 1, 2) == [3]
    assert await b.emit_with_ack("kiss", b"\x00") == [b"ack:\x00", {"nested": b"\x00"}]
    c = await node.connect(srv.url, "/", path="/rt/", transports=["websocket"], force_new=True)
    assert await c.emit_with_ack("sum", 2, 2) == [4]
    p = await py_client()
    await p.connect(srv.url, ["/"], transports=["polling"], socketio_path="rt")
    assert await p.call("sum", 3, 3) == [6]

    # the default path is not served any more
    for target, extra in ((_poll(), {}),
                          (f"{EIO}&transport=websocket", {"Upgrade": "websocket",
                                                          "Connection": "Upgrade",
                                                          "Sec-WebSocket-Key": "x" * 24,
                                                          "Sec-WebSocket-Version": "13"})):
        status, headers, body = await http_request(srv.port, "GET", target, headers=extra)
        assert status in (400, 404), status
        err = json.loads(body)
        assert isinstance(err["code"], int) and isinstance(err["message"], str)
    with pytest.raises((ConnectError, HarnessError)):
        await node.connect(srv.url, "/", force_new=True, timeout=3)
    assert await a.emit_with_ack("sum", 1, 1) == [2]
