"""The fast paths of issue 12 keep behaviour: the WebSocket upgrade answered without
h11 (and everything it hands to h11), and RoomManager commands run in the caller's
task when the manager is idle. Speed is measured in docs/performance.md, never here."""

from __future__ import annotations

import base64
import os

import pytest
import trio
from harness import build_request, raw_http

from roomd.protocol.websocket import accept_token
from roomd.rooms.manager import RoomManager

WS = "/socket.io/?EIO=4&transport=websocket"


def _upgrade_headers(key: str) -> list[tuple[str, str]]:
    return [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]


async def _upgrade(port: int, request: bytes, delay: float = 0) -> bytes:
    """Send ``request`` (after ``delay``: the slow arrival), return what comes back
    until the OPEN packet's frame (or the end)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if delay:
            await trio.sleep(delay)
        await stream.send_all(request)
        received = b""
        with trio.move_on_after(5):
            while b'"sid"' not in received:
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += data
        return received


@pytest.mark.parametrize("delay", [0, 0.2])
@pytest.mark.parametrize("extra", [
    [],  # the fast path
    [("X-Twice", "a"), ("X-Twice", "b")],  # a repeated header: h11's path
    [("X-Folded", "a\r\n b")],  # obs-fold: h11's path (h11 unfolds it)
])
async def test_both_paths_answer_an_upgrade_alike(start_server, delay, extra):
    srv = await start_server()
    key = base64.b64encode(os.urandom(16)).decode()
    request = build_request("GET", WS, headers=_upgrade_headers(key) + extra, close=False)
    answer = await _upgrade(srv.port, request, delay)
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 "
    assert sorted(lines[1:]) == sorted([
        b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_token(key).encode()])
    assert b'0{"sid":"' in rest and b'"upgrades":[]' in rest


async def test_refusals_are_h11s_whichever_path_reads_the_request(start_server):
    srv = await start_server(sessions_per_ip_rate=1.0, sessions_per_ip_burst=1,
                             exempt_addresses=())
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = build_request("GET", WS, headers=_upgrade_headers(key))
    assert (await _upgrade(srv.port, upgrade)).startswith(b"HTTP/1.1 101 ")
    # Over the address's session rate: refused on the fast path, answered as h11's path does.
    status, headers, body = await raw_http(srv.port, upgrade)
    assert status == 429 and headers["retry-after"] and b'"code":' in body
    # No Host: h11 answers (400); a wrong path too (404); neither spends a token.
    no_host = upgrade.replace(b"Host: ", b"X-Host: ")
    assert (await raw_http(srv.port, no_host))[0] == 400
    wrong_path = upgrade.replace(b"/socket.io/", b"/other/")
    assert (await raw_http(srv.port, wrong_path))[0] == 404


async def test_an_idle_manager_runs_commands_in_the_caller_and_keeps_their_order():
    manager = RoomManager()
    ran: list[str] = []

    def command(name: str) -> str:
        ran.append(name)
        return name

    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        # Idle: a call runs at once, in this task, with no checkpoint.
        assert await manager.call(command, "a") == "a" and ran == ["a"]
        # The first cast of a turn runs at once too; the next ones queue (a burst batches)...
        await manager.cast(command, "b")
        await manager.cast(command, "c")
        await manager.cast(command, "d")
        assert ran == ["a", "b"]
        # ... and a call behind them waits its turn.
        assert await manager.call(command, "e") == "e"
        assert ran == ["a", "b", "c", "d", "e"]
        with pytest.raises(ZeroDivisionError):
            await manager.call(lambda: 1 // 0)
        nursery.cancel_scope.cancel()
