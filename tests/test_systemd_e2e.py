"""The real ``roomd serve`` played by a fake systemd: the test owns the notify socket
(NOTIFY_SOCKET), binds the listening socket and passes it as fd 3 (LISTEN_FDS/LISTEN_PID),
asks for a watchdog (WATCHDOG_USEC) and hands the daemon a "journal" stderr
(JOURNAL_STREAM). Checks READY=1, WATCHDOG=1 keep-alives, clients served through the passed
socket, SIGHUP reload (RELOADING=1 ... READY=1), and SIGTERM: STOPPING=1, every connected
client's transport closed (so that the stock clients reconnect), exit status 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import pytest
import trio
from daemon_proc import ROOMD, running_daemon, short_dir, stop

# Socket activation needs LISTEN_PID to be the daemon's own pid, known only in the child:
# this wrapper puts the passed socket on fd 3, sets LISTEN_* and execs roomd (same pid).
WRAPPER = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""

CONFIG = """\
[limits]
shutdown_grace = 5.0

[[namespaces]]
name = "/"

[[namespaces]]
name = "/orders"
rooms = {rooms}
"""


@dataclass
class Notifications:
    """The datagrams the daemon sends to NOTIFY_SOCKET, as (monotonic time, {KEY: VALUE})."""

    sock: trio.socket.SocketType
    path: str
    received: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        while True:
            try:
                data = await self.sock.recv(4096)
            except trio.ClosedResourceError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append((time.monotonic(), fields))
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, key: str, value: str = "1", *, after: int = 0,
                       timeout: float = 10) -> int:
        """The index of the first message from ``after`` on with KEY=VALUE."""
        with trio.fail_after(timeout):
            while True:
                for i in range(after, len(self.received)):
                    if self.received[i][1].get(key) == value:
                        return i
                await self.changed.wait()

    def count(self, key: str, after: int = 0) -> int:
        return sum(1 for _, m in self.received[after:] if m.get(key) == "1")


@pytest.fixture
async def notify_and_dir(nursery):
    with short_dir("roomd-sd-") as directory:
        path = str(directory / "notify.sock")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(path)
        notes = Notifications(sock, path)
        nursery.start_soon(notes.run)
        try:
            yield notes, directory
        finally:
            sock.close()


def activation(directory) -> tuple[socket.socket, dict]:
    """A listening TCP socket the test binds, and the running_daemon arguments passing it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    fd = listener.fileno()
    return listener, dict(command=[sys.executable, "-c", WRAPPER, str(fd), ROOMD], pass_fds=(fd,))


async def test_systemd_play(notify_and_dir, node, py_client):
    notes, directory = notify_and_dir
    listener, launch = activation(directory)
    port = listener.getsockname()[1]
    log_path = directory / "roomd.log"
    log_path.touch()  # running_daemon reopens it for writing: same inode
    st = os.stat(log_path)
    env = {"NOTIFY_SOCKET": notes.path, "WATCHDOG_USEC": "500000",
           "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    async with running_daemon(directory, CONFIG.format(rooms='["*"]'), env=env, **launch) as d:
        listener.close()  # the daemon holds the only copy now
        assert d.port == port  # it serves the passed socket, not a --port 0 one of its own
        ready = await notes.wait_for("READY")
        assert notes.received[ready][1]["STATUS"] == f"serving on 127.0.0.1:{port}"
        # keep-alives at half the watchdog interval (0.25 s); at least 3 within 2 s
        with trio.fail_after(2):
            while notes.count("WATCHDOG", after=ready) < 3:
                await notes.changed.wait()

        ws = await node.connect(d.url, "/orders", transports=["websocket"])
        polling = await node.connect(d.url, "/", transports=["polling"], force_new=True)
        py = await py_client()
        await py.connect(d.url, namespaces=["/", "/orders"], transports=["websocket"])
        assert await ws.emit_with_ack("join", "eu") == [{"rooms": sorted([ws.sid, "eu"])}]
        status = (await d.cli("status", "--json")).json()
        assert status["listen"] == [f"127.0.0.1:{port}"] and status["sockets"] == 4

        # the journal reads stderr: no timestamps, sd-daemon priority prefixes instead
        lines = d.log().splitlines()
        assert lines and all(re.match(r"<[0-7]>roomd[.\w]*: ", line) for line in lines), lines
        assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines), lines
        assert f"<6>roomd.server: listening on 127.0.0.1:{port}" in lines

        # SIGTERM: STOPPING=1, every client's transport is closed (no Socket.IO DISCONNECT:
        # the stock clients reconnect), then exit 0
        mark = len(notes.received)
        d.proc.send_signal(signal.SIGTERM)
        stopping = await notes.wait_for("STOPPING", after=mark)
        with trio.fail_after(10):
            assert await d.proc.wait() == 0
        # The WebSocket's close frame and the long-poll's close packet: "transport close"
        # (a transport that just broke would be "transport error").
        assert (await ws.next_event("disconnect")).args == ["transport close"]
        assert (await polling.next_event("disconnect")).args == ["transport close"]
        for namespace in ("/", "/orders"):  # python-socketio's name for a closed WebSocket
            event = await py.next_event("disconnect", namespace=namespace)
            assert event.args == ["transport error"]
        assert notes.count("READY", after=stopping) == 0
        assert "<6>roomd.daemon: received SIGTERM: shutting down" in d.log().splitlines()
        assert not os.path.exists(d.socket)  # the admin socket file is cleaned up


async def test_sighup_reload(notify_and_dir, node):
    notes, directory = notify_and_dir
    env = {"NOTIFY_SOCKET": notes.path}
    async with running_daemon(directory, CONFIG.format(rooms='["eu"]'), env=env) as d:
        first_ready = await notes.wait_for("READY")
        assert notes.count("WATCHDOG") == 0  # no WATCHDOG_USEC, no pings
        s = await node.connect(d.url, "/orders")
        refused = [{"error": "room 'us' is not allowed in /orders"}]
        assert await s.emit_with_ack("join", "us") == refused

        # a changed policy applies on SIGHUP; the port change waits for a restart
        config = directory / "roomd.toml"
        config.write_text(CONFIG.format(rooms='["eu", "us"]')
                          + "\n[server]\nping_interval = 10.0\n")
        d.proc.send_signal(signal.SIGHUP)
        reloading = await notes.wait_for("RELOADING", after=first_ready + 1)
        assert int(notes.received[reloading][1]["MONOTONIC_USEC"]) > 0
        await notes.wait_for("READY", after=reloading)
        assert await s.emit_with_ack("join", "us") == [{"rooms": sorted([s.sid, "us"])}]
        log = d.log()
        assert f"SIGHUP: configuration reloaded from {config}" in log
        assert "SIGHUP: changes to [server] take effect after a restart" in log

        # an invalid file keeps the running configuration (and the daemon)
        config.write_text(CONFIG.format(rooms='["eu"]') + "\n[log]\nlevl = \"debug\"\n")
        mark = len(notes.received)
        d.proc.send_signal(signal.SIGHUP)
        await notes.wait_for("READY", after=await notes.wait_for("RELOADING", after=mark))
        assert ("SIGHUP: keeping the running configuration: "
                f"unknown key 'log.levl' in {config}") in d.log()
        assert await s.emit_with_ack("join", ["us"]) == [{"rooms": sorted([s.sid, "us"])}]
        assert (await d.cli("status", "--json")).json()["pid"] == d.pid

        mark = len(notes.received)
        assert await stop(d.proc) == 0
        await notes.wait_for("STOPPING", after=mark)
        assert (await s.next_event("disconnect")).args == ["transport close"]
