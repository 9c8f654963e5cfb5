"""Server CPU per HTTP long-polling request (issue 12, docs/performance.md "Polling storms").

    .venv/bin/python -m bench.polling_cost [--tree DIR]... [--clients 3000] [--concurrency 100]
                                           [--spy OUT.txt]

For each ``--tree`` (default: this checkout; repeat to interleave A/B), starts ``roomd
serve --app bench.storm_app:io`` from it (polling allowed) pinned to core 0, and drives it
from this process, pinned to core 1: ``--clients`` polling clients, ``--concurrency`` at a
time, each on one keep-alive connection as the stock Node.js client's agent: the handshake
GET (``--connection close``: one connection per request, as socket.io-client under
Node.js), a POST of the namespace CONNECT, the GET that fetches its reply, a POST of a ``join``
event with an ack, the GET of the ack, a POST of the close packet: six requests. The
server's CPU time (schedstat of its process tree) over the run, divided by the requests,
is the figure. ``--spy`` records the server with ``py-spy record --gil -f raw``.
Loopback only; every process is ended by its PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.proctree import tree_cpu_s

ROOT = Path(__file__).resolve().parent.parent
PATH = "/socket.io/?EIO=4&transport=polling"


CONNECTION = ["keep-alive"]


def _request(method: str, target: str, body: bytes = b"") -> bytes:
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"
            f"Connection: {CONNECTION[0]}\r\n")
    if method == "POST":
        head += f"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _exchange(stream: trio.SocketStream, buf: bytearray, request: bytes) -> bytes:
    """Send one request, return its answer's body (Content-Length framing)."""
    await stream.send_all(request)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(buf) >= end + 4 + length:
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                body = bytes(buf[end + 4:end + 4 + length])
                del buf[:end + 4 + length]
                return body
        data = await stream.receive_some(65536)
        if not data:
            raise RuntimeError("closed")
        buf += data


async def _client(port: int, i: int) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    close = CONNECTION[0] == "close"

    async def ask(request: bytes) -> bytes:
        nonlocal stream
        if close and stream is None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        body = await _exchange(stream, bytearray(), request)
        if close:
            await stream.aclose()
            stream = None
        return body

    try:
        sid = json.loads((await ask(_request("GET", PATH)))[1:])["sid"]
        url = f"{PATH}&sid={sid}"
        await ask(_request("POST", url, b"40"))
        await ask(_request("GET", url))
        await ask(_request("POST", url, f'421["join","room-{i % 1000}"]'.encode()))
        await ask(_request("GET", url))
        await ask(_request("POST", url, b"1"))
    finally:
        if stream is not None:
            await stream.aclose()
    return 6


async def _drive(port: int, clients: int, concurrency: int) -> int:
    done = [0]
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            n = await _client(port, i)  # (not "+= await": that reads done[0] before)
            done[0] += n

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(one, i)
    return done[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_one(tree: Path, a: argparse.Namespace) -> dict:
    port = _free_port()
    admin = tempfile.mkdtemp(prefix="polling-cost-")
    env = {**os.environ, "ROOMD_STORM_TRANSPORTS": "polling,websocket",
           "ROOMD_STORM_EXEMPT": "loopback"}
    proc = subprocess.Popen(
        ["taskset", "-c", "0", str(tree / ".venv" / "bin" / "roomd"), "serve", "--app",
         "bench.storm_app:io", "--app-dir", str(ROOT), "--port", str(port), "--socket",
         f"{admin}/s.sock", "--log-level", "warning"], cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, start_new_session=True)
    spy = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        trio.run(_drive, port, min(200, a.clients), 50)  # warm-up
        if a.spy:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                    "--gil", "-r", "500", "-f", "raw", "-o", a.spy,
                                    "-p", str(proc.pid)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(1)
        cpu0, t0 = tree_cpu_s(proc.pid), time.monotonic()
        requests = trio.run(_drive, port, a.clients, a.concurrency)
        cpu1, t1 = tree_cpu_s(proc.pid), time.monotonic()
        return {"tree": str(tree), "requests": requests, "server_cpu_s": round(cpu1 - cpu0, 3),
                "connection": a.connection,
                "cpu_per_request_us": round((cpu1 - cpu0) / requests * 1e6, 1),
                "requests_per_s": round(requests / (t1 - t0)), "load": os.getloadavg()}
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path)
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--spy")
    parser.add_argument("--connection", choices=["keep-alive", "close"], default="keep-alive",
                        help="close: a new connection per request, as socket.io-client under "
                             "Node.js (xmlhttprequest-ssl) makes them")
    a = parser.parse_args()
    os.sched_setaffinity(0, {1})
    CONNECTION[0] = a.connection
    for _ in range(a.reps):
        for tree in a.tree or [ROOT]:
            print(json.dumps(run_one(tree, a)), flush=True)


if __name__ == "__main__":
    main()
