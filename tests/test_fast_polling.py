"""The long-polling fast path (transport/http.py ``_fast_polling``) answers as h11's path.

Each script below runs twice against a fresh server: once as the stock clients send it
(plain requests: the fast path takes the plain ones), once with a repeated header in every
request (which the fast path never takes: h11 reads all of it). The answers must be the
same bytes, status line, headers and body (the session ids aside), on one keep-alive
connection as the Node.js client's agent uses it. Refusals and malformed requests are in
the tables too. Real clients (python-socketio over polling only, socket.io-client with its
default transports: polling, then the upgrade) take the fast path in test_e2e_python.py and
test_e2e_node.py. No test measures speed.
"""

from __future__ import annotations

import json
import re

import h11
import pytest
import trio

from roomd.transport import http as roomd_http

P = "/socket.io/?EIO=4&transport=polling"
QUIRK = b"X-Twice: a\r\nX-Twice: b\r\n"  # a repeated header: only h11 takes it


def _req(method: str, target: str, body: bytes = b"", extra: bytes = b"",
         connection: str = "keep-alive") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"
    if connection:
        head += f"Connection: {connection}\r\n"
    if method == "POST":
        head += f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + extra + b"\r\n" + body


async def _answer(stream: trio.SocketStream, buf: bytearray) -> bytes:
    """One whole answer (Content-Length framed), as raw bytes; b"" when closed first."""
    with trio.fail_after(10):
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                length = int(re.search(rb"(?i)content-length: *(\d+)", buf[:end])[1])
                if len(buf) >= end + 4 + length:
                    answer = bytes(buf[:end + 4 + length])
                    del buf[:end + 4 + length]
                    return answer
            data = await stream.receive_some(65536)
            if not data:
                return b""
            buf += data


class _Client:
    """One keep-alive connection; every request carries ``extra`` headers."""

    def __init__(self, stream: trio.SocketStream, extra: bytes) -> None:
        self.stream, self.extra, self.buf = stream, extra, bytearray()
        self.sids: list[str] = []

    async def ask(self, method: str, target: str, body: bytes = b"", **kw) -> bytes:
        await self.stream.send_all(_req(method, target, body, self.extra, **kw))
        answer = await _answer(self.stream, self.buf)
        for sid in re.findall(rb'"sid":"([^"]+)"', answer):
            if sid.decode() not in self.sids:
                self.sids.append(sid.decode())
        return answer

    async def closed(self) -> bool:
        with trio.fail_after(10):
            try:
                return await self.stream.receive_some(100) == b""
            except trio.BrokenResourceError:
                return True

    def normal(self, answer: bytes) -> bytes:
        """``answer`` with the session ids (and the length they add up to) made constant."""
        for i, sid in enumerate(self.sids):
            answer = answer.replace(sid.encode(), f"SID{i}".encode())
        return re.sub(rb"Content-Length: \d+", b"Content-Length: N", answer)


async def _session(c: _Client) -> str:
    await c.ask("GET", P)
    sid = c.sids[-1]
    await c.ask("POST", f"{P}&sid={sid}", b"40")
    return sid


async def _script_lifecycle(c: _Client) -> list[bytes]:
    out = [await c.ask("GET", P)]  # the handshake
    sid = c.sids[0]
    out.append(await c.ask("POST", f"{P}&sid={sid}", b"40"))  # CONNECT
    out.append(await c.ask("GET", f"{P}&sid={sid}"))  # its reply
    out.append(await c.ask("POST", f"{P}&sid={sid}", b'421["join","r"]\x1e42["x",1]'))
    out.append(await c.ask("GET", f"{P}&sid={sid}"))  # the ack
    out.append(await c.ask("POST", f"{P}&sid={sid}", "422[\"join\",\"é\"]".encode()))  # UTF-8
    out.append(await c.ask("GET", f"/socket.io?EIO=4&transport=polling&sid={sid}"))  # its ack
    out.append(await c.ask("POST", f"{P}&sid={sid}", b"1"))  # close
    out.append(await c.ask("GET", f"{P}&sid={sid}"))  # gone: 400, Connection: close
    out.append(str(await c.closed()).encode())
    return out


async def _script_malformed_payload(c: _Client) -> list[bytes]:
    sid = await _session(c)
    return [await c.ask("POST", f"{P}&sid={sid}", b"zz"), str(await c.closed()).encode()]


async def _script_refusals(c: _Client) -> list[bytes]:
    """Each answered by h11 on either path: the fast path takes none of them."""
    sid = await _session(c)
    out = [await c.ask("GET", "/socket.io/?EIO=3&transport=polling")]
    c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    out.append(await c.ask("GET", "/other/?EIO=4&transport=polling"))
    c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    out.append(await c.ask("GET", "/socket.io/?EIO=4&transport=carrier"))
    c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    out.append(await c.ask("POST", P, b"40"))  # a handshake by POST
    c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    out.append(await c.ask("GET", f"{P}&sid=nosuchsession"))
    c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    out.append(await c.ask("POST", f"{P}&sid={sid}", b"4" * 200))  # over max_payload
    c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    out.append(await c.ask("GET", P, connection="keep-alive, Upgrade"))
    return out


async def _script_connection_close(c: _Client) -> list[bytes]:
    """socket.io-client under Node.js: a new connection per request, "Connection: close"."""
    out = []

    async def ask(method: str, target: str, body: bytes = b"") -> None:
        if out:  # the first request goes on the connection the client opened
            c.stream = await trio.open_tcp_stream("127.0.0.1", c.port)
        out.append(await c.ask(method, target, body, connection="close"))
        out.append(str(await c.closed()).encode())  # answered, then closed

    await ask("GET", P)
    sid = c.sids[0]
    await ask("POST", f"{P}&sid={sid}", b"40")
    await ask("GET", f"{P}&sid={sid}")
    await ask("POST", f"{P}&sid={sid}", b"zz")  # malformed: 400
    return out


async def _script_session_rate(c: _Client) -> list[bytes]:
    first = await c.ask("GET", P)
    return [first, await c.ask("GET", P), str(await c.closed()).encode()]  # 429, closed


async def _script_overlapping_poll(c: _Client) -> list[bytes]:
    sid = await _session(c)
    await c.ask("GET", f"{P}&sid={sid}")  # the CONNECT's reply: nothing is left to fetch
    other = _Client(await trio.open_tcp_stream("127.0.0.1", c.port), c.extra)
    other.sids = c.sids
    async with trio.open_nursery() as nursery:
        first: list[bytes] = []

        async def poll() -> None:
            first.append(await c.ask("GET", f"{P}&sid={sid}"))

        nursery.start_soon(poll)
        await trio.sleep(0.3)  # the first poll waits; a second one breaks the session
        second = await other.ask("GET", f"{P}&sid={sid}")
    return [second, first[0]]


async def _script_in_pieces(c: _Client) -> list[bytes]:
    """A request in two writes (its body late) is h11's, and so are the next ones."""
    sid = await _session(c)
    request = _req("POST", f"{P}&sid={sid}", b'421["join","r"]', c.extra)
    await c.stream.send_all(request[:-5])
    await trio.sleep(0.2)
    await c.stream.send_all(request[-5:])
    out = [await _answer(c.stream, c.buf)]
    out.append(await c.ask("GET", f"{P}&sid={sid}"))  # the CONNECT's reply, then the ack
    return out


SCRIPTS = {
    "in pieces": (_script_in_pieces, {}),
    "lifecycle": (_script_lifecycle, {}),
    "malformed payload": (_script_malformed_payload, {}),
    "refusals": (_script_refusals, {"max_payload": 100}),
    "connection close": (_script_connection_close, {}),
    "session rate": (_script_session_rate, {"sessions_per_ip_rate": 0.001,
                                            "sessions_per_ip_burst": 1,
                                            "exempt_addresses": ()}),
    "overlapping poll": (_script_overlapping_poll, {}),
}


async def _run(start_server, name: str, extra: bytes, monkeypatch) -> tuple[list[bytes], int]:
    """The script's answers, normalised, and how many h11 parsers the server made."""
    script, options = SCRIPTS[name]
    made = [0]
    real = h11.Connection

    def counting(*args, **kwargs):
        made[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(roomd_http.h11, "Connection", counting)
    srv = await start_server(**options)

    @srv.io.on("connection")
    async def on_connection(socket):
        @socket.on("join")
        async def join(room):
            await socket.join(room)
            return {"rooms": [socket.id, room]}

    c = _Client(await trio.open_tcp_stream("127.0.0.1", srv.port), extra)
    c.port = srv.port  # type: ignore[attr-defined]
    answers = await script(c)
    monkeypatch.setattr(roomd_http.h11, "Connection", real)
    return [c.normal(a) for a in answers], made[0]


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_both_paths_answer_alike(start_server, monkeypatch, name):
    fast, parsers = await _run(start_server, name, b"", monkeypatch)
    slow, _ = await _run(start_server, name, QUIRK, monkeypatch)
    assert fast == slow
    # Every request of these took the fast path but the lifecycle's last (an unknown
    # session: h11's); each refusal of the table of refusals is h11's.
    assert parsers == {"lifecycle": 1, "refusals": 7, "in pieces": 1}.get(name, 0)
    if name == "connection close":
        assert [a.count(b"Connection: close") for a in fast] == [1, 0] * 4


async def test_the_lifecycle_answers(start_server, monkeypatch):
    """What the table compares is right in itself (status lines, bodies)."""
    answers, _ = await _run(start_server, "lifecycle", b"", monkeypatch)
    heads = [a.split(b"\r\n", 1)[0] for a in answers]
    assert heads == [b"HTTP/1.1 200 "] * 8 + [b"HTTP/1.1 400 ", b"True"]
    assert answers[0].endswith(b'"maxPayload":1000000}') and b'0{"sid":"SID0"' in answers[0]
    assert answers[1].endswith(b"\r\n\r\nok") and answers[2].endswith(b'40{"sid":"SID1"}')
    assert answers[4].endswith(b'431[{"rooms":["SID1","r"]}]')
    assert b"Connection: close" in answers[8]
    assert json.loads(answers[8].split(b"\r\n\r\n")[1]) == {"code": 1,
                                                            "message": "Session ID unknown"}

