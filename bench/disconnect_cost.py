#!/usr/bin/env python3
"""The cost of clients going away: server CPU per reset connection, and the time a
graceful shutdown takes.

    .venv/bin/python -m bench.disconnect_cost --clients 3000 --reps 2 --mode reset [TREE ...]
    .venv/bin/python -m bench.disconnect_cost --clients 5000 --reps 2 --mode shutdown [TREE ...]

For each repetition and each roomd checkout TREE (default: this one; each needs its
``.venv``), interleaved: ``roomd serve --app bench.app:io`` pinned to CPU 0, then
``--clients`` raw WebSocket clients, opened one after another from this process, each
connecting to "/" and joining its room of 10 (``join`` with an ack, as the reconnect
storm's clients do). Then:

- ``reset``: every client resets its TCP connection at once (SO_LINGER 0: an RST, no
  close frame), as in the storm's network cut; the figure is the server's CPU (schedstat
  of its threads) from just before the resets to 2.5 s after, divided by the clients.
- ``shutdown``: SIGTERM to the server while a thread here answers every close frame at
  once; the figure is the time until the server has exited.

Traffic stays on 127.0.0.1; every wait is bounded; only the servers started here are
ended (by PID). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from bench.proctree import end_group

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
UPGRADE = (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: bench\r\n"
           b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
CLOSE_ANSWER = bytes([0x88, 0x82]) + b"\0\0\0\0" + struct.pack("!H", 1000)  # masked, 1000


def thread_cpu_s(pid: int) -> float:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def text_frame(text: str) -> bytes:
    """A masked client text frame (payloads under 126 bytes)."""
    payload, mask = text.encode(), b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def read_until(sock: socket.socket, token: bytes) -> None:
    seen = b""
    while token not in seen:
        data = sock.recv(65536)
        if not data:
            raise OSError("the server closed the connection")
        seen = seen[-64:] + data


def start_server(tree: Path, port: int, admin_dir: str) -> subprocess.Popen:
    server = subprocess.Popen(
        ["taskset", "-c", "0", str(tree / ".venv" / "bin" / "roomd"), "serve", "--app",
         "bench.app:io", "--app-dir", str(ROOT), "--port", str(port), "--socket",
         f"{admin_dir}/{port}.sock", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return server
        except OSError:
            time.sleep(0.05)
    end_group(server, grace=10)
    raise RuntimeError(f"{tree}: not listening on {port} after 30 s")


def open_clients(port: int, n: int) -> list[socket.socket]:
    clients = []
    for i in range(n):
        sock = socket.create_connection((HOST, port), 5)
        sock.sendall(UPGRADE)
        read_until(sock, b'"maxPayload"')
        sock.sendall(text_frame("40"))
        read_until(sock, b"40{")
        sock.sendall(text_frame(f'420["join","r{i // 10}"]'))
        read_until(sock, b"430[true]")
        clients.append(sock)
    return clients


def answer_close_frames(clients: list[socket.socket], until: float) -> None:
    """Answer each server close frame at once, then close; read and drop the rest."""
    selector = selectors.DefaultSelector()
    for sock in clients:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    while selector.get_map() and time.monotonic() < until:
        for key, _ in selector.select(0.1):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data and data[0] != 0x88:
                continue
            if data:
                try:
                    sock.sendall(CLOSE_ANSWER)
                except OSError:
                    pass
            selector.unregister(sock)
            sock.close()


def one_run(tree: Path, mode: str, n: int, port: int, admin_dir: str) -> float:
    server = start_server(tree, port, admin_dir)
    try:
        clients = open_clients(port, n)
        time.sleep(1.0)  # let the joins' work settle
        cpu0, t0 = thread_cpu_s(server.pid), time.monotonic()
        if mode == "reset":
            for sock in clients:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            time.sleep(2.5)
            return (thread_cpu_s(server.pid) - cpu0) / n * 1e6
        answering = threading.Thread(target=answer_close_frames, args=(clients, t0 + 15))
        answering.start()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
        exited = time.monotonic() - t0
        answering.join()
        return exited
    finally:
        end_group(server, grace=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    p.add_argument("--mode", choices=("reset", "shutdown"), default="reset")
    p.add_argument("--clients", type=int, default=3000)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    unit = "µs of server CPU per reset connection" if a.mode == "reset" else "s until exit"
    admin_dir = f"/tmp/roomd-disconnect-cost-{os.getpid()}"
    os.makedirs(admin_dir, mode=0o700, exist_ok=True)
    try:
        for rep in range(1, a.reps + 1):
            for tree in a.trees:
                figure = one_run(tree.resolve(), a.mode, a.clients, free_port(), admin_dir)
                print(f"rep {rep} {tree}: {figure:.3g} {unit}", flush=True)
    finally:
        shutil.rmtree(admin_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
