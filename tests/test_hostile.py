"""Issue 8: hostile clients. One test (or a few) per numbered attack of the issue.

Each test runs the attack against a real server over loopback and shows the bound: the
connection cut or refused with the right answer, what the server holds measured directly
(outbox queues, the process budget, live sessions, tracemalloc) with generous margins, and
a healthy client on the same server working throughout. No test asserts speed: waits are
bounded, never measured. The limits themselves are in docs/limits.md.

An attacker "from another address" connects from 127.0.0.2 (all of 127/8 is loopback on
Linux), so that per-address limits can trip for it while the healthy clients, on
127.0.0.1, are exempt (as loopback is by default).
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import socket as stdsocket
import tracemalloc
import weakref

import pytest
import trio
from e2e_app import make_app
from harness import (
    build_request,
    http_request,
    raw_http,
    read_ws_frame,
    ws_frame,
)

import roomd
from roomd.apps.relay import RelayApp
from roomd.ops.config import NamespaceConfig

EIO = "/socket.io/?EIO=4"
ATTACKER = "127.0.0.2"
MB = 1024 * 1024


def _poll(sid: str | None = None) -> str:
    return f"{EIO}&transport=polling" + (f"&sid={sid}" if sid else "")


async def _healthy_server(start_server, py_client, **kwargs):
    """A server running the e2e app, and a WebSocket client connected to it."""
    io, log = make_app(**kwargs)
    srv = await start_server(io)
    healthy = await py_client()
    await healthy.connect(srv.url, ["/"], transports=["websocket"])
    assert await healthy.call("echo", "before") == ["before"]
    return io, srv, healthy


async def _still_healthy(healthy, word: str = "after") -> None:
    assert await healthy.call("echo", word, timeout=10) == [word]


async def _open(port: int, *, local: str | None = None, rcvbuf: int | None = None
                ) -> trio.SocketStream:
    """A TCP connection to the server, from ``local`` and with a small receive buffer if asked."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, rcvbuf)
    if local is not None:
        await sock.bind((local, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _read_until_eof(stream: trio.SocketStream, timeout: float = 15) -> bytes:
    received = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return received
            if not data:
                return received
            received += data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def _ws_session(port: int, *, rcvbuf: int | None = None, local: str | None = None,
                      connect: bool = True) -> tuple[trio.SocketStream, bytearray, str]:
    """A raw WebSocket Engine.IO session (connected to "/" unless told): (stream, buf, sid)."""
    stream = await _open(port, local=local, rcvbuf=rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(build_request("GET", f"{EIO}&transport=websocket", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13"}, close=False))
    buf = bytearray()
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            assert data, "closed during the upgrade"
            buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert _status(head) == 101, head
    buf = bytearray(rest)
    opcode, payload = await read_ws_frame(stream, buf, timeout=10)
    sid = json.loads(payload[1:])["sid"]
    if connect:
        await stream.send_all(ws_frame("40"))
        opcode, payload = await read_ws_frame(stream, buf, timeout=10)
        assert payload.startswith(b"40"), payload
    return stream, buf, sid


async def _close_code(stream: trio.SocketStream, buf: bytearray, timeout: float = 15) -> int | None:
    """Read frames until the server's close frame; its code (None if the TCP stream just ended)."""
    with trio.fail_after(timeout):
        while True:
            try:
                frame = await read_ws_frame(stream, buf, timeout=timeout)
            except trio.BrokenResourceError:
                return None
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == 8:
                return int.from_bytes(payload[:2], "big")


async def _wait_for(predicate, timeout: float = 15, what: str = "condition") -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def _open_polling(port: int) -> str:
    status, _, body = await http_request(port, "GET", _poll())
    assert status == 200, body
    return json.loads(body[1:].split(b"\x1e")[0])["sid"]


# ---------------------------------------------------------------------------------------------
# 1. Upgrade requests that announce a body; idle and half-open connections
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("framing", [{"Content-Length": "10"}, {"Transfer-Encoding": "chunked"}])
async def test_1_upgrade_announcing_a_body_is_refused_at_once(start_server, py_client, framing):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    key = base64.b64encode(os.urandom(16)).decode()
    request = build_request("GET", f"{EIO}&transport=websocket", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13", **framing}, close=False)
    # The body never comes: the answer must not wait for it.
    status, _, body = await raw_http(srv.port, request, timeout=10)
    assert status == 400
    assert json.loads(body)["code"] == 3
    await _still_healthy(healthy)


async def test_1_half_open_connections_are_capped_and_timed_out(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client, max_half_open=20,
                                             head_timeout=2.0, exempt_addresses=())
    engine = io.engine
    idle = []
    try:
        # Ten say nothing (they hold no place), twenty start a head and never finish it.
        for i in range(30):
            stream = await _open(srv.port, local=ATTACKER)
            if i >= 10:
                await stream.send_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n")
            idle.append(stream)
        await _wait_for(lambda: engine.admission.half_open == 20)
        # Over the cap: a request waits its turn, not read and not refused either; it is
        # served once head_timeout has cut the unfinished heads.
        answered: list[int] = []

        async def late_request() -> None:
            status, _, _ = await raw_http(srv.port, build_request("GET", _poll()), timeout=15)
            answered.append(status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_request)
            await _wait_for(lambda: engine.turns.waiting == 1)
            assert answered == [] and engine.admission.half_open == 20
            # The healthy WebSocket client is not half-open: it works throughout.
            await _still_healthy(healthy, "during")
            # Every idle connection is cut by head_timeout, without an answer to wait for.
            for stream in idle:
                await _read_until_eof(stream)
        assert answered == [200]
        await _wait_for(lambda: engine.admission.half_open == 0)
        assert "HTTP 503" not in io.stats()["refused"]
    finally:
        for stream in idle:
            await stream.aclose()
    # New clients get in again.
    assert await _open_polling(srv.port)
    late = await py_client()
    await late.connect(srv.url, ["/"], transports=["polling"])
    assert await late.call("echo", "late") == ["late"]
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 2. A polling client that POSTs probes and never GETs
# ---------------------------------------------------------------------------------------------

async def test_2_probe_flood_over_polling_owes_one_pong(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    sid = await _open_polling(srv.port)
    session = io.engine.sessions[sid]
    body = "\x1e".join(["2probe"] * 100_000 + ["3"]).encode()  # 700 kB of pings per POST
    for _ in range(10):
        status, _, answer = await http_request(srv.port, "POST", _poll(sid), body=body)
        assert status == 200, answer
    outbox = session.outbox
    assert len(outbox._queue) <= 2  # one pong (and maybe the server's own ping)
    assert outbox._pongs == 1
    status, _, answer = await http_request(srv.port, "GET", _poll(sid))
    assert status == 200 and answer.count(b"3probe") == 1
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 3. Amplification through acks; the relay's per-socket room cap
# ---------------------------------------------------------------------------------------------

async def test_3_relay_caps_the_rooms_of_one_socket(start_server, py_client):
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/")], rooms_per_socket=100)
    srv = await start_server(io)
    client = await py_client()
    await client.connect(srv.url, ["/"], transports=["websocket"])
    for batch in range(4):
        rooms = [f"{batch}-{i}-" + "x" * 240 for i in range(25)]
        answer = await client.call("join", rooms)
        assert len(answer[0]["rooms"]) == 25 * (batch + 1) + 1  # and its own room
    answer = await client.call("join", ["one-too-many"])
    assert answer == [{"error": "a socket may be in at most 100 rooms"}]
    # Rejoining rooms it is in, or leaving and joining, stays within the cap.
    assert "rooms" in (await client.call("join", ["0-0-" + "x" * 240]))[0]
    await client.call("leave", ["0-0-" + "x" * 240])
    assert "rooms" in (await client.call("join", ["another"]))[0]


async def test_3_acks_are_bounded_like_any_outgoing_packet(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client, outbox_bytes=1 * MB)
    big = "a" * 300_000

    @io.on("big")
    async def answer_big(socket, *args):
        return big

    stream, buf, sid = await _ws_session(srv.port, rcvbuf=4096)
    engine = io.engine
    async with stream:
        # 300 asks for a 300 kB answer, none of them read: 90 MB if nothing bounded it.
        burst = b"".join(ws_frame(f'42{i}["big"]') for i in range(300))
        try:
            await stream.send_all(burst)
        except trio.BrokenResourceError:
            pass
        await _wait_for(lambda: sid not in engine.sessions)
    assert engine.budget.peak <= 1 * MB + 2 * 300_000 + 64 * 1024
    await _wait_for(lambda: engine.budget.used < 64 * 1024)
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 4. Binary packets announcing many large attachments
# ---------------------------------------------------------------------------------------------

async def test_4_attachments_are_bounded_by_max_payload_in_total(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    stream, buf, sid = await _ws_session(srv.port)
    async with stream:
        placeholders = ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(1000))
        await stream.send_all(ws_frame(f'451000-["up",{placeholders}]'))
        chunk = b"\xff" * 400_000
        try:
            for _ in range(10):  # 4 MB announced; maxPayload is 1 MB
                await stream.send_all(ws_frame(chunk))
        except trio.BrokenResourceError:
            pass
        assert await _close_code(stream, buf) == 1002
    connection = io._connections.get(sid)
    assert connection is None or not connection.decoder._attachments
    await _wait_for(lambda: sid not in io.engine.sessions)
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 5. A closed connection frees its memory at once, not when the cycle collector runs
# ---------------------------------------------------------------------------------------------

@pytest.mark.deadline(120)
async def test_5_closed_connections_are_freed_without_the_collector(start_server, py_client):
    io = roomd.Server()  # the e2e app keeps every socket in its log: not this one

    @io.on("connection")
    async def joined(socket):
        await socket.join(["a", "b"])

        @socket.on("echo")
        async def echo(*args):
            return args

    srv = await start_server(io)
    healthy = await py_client()
    await healthy.connect(srv.url, ["/"], transports=["websocket"])

    engine = io.engine
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        sessions = []
        streams = []
        for _ in range(10):
            stream, buf, sid = await _ws_session(srv.port)
            # A binary packet waiting for attachments: 900 kB held by this connection.
            await stream.send_all(ws_frame('452-["up",{"_placeholder":true,"num":0},'
                                           '{"_placeholder":true,"num":1}]'))
            await stream.send_all(ws_frame(b"\x01" * 900_000))
            streams.append(stream)
            sessions.append(weakref.ref(engine.sessions[sid]))
        await _wait_for(lambda: all(
            io._connections[s().sid].decoder._attachments for s in sessions))
        held = tracemalloc.get_traced_memory()[0] - baseline
        assert held > 9 * 900_000  # the attack's memory is really there
        for stream in streams:
            await stream.aclose()
        del streams, stream
        await _wait_for(lambda: all(s() is None or s().closed for s in sessions))
        await _wait_for(lambda: len(io._connections) == 1)  # the healthy client's only
        # No gc.collect(): everything of those connections went by reference counting.
        await _wait_for(lambda: all(s() is None for s in sessions), what="sessions freed")
        left = tracemalloc.get_traced_memory()[0] - baseline
        assert left < 2 * MB, f"{left} bytes still traced after the connections closed"
    finally:
        tracemalloc.stop()
        gc.enable()
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 6. Empty continuation frames
# ---------------------------------------------------------------------------------------------

async def test_6_empty_continuation_frames_are_bounded(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    stream, buf, sid = await _ws_session(srv.port)
    async with stream:
        empty = ws_frame(b"", opcode=0, fin=False)
        try:
            await stream.send_all(ws_frame("4", fin=False))
            for _ in range(100):
                await stream.send_all(empty * 1000)  # 100,000 frames in all
        except trio.BrokenResourceError:
            pass
        assert await _close_code(stream, buf) == 1009
    await _wait_for(lambda: sid not in io.engine.sessions)
    await _still_healthy(healthy)


async def test_6_an_unfinished_message_is_bounded_in_time(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client, body_timeout=1.0,
                                             ping_interval=60, ping_timeout=60)
    stream, buf, sid = await _ws_session(srv.port)
    async with stream:
        await stream.send_all(ws_frame("4", fin=False))
        # One byte at a time (and WebSocket pings): only the message's deadline ends it.
        with trio.fail_after(30):
            while sid in io.engine.sessions:
                try:
                    await stream.send_all(ws_frame(b"x", opcode=0, fin=False)
                                          + ws_frame(b"", opcode=9))
                except trio.BrokenResourceError:
                    break
                await trio.sleep(0.1)
        assert await _close_code(stream, buf) == 1008
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 7. A long-poll answer the client never reads
# ---------------------------------------------------------------------------------------------

async def test_7_unread_long_poll_answer_times_out(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client, send_timeout=1.0)
    sid = await _open_polling(srv.port)
    status, _, _ = await http_request(srv.port, "POST", _poll(sid), body=b"40")
    assert status == 200
    status, _, body = await http_request(srv.port, "GET", _poll(sid))
    assert body.startswith(b"40")
    # 12 MB for this client: more than the kernel buffers of both ends can hold.
    socket = io.sockets._sockets[[s for s in io.sockets._sockets
                                  if io.sockets._sockets[s]._connection.session.sid == sid][0]]
    await socket.emit("big", "b" * (12 * MB))
    stream = await _open(srv.port, rcvbuf=4096)
    async with stream:
        await stream.send_all(build_request("GET", _poll(sid), close=False))
        # Never read: the server gives up after send_timeout and closes the session.
        await _wait_for(lambda: sid not in io.engine.sessions, timeout=30)
    await _wait_for(lambda: io.engine.budget.used < 64 * 1024)
    await _still_healthy(healthy)


async def test_7_websocket_reader_that_never_reads_is_cut_in_time(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client, send_timeout=1.0,
                                             ping_interval=0.5, ping_timeout=60)
    stream, buf, sid = await _ws_session(srv.port, rcvbuf=4096)
    engine = io.engine
    async with stream:
        socket = [s for s in io.sockets._sockets.values()
                  if s._connection.session.sid == sid][0]
        await socket.emit("big", "b" * (3 * MB))  # within outbox_bytes: never a slow consumer
        # It answers every ping without reading, so the heartbeat alone would keep it forever.
        with trio.fail_after(30):
            while sid in engine.sessions:
                try:
                    await stream.send_all(ws_frame("3"))
                except trio.BrokenResourceError:
                    break
                await trio.sleep(0.2)
        await _wait_for(lambda: sid not in engine.sessions)
    await _wait_for(lambda: engine.budget.used < 64 * 1024)
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 8. Ping floods and readers that never read
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ping", ["websocket", "engine.io"])
async def test_8_ping_flood_never_queues_pongs(start_server, py_client, ping):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    stream, buf, sid = await _ws_session(srv.port, rcvbuf=4096)
    session = io.engine.sessions[sid]
    outbox = session.outbox
    frame = ws_frame(b"x" * 100, opcode=9) if ping == "websocket" else ws_frame("2probe")
    peak = 0
    async with stream:
        for _ in range(200):  # 20,000 pings, about 2 MB of pongs owed
            await stream.send_all(frame * 100)
            peak = max(peak, outbox.queued_bytes)
            await trio.sleep(0)
        await _still_healthy(healthy, "during")
        assert sid in io.engine.sessions  # pinging is allowed, just not amplified
        peak = max(peak, outbox.queued_bytes)
    assert peak <= 64 * 1024, peak
    await _still_healthy(healthy)


@pytest.mark.deadline(120)
async def test_8_slow_consumers_are_cut_by_bytes(start_server, py_client):
    io, srv, healthy = await _healthy_server(start_server, py_client, outbox_bytes=2 * MB)
    engine = io.engine
    readers = [await _ws_session(srv.port, rcvbuf=4096) for _ in range(3)]
    message = "m" * 900_000
    try:
        for i in range(30):  # 27 MB to each reader that never reads
            await io.emit("news", i, message)
            event = await healthy.next_event("news", timeout=20)
            assert event.args[0] == i
            if all(sid not in engine.sessions for _, _, sid in readers):
                break
        await _wait_for(lambda: all(sid not in engine.sessions for _, _, sid in readers))
    finally:
        for stream, _, _ in readers:
            await stream.aclose()
    # Each reader held at most outbox_bytes plus one message; shared frames count per reader.
    assert engine.budget.peak <= 3 * (2 * MB + 900_100) + 2 * 900_100
    await _wait_for(lambda: engine.budget.used < 64 * 1024)
    await _still_healthy(healthy)


# ---------------------------------------------------------------------------------------------
# 9. Per-address limits: concurrent connections, new sessions; X-Forwarded-For
# ---------------------------------------------------------------------------------------------

async def _request_from(port: int, local: str, request: bytes) -> bytes:
    stream = await _open(port, local=local)
    async with stream:
        await stream.send_all(request)
        return await _read_until_eof(stream)


async def test_9_new_sessions_per_address_are_rate_limited(start_server, py_client):
    io, srv, healthy = await _healthy_server(
        start_server, py_client, sessions_per_ip_rate=1.0, sessions_per_ip_burst=5,
        exempt_addresses=("127.0.0.1",))
    before = len(io.engine.sessions)
    statuses = []
    retry = []
    for _ in range(40):
        answer = await _request_from(srv.port, ATTACKER, build_request("GET", _poll()))
        statuses.append(_status(answer))
        if b"Retry-After: " in answer:
            retry.append(int(answer.split(b"Retry-After: ")[1].split(b"\r\n")[0]))
    assert statuses.count(200) <= 5 + 2  # the burst, and what refilled meanwhile
    assert statuses.count(429) >= 30 and set(statuses) <= {200, 429}
    assert retry and all(r >= 1 for r in retry)
    assert len(io.engine.sessions) - before <= 7
    # The exempt address (the healthy clients') is not limited.
    for _ in range(10):
        assert await _open_polling(srv.port)
    await _still_healthy(healthy)


async def test_9_concurrent_connections_per_address_are_capped(start_server, py_client):
    io, srv, healthy = await _healthy_server(
        start_server, py_client, connections_per_ip=5, exempt_addresses=("127.0.0.1",))
    held = [await _ws_session(srv.port, local=ATTACKER) for _ in range(5)]
    try:
        answer = await _request_from(srv.port, ATTACKER, build_request("GET", _poll()))
        assert _status(answer) == 429 and b"Retry-After: 5" in answer
        await _still_healthy(healthy, "during")
    finally:
        for stream, _, _ in held:
            await stream.aclose()
    await _wait_for(lambda: ATTACKER not in io.engine.admission.connections)
    answer = await _request_from(srv.port, ATTACKER, build_request("GET", _poll()))
    assert _status(answer) == 200
    await _still_healthy(healthy)


@pytest.mark.parametrize("trusted", [True, False])
async def test_9_forwarded_for_counts_only_behind_a_trusted_proxy(start_server, trusted):
    srv = await start_server(sessions_per_ip_rate=1.0, sessions_per_ip_burst=3,
                             exempt_addresses=(),
                             trusted_proxies=("127.0.0.1",) if trusted else ())
    engine = srv.io.engine

    async def handshake(forwarded: str) -> int:
        request = build_request("GET", _poll(), headers={"X-Forwarded-For": forwarded})
        return (await raw_http(srv.port, request))[0]

    assert [await handshake("203.0.113.7") for _ in range(3)] == [200] * 3
    assert await handshake("203.0.113.7") == 429
    # Another forwarded client is another address only when the proxy is trusted.
    assert await handshake("10.1.2.3, 203.0.113.8") == (200 if trusted else 429)
    addresses = {s.request.address for s in engine.sessions.values()}
    assert addresses == ({"203.0.113.7", "203.0.113.8"} if trusted else {"127.0.0.1"})


# ---------------------------------------------------------------------------------------------
# 10. Malformed input gets the right answer, and is logged as counts
# ---------------------------------------------------------------------------------------------

def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_10_bodies_h11_rejects_get_400_without_a_traceback(start_server, py_client, caplog):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    sid = await _open_polling(srv.port)
    bad_chunk = build_request("POST", _poll(sid), headers={"Transfer-Encoding": "chunked"},
                              body=b"zz\r\nhello\r\n0\r\n\r\n")
    status, _, body = await raw_http(srv.port, bad_chunk)
    assert status == 400 and json.loads(body)["code"] == 3
    # A client closing mid-body: nobody to answer, and nothing to log as an error.
    sid = await _open_polling(srv.port)
    stream = await _open(srv.port)
    await stream.send_all(build_request("POST", _poll(sid), headers={"Content-Length": "100"},
                                        body=b"4hello"))
    await stream.aclose()
    await _wait_for(lambda: sid not in io.engine.sessions)
    assert _errors(caplog) == []
    await _still_healthy(healthy)


@pytest.mark.parametrize("bad", ["engine.io", "frame"])
async def test_10_websocket_protocol_error_sends_a_close_frame(start_server, py_client, bad):
    io, srv, healthy = await _healthy_server(start_server, py_client)
    stream, buf, sid = await _ws_session(srv.port)
    async with stream:
        if bad == "engine.io":
            await stream.send_all(ws_frame("9 not a packet"))
        else:
            await stream.send_all(ws_frame("4x", mask=False))
        assert await _close_code(stream, buf) == 1002
    await _still_healthy(healthy)


async def test_10_handshake_answers_follow_the_rfcs(start_server):
    srv = await start_server()
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key}
    status, headers, _ = await raw_http(srv.port, build_request(
        "GET", f"{EIO}&transport=websocket", headers={**upgrade, "Sec-WebSocket-Version": "8"}))
    assert status == 426 and headers["sec-websocket-version"] == "13"
    old = build_request("GET", f"{EIO}&transport=websocket",
                        headers={**upgrade, "Sec-WebSocket-Version": "13"}, close=False)
    old = old.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    status, _, _ = await raw_http(srv.port, old)
    assert status == 400
    # Content-Length and Transfer-Encoding together: answered, and the connection closed.
    both = build_request("POST", _poll("x"), headers={
        "Content-Length": "5", "Transfer-Encoding": "chunked"}, body=b"0\r\n\r\n", close=False)
    stream = await _open(srv.port)
    async with stream:
        await stream.send_all(both + build_request("GET", _poll(), close=False))
        received = await _read_until_eof(stream)
    assert _status(received) == 400
    assert received.count(b"HTTP/1.1 ") == 1  # the pipelined request was not served


async def test_10_repeated_protocol_errors_are_logged_as_counts(start_server, caplog):
    caplog.set_level(logging.INFO)
    srv = await start_server()
    stream, buf, sid = await _ws_session(srv.port)
    async with stream:
        await stream.send_all(ws_frame("40") * 2000)  # duplicate CONNECTs
        await stream.send_all(ws_frame('42["ping"]'))
        await trio.sleep(0.5)
    for _ in range(50):
        await raw_http(srv.port, b"NOT HTTP AT ALL\r\n\r\n")
    duplicate = [r for r in caplog.records if "duplicate CONNECT" in r.getMessage()]
    malformed = [r for r in caplog.records if "malformed HTTP" in r.getMessage()]
    assert 1 <= len(duplicate) <= 2
    assert 1 <= len(malformed) <= 2


# ---------------------------------------------------------------------------------------------
# 11. The admin socket's emit with numbers JSON cannot carry, and deep nesting
# ---------------------------------------------------------------------------------------------

async def test_11_admin_emit_refuses_what_json_cannot_carry(start_server, py_client, tmp_path,
                                                             caplog, nursery):
    from roomd.ops.admin import serve_admin

    io, srv, healthy = await _healthy_server(start_server, py_client)
    path = f"/tmp/roomd-hostile-{os.getpid()}-{id(tmp_path)}.sock"
    await nursery.start(serve_admin, io, path)
    stream = await trio.open_unix_socket(path)
    lines = [
        b'{"cmd": "emit", "namespace": "/", "event": "e", "args": [NaN]}\n',
        b'{"cmd": "emit", "namespace": "/", "event": "e", "args": [1e999]}\n',
        b'{"cmd": "emit", "namespace": "/", "event": "e", "args": [-Infinity]}\n',
        b'{"cmd": "emit", "namespace": "/", "event": "e", "args": ' + b"[" * 150
        + b"]" * 150 + b"}\n",
        b"[" * 100_000 + b"\n",
        b'{"cmd": "ping"}\n',
    ]
    async with stream:
        await stream.send_all(b"".join(lines))
        received = b""
        with trio.fail_after(10):
            while received.count(b"\n") < len(lines):
                received += await stream.receive_some(65536)
    answers = [json.loads(line) for line in received.splitlines()]
    assert "NaN is not a JSON number" in answers[0]["error"]
    assert "1e999 is out of range" in answers[1]["error"]
    assert "-Infinity is not a JSON number" in answers[2]["error"]
    assert "nested deeper than 100 levels" in answers[3]["error"]
    assert "nested too deeply" in answers[4]["error"]
    assert answers[5] == {"ok": True, "pong": True}
    assert _errors(caplog) == []
    assert not any("internal error" in json.dumps(a) for a in answers)
    await _still_healthy(healthy)
