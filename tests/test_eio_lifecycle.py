"""Engine.IO session lifecycle details, as the reference server (engine.io 6) has them.

- After the upgrade probe, a long-poll is released with a noop only when the upgrade
  has not completed: a poll that finds data (the CONNECT reply) gets the data.
- A close packet POSTed while a long-poll is pending: the poll gets a noop ("6"), then
  the session is gone (a later GET is refused with 400).
- A second WebSocket for an already upgraded session: the handshake completes, then
  that WebSocket is closed at once; the session goes on.
"""

from __future__ import annotations

import json

import trio
from harness import http_request, open_raw_ws, raw_ws_upgrade

import roomd

EIO = "/socket.io/?EIO=4"


def poll_target(sid: str | None = None) -> str:
    return f"{EIO}&transport=polling" + (f"&sid={sid}" if sid else "")


async def open_polling(port: int) -> str:
    status, _, body = await http_request(port, "GET", poll_target())
    assert status == 200 and body.startswith(b"0{"), (status, body)
    return json.loads(body[1:])["sid"]


def sum_server() -> roomd.Server:
    io = roomd.Server()

    @io.on("sum")
    def add(socket: roomd.Socket, a: int, b: int) -> int:
        return a + b

    return io


async def test_probe_does_not_turn_queued_data_into_a_noop(start_server):
    srv = await start_server(sum_server())
    sid = await open_polling(srv.port)
    status, _, body = await http_request(srv.port, "POST", poll_target(sid), body=b"40")
    assert (status, body) == (200, b"ok")
    async with open_raw_ws(srv.port, query=f"EIO=4&transport=websocket&sid={sid}") as ws:
        await ws.send("2probe")
        assert await ws.recv() == "3probe"
        # The CONNECT reply was queued before the probe: the next poll carries it.
        status, _, body = await http_request(srv.port, "GET", poll_target(sid))
        assert status == 200 and body.startswith(b"40{"), body
        # Nothing queued now, the upgrade not completed: the pending poll gets a noop.
        status, _, body = await http_request(srv.port, "GET", poll_target(sid))
        assert (status, body) == (200, b"6")
        await ws.send("5")
        await ws.send('421["sum",1,2]')
        assert await ws.recv_skip_pings() == "431[3]"


async def test_close_packet_releases_the_pending_poll_with_a_noop(start_server):
    srv = await start_server(sum_server())
    sid = await open_polling(srv.port)
    io = srv.io
    polled: list[tuple[int, bytes]] = []
    async with trio.open_nursery() as nursery:
        async def poll() -> None:
            status, _, body = await http_request(srv.port, "GET", poll_target(sid))
            polled.append((status, body))

        nursery.start_soon(poll)
        with trio.fail_after(5):
            while not io.engine.sessions[sid].poll_pending:
                await trio.sleep(0.01)
        status, _, body = await http_request(srv.port, "POST", poll_target(sid), body=b"1")
        assert (status, body) == (200, b"ok")
    assert polled == [(200, b"6")]
    assert sid not in io.engine.sessions
    status, _, body = await http_request(srv.port, "GET", poll_target(sid))
    assert status == 400 and json.loads(body)["code"] == 1


async def test_second_websocket_for_an_upgraded_session_is_closed_after_the_handshake(
        start_server):
    srv = await start_server(sum_server())
    sid = await open_polling(srv.port)
    async with open_raw_ws(srv.port, query=f"EIO=4&transport=websocket&sid={sid}") as ws:
        await ws.send("2probe")
        assert await ws.recv() == "3probe"
        await ws.send("5")
        await ws.send("40")
        assert (await ws.recv_skip_pings()).startswith("40{")
        target = f"{EIO}&transport=websocket&sid={sid}"
        stream, status, leftover = await raw_ws_upgrade(srv.port, target)
        async with stream:
            assert status == 101
            with trio.fail_after(5):
                data = leftover  # what came with the response head
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
            assert data[:1] == b"\x88"  # a close frame, then the end of the stream
        # the upgraded session is untouched
        await ws.send('421["sum",2,3]')
        assert await ws.recv_skip_pings() == "431[5]"
    # an unknown sid is still refused before the handshake
    stream, status, _ = await raw_ws_upgrade(srv.port, f"{EIO}&transport=websocket&sid=nope")
    async with stream:
        assert status == 400
