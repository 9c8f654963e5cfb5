"""The trio client's Python API (roomd.connect), against an in-process roomd.Server on both
transports, and against fake servers that misbehave on purpose: silent after the
handshake, closing mid-frame or mid-binary-packet, sending garbage, never answering
CONNECT, closing a polling response short. The fake WebSocket server is wsproto's server
side over a trio TCP listener (the oracle the project already uses); the fake polling
server is h11's server side."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest
import trio
import wsproto
import wsproto.events as wse
from conftest import Served

import roomd
from roomd.client import ReceivedEvent

BOTH = pytest.mark.parametrize("transport", ["websocket", "polling"])
OPEN = {"sid": "fake", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000,
        "maxPayload": 1000000}
PH0 = '{"_placeholder":true,"num":0}'


def echo_server(**kwargs: Any) -> roomd.Server:
    io = roomd.Server(**kwargs)
    secure = io.of("/secure")

    @secure.use
    async def token(socket: Any) -> None:
        if (socket.handshake.auth or {}).get("token") != "ok":
            raise roomd.ConnectRefused("bad token", {"code": 401})

    for namespace in (io.of("/"), secure):
        @namespace.on("echo")
        async def echo(socket: Any, *args: Any) -> tuple:
            return args

        @namespace.on("none")
        async def none(socket: Any, *args: Any) -> None:
            return None

        @namespace.on("whoami")
        async def whoami(socket: Any) -> dict:
            hs = socket.handshake
            return {"sid": socket.id, "auth": hs.auth, "query": hs.query,
                    "header": hs.headers.get("x-test")}

        @namespace.on("send_me")
        async def send_me(socket: Any, count: int) -> int:
            for i in range(count):
                await socket.emit("n", i)
            return count

        @namespace.on("ask_me")
        async def ask_me(socket: Any, *args: Any) -> Any:
            return await socket.emit_with_ack("question", *args, timeout=10)

        @namespace.on("kick")
        async def kick(socket: Any) -> str:
            await socket.disconnect()
            return "never sent"

    return io


@BOTH
async def test_emit_with_ack_and_binary(start_server, transport):
    srv: Served = await start_server(echo_server())
    async with roomd.connect(srv.url, transport=transport) as client:
        assert client.transport == transport
        assert client.namespace == "/"
        assert await client.emit_with_ack("echo", 1) == 1
        assert await client.emit_with_ack("echo", 1, "two") == (1, "two")
        assert await client.emit_with_ack("none") is None
        assert await client.call("echo", 1, "two") == [1, "two"]
        blob = bytes(range(256))
        assert await client.emit_with_ack("echo", blob, {"nested": [b"", blob]}) == (
            blob, {"nested": [b"", blob]})
        with pytest.raises(roomd.AckTimeout, match="no acknowledgement of 'nobody'"):
            await client.emit_with_ack("nobody", timeout=0.3)
        assert await client.emit_with_ack("echo", "after a timeout") == "after a timeout"
    assert client.disconnect_reason is not None
    assert client.disconnect_reason.reason == "io client disconnect"
    with pytest.raises(roomd.Disconnected):
        await client.emit("echo")


@BOTH
async def test_auth_headers_query_namespace(start_server, transport):
    srv = await start_server(echo_server())
    async with roomd.connect(srv.url + "/secure?from=url", auth={"token": "ok"},
                             headers={"X-Test": "h"}, query={"q": "1"},
                             transport=transport) as client:
        info = await client.emit_with_ack("whoami")
        assert info["sid"] == client.sid
        assert info["auth"] == {"token": "ok"}
        assert info["header"] == "h"
        assert info["query"]["from"] == "url" and info["query"]["q"] == "1"


@BOTH
async def test_connect_refused(start_server, transport):
    srv = await start_server(echo_server())
    with pytest.raises(roomd.ConnectError) as caught:
        async with roomd.connect(srv.url + "/nope", transport=transport):
            raise AssertionError("connected to an unknown namespace")
    assert caught.value.refused and caught.value.message == "Invalid namespace"
    with pytest.raises(roomd.ConnectError) as caught:
        async with roomd.connect(srv.url + "/secure", auth={"token": "no"}, transport=transport):
            raise AssertionError("connected with a bad token")
    assert (caught.value.message, caught.value.data) == ("bad token", {"code": 401})


async def test_bad_arguments():
    for url in ("ftp://h/", "http:///x", "http://h:99999/", "http://u:p@h/", "http://h/#f",
                "http://h/a,b"):
        with pytest.raises(ValueError):
            async with roomd.connect(url):
                pass
    with pytest.raises(ValueError, match="transport"):
        async with roomd.connect("http://127.0.0.1:1/", transport="carrier-pigeon"):
            pass
    with pytest.raises(ValueError, match="auth"):
        async with roomd.connect("http://127.0.0.1:1/", auth="token"):  # type: ignore[arg-type]
            pass


@BOTH
async def test_events_in_order_through_a_full_inbox(start_server, transport):
    """More events than the inbox holds, read late: backpressure loses none."""
    srv = await start_server(echo_server())
    async with roomd.connect(srv.url, transport=transport, inbox_size=8) as client:
        # no emit_with_ack here: its ack would queue behind the 300 events
        await client.emit("send_me", 300)
        got = []
        async for event in client:
            got.append(event.args[0])
            if len(got) == 300:
                break
        assert got == list(range(300))


async def test_handlers_and_acks_to_the_server(start_server):
    srv = await start_server(echo_server())
    async with roomd.connect(srv.url) as client:
        seen: list = []

        @client.on("question")
        async def question(*args: Any) -> tuple:
            seen.append(args)
            await trio.sleep(0)
            return ("answer", *args)

        assert await client.emit_with_ack("ask_me", 5) == ("answer", 5)
        assert seen == [(5,)]
        client.on("question", lambda *args: None)  # a sync handler, no ack arguments
        assert await client.emit_with_ack("ask_me", 6) is None

        caught: list = []
        client.on("*", lambda name, *args: caught.append((name, args)))
        assert await client.emit_with_ack("send_me", 2) == 2
        assert await client.emit_with_ack("echo", "sync") == "sync"  # after the n events
        assert caught == [("n", (0,)), ("n", (1,))]


async def test_ack_from_the_event_iteration(start_server):
    srv = await start_server(echo_server())
    async with roomd.connect(srv.url) as client, trio.open_nursery() as nursery:
        result: list = []

        async def ask() -> None:
            result.append(await client.emit_with_ack("ask_me", "q"))

        nursery.start_soon(ask)
        event = await client.receive()
        assert (event.name, event.args, event.wants_ack) == ("question", ["q"], True)
        await event.ack("a", b"\x01")
        await event.ack("ignored: only the first answer is sent")
    assert result == [("a", b"\x01")]


async def test_handler_exception_ends_the_client(start_server):
    srv = await start_server(echo_server())
    with pytest.raises(ZeroDivisionError):
        async with roomd.connect(srv.url) as client:
            client.on("n", lambda i: 1 / 0)
            await client.emit("send_me", 1)
            await trio.sleep_forever()


@BOTH
async def test_server_disconnect(start_server, transport):
    srv = await start_server(echo_server())
    async with roomd.connect(srv.url, transport=transport) as client:
        with pytest.raises(roomd.Disconnected) as caught:
            await client.emit_with_ack("kick")
        assert caught.value.reason == "io server disconnect"
        assert [e async for e in client] == []  # the iteration ends
        assert (await client.wait_disconnected()).reason == "io server disconnect"
        assert not client.connected
        with pytest.raises(roomd.Disconnected, match="io server disconnect"):
            await client.emit("echo")
        with pytest.raises(roomd.Disconnected, match="io server disconnect"):
            await client.receive()


@BOTH
async def test_pings_answered(start_server, transport):
    """The server pings every 0.1 s and drops a client silent for 1.5 s more; the client
    is still there after several times that, so it answered."""
    srv = await start_server(echo_server(ping_interval=0.1, ping_timeout=1.5))
    async with roomd.connect(srv.url, transport=transport) as client:
        await trio.sleep(4)
        assert client.connected
        assert await client.emit_with_ack("echo", "alive") == "alive"


# ---------------------------------------------------------------------------------------
# Fake WebSocket servers: wsproto's server side, one scripted connection


class FakeWS:
    """One accepted WebSocket connection, driven by a test script."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.incoming: list[str | bytes] = []
        self.request: wse.Request | None = None

    async def _pump(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, wse.Request):
                self.request = event
                await self.stream.send_all(self.ws.send(wse.AcceptConnection()))
            elif isinstance(event, wse.Message):
                self.incoming.append(event.data)
            elif isinstance(event, wse.Ping):
                await self.stream.send_all(self.ws.send(event.response()))
        return bool(data)

    async def accept(self) -> None:
        with trio.fail_after(10):
            while self.request is None:
                assert await self._pump(), "the client left before the handshake"

    async def send(self, message: str | bytes) -> None:
        await self.stream.send_all(self.ws.send(wse.Message(data=message)))

    async def receive(self) -> str | bytes:
        with trio.fail_after(10):
            while not self.incoming:
                if not await self._pump():
                    raise AssertionError("the client closed the connection")
        return self.incoming.pop(0)

    async def open_and_connect(self, open_info: dict | None = None) -> None:
        await self.accept()
        await self.send("0" + json.dumps(open_info or OPEN))
        assert await self.receive() == "40"
        await self.send('40{"sid":"sock"}')


async def fake_ws_server(nursery: trio.Nursery,
                         script: Callable[[FakeWS], Awaitable[None]]) -> str:
    """Serve ``script`` for each connection on 127.0.0.1:0; returns the URL."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await script(FakeWS(stream))
            except trio.BrokenResourceError:
                pass  # the client closed first: its right, the test checks what it saw

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def run_until_disconnected(url: str, **kwargs: Any) -> tuple[list, roomd.Disconnected]:
    """Connect, collect events until the connection ends (bounded), return both."""
    async with roomd.connect(url, **kwargs) as client:
        events: list[ReceivedEvent] = []
        with trio.fail_after(20):
            async for event in client:
                events.append(event)
            reason = await client.wait_disconnected()
    return [(e.name, e.args) for e in events], reason


async def test_fake_pings_are_answered(nursery):
    answers: list = []

    async def script(conn: FakeWS) -> None:
        await conn.open_and_connect()
        for probe in ("", "", "probe"):
            await conn.send("2" + probe)
            answers.append(await conn.receive())
        await conn.send('42["done"]')
        await conn.send("1")  # Engine.IO CLOSE

    url = await fake_ws_server(nursery, script)
    events, reason = await run_until_disconnected(url)
    assert answers == ["3", "3", "3probe"]
    assert events == [("done", [])]
    assert (reason.reason, reason.detail) == ("transport close",
                                              "the server closed the connection")


async def test_fake_silence_is_a_ping_timeout(nursery):
    async def script(conn: FakeWS) -> None:
        await conn.open_and_connect(dict(OPEN, pingInterval=100, pingTimeout=100))
        await conn.send('42["one"]')
        await trio.sleep_forever()  # no pings: the client gives up after 0.2 s

    url = await fake_ws_server(nursery, script)
    events, reason = await run_until_disconnected(url)
    assert events == [("one", [])]
    assert reason.reason == "ping timeout"
    assert reason.detail == "no packet from the server within 0.2 s"


async def test_fake_closes_mid_frame(nursery):
    async def script(conn: FakeWS) -> None:
        await conn.open_and_connect()
        await conn.send('42["whole"]')
        frame = conn.ws.send(wse.Message(data='42["' + "x" * 500 + '"]'))
        await conn.stream.send_all(frame[:100])  # a frame cut short, then TCP closes

    url = await fake_ws_server(nursery, script)
    events, reason = await run_until_disconnected(url)
    assert events == [("whole", [])]
    assert reason.reason == "transport close"
    assert "1006" in reason.detail


async def test_fake_closes_mid_binary_packet(nursery):
    async def script(conn: FakeWS) -> None:
        await conn.open_and_connect()
        await conn.send('452-["up",' + PH0 + ',{"_placeholder":true,"num":1}]')
        await conn.send(b"first")
        await conn.stream.aclose()  # the second attachment never comes

    url = await fake_ws_server(nursery, script)
    events, reason = await run_until_disconnected(url)
    assert events == []
    assert reason.reason == "transport close"
    assert reason.detail.endswith("closed while waiting for 1 binary attachment(s)")


@pytest.mark.parametrize(("garbage", "detail"), [
    ("42", "event payload must be a non-empty list starting with the event name"),
    ("x", "invalid packet type 'x'"),
    (b"\x01", "unexpected binary attachment: no binary packet is pending"),
    ('42["a",NaN]', "invalid JSON payload: NaN is not valid JSON"),
])
async def test_fake_garbage_is_a_parse_error(nursery, garbage, detail):
    async def script(conn: FakeWS) -> None:
        await conn.open_and_connect()
        await conn.send('42["fine"]')
        await conn.send(garbage)
        await conn.send('42["never read"]')
        with trio.move_on_after(10):
            while await conn._pump():  # until the client closes
                pass

    url = await fake_ws_server(nursery, script)
    events, reason = await run_until_disconnected(url)
    assert events == [("fine", [])]
    assert (reason.reason, reason.detail) == ("parse error", detail)


async def test_fake_oversized_message(nursery):
    """A message over max_message_size ends the connection; it is never buffered whole."""
    async def script(conn: FakeWS) -> None:
        await conn.open_and_connect()
        await conn.send('42["small"]')
        await conn.send('42["' + "x" * 5000 + '"]')
        with trio.move_on_after(10):
            while await conn._pump():
                pass

    url = await fake_ws_server(nursery, script)
    events, reason = await run_until_disconnected(url, max_message_size=4096)
    assert events == [("small", [])]
    assert reason.reason == "transport error"
    assert "1009" in reason.detail


async def test_fake_never_answers_connect(nursery):
    async def script(conn: FakeWS) -> None:
        await conn.accept()
        await conn.send("0" + json.dumps(OPEN))
        await trio.sleep_forever()

    url = await fake_ws_server(nursery, script)
    with pytest.raises(roomd.ConnectError, match="no Socket.IO connection to .* within 0.5 s"):
        async with roomd.connect(url, connect_timeout=0.5):
            pass


async def test_fake_closes_during_the_websocket_handshake(nursery):
    async def script(conn: FakeWS) -> None:
        await conn.stream.receive_some(65536)  # the upgrade request, unanswered

    url = await fake_ws_server(nursery, script)
    with pytest.raises(roomd.ConnectError, match="closed the connection during the WebSocket"):
        async with roomd.connect(url, connect_timeout=30):
            pass


async def test_fake_rejects_the_upgrade(nursery):
    async def script(conn: FakeWS) -> None:
        await conn.stream.receive_some(65536)
        body = b'{"code":3,"message":"Bad request"}'
        await conn.stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json"
                                   b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    url = await fake_ws_server(nursery, script)
    with pytest.raises(roomd.ConnectError, match="HTTP 400: Bad request"):
        async with roomd.connect(url):
            pass


# ---------------------------------------------------------------------------------------
# A fake long-polling server that cuts its second poll short


@pytest.mark.parametrize("second_poll", ["cut short", "too long"])
async def test_fake_polling_response_cut_short(nursery, second_poll):
    connected = trio.Event()

    async def answer(stream: trio.SocketStream, conn: h11.Connection, body: bytes,
                     length: int | None = None) -> None:
        headers = [("Content-Type", "text/plain; charset=UTF-8"),
                   ("Content-Length", str(len(body) if length is None else length))]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)))
        if length is None:
            await stream.send_all(conn.send(h11.EndOfMessage()))

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await serve_polls(stream)
        except trio.BrokenResourceError:
            pass  # the client closed first

    async def serve_polls(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        polls = 0
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    body = b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    target = request.target.decode()
                    if request.method == b"POST":
                        if body == b"40":
                            connected.set()
                        await answer(stream, conn, b"ok")
                    elif "sid=" not in target:
                        await answer(stream, conn, ("0" + json.dumps(OPEN)).encode())
                    else:
                        polls += 1
                        if polls == 1:
                            with trio.fail_after(10):
                                await connected.wait()
                            await answer(stream, conn, b'40{"sid":"s"}\x1e42["first"]')
                        elif second_poll == "too long":
                            await answer(stream, conn, b'42["' + b"y" * 20000 + b'"]')
                        else:
                            await answer(stream, conn, b'42["cut', length=200)
                            return  # close the TCP connection mid-body
                    conn.start_next_cycle()
                else:
                    return

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    events, reason = await run_until_disconnected(url, transport="polling",
                                                  max_message_size=1024)
    assert events == [("first", [])]
    if second_poll == "too long":  # the body limit is 8 times max_message_size
        assert (reason.reason, reason.detail) == ("transport error",
                                                  "response body over 8192 bytes")
    else:
        assert (reason.reason, reason.detail) == (
            "transport close", "the server closed the connection mid-response "
                               "(7 bytes of the body read)")
