"""Real Redis servers and Node.js Socket.IO peers for the cluster tests.

- :class:`RedisServer`: ``redis-server`` on a free loopback port, no persistence; ``stop()``
  and ``start()`` again on the same port (outage tests); killed by its PID at the end.
- :class:`RedisClusterServers`: three ``redis-server --cluster-enabled yes`` masters joined
  with ``redis-cli --cluster create``.
- :class:`NodePeer`: ``node tests/node/cluster_node.js`` (a Socket.IO server with
  @socket.io/redis-adapter or @socket.io/redis-streams-adapter, with connection state recovery
  when asked, and @socket.io/redis-emitter), driven in JSON lines; see the
  protocol at the top of that file.
- fixtures ``redis_server``, ``redis_cluster``, ``node_peer`` (a factory).

Every wait is bounded. Only processes started here are ended, each by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from children import stop
from harness import NODE_DIR, HarnessError, JsonLinesChild, Received, from_wire, to_wire

CLUSTER_NODE_JS = NODE_DIR / "cluster_node.js"
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open while picking, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise RuntimeError(f"{program} is not installed: `make install` installs redis-server")
    return path


async def _ping(port: int, proc: trio.Process | None = None, log: str = "",
                timeout: float = 10) -> None:
    """Wait until a Redis answers PING on ``port`` (fail at once if ``proc`` exited)."""
    cli = _need("redis-cli")
    with trio.fail_after(timeout):
        while True:
            if proc is not None and proc.poll() is not None:
                tail = open(log, errors="replace").read()[-2000:] if log else ""
                raise RuntimeError(f"redis-server on port {port} exited: {tail}")
            result = await trio.run_process([cli, "-h", HOST, "-p", str(port), "ping"],
                                            capture_stdout=True, capture_stderr=True, check=False)
            if result.stdout.strip() == b"PONG":
                return
            await trio.sleep(0.05)


class RedisServer:
    """One redis-server on loopback; ``url`` stays the same across stop()/start()."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None,
                 workdir: str | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra or []
        self.workdir = workdir or tempfile.mkdtemp(prefix="roomd-redis-")
        self.proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    async def start(self) -> None:
        server = _need("redis-server")
        log = os.path.join(self.workdir, f"redis-{self.port}.log")
        self.proc = await trio.lowlevel.open_process(
            [server, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--logfile", log, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await _ping(self.port, self.proc, log)

    async def stop(self) -> None:
        """Kill it (by PID) and wait until it is gone."""
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop(proc, signal.SIGKILL, timeout=10)

    async def cli(self, *args: str) -> str:
        result = await trio.run_process([_need("redis-cli"), "-h", HOST, "-p", str(self.port),
                                         *args], capture_stdout=True, check=True)
        return result.stdout.decode()


class RedisClusterServers:
    """Three masters of a Redis Cluster on loopback."""

    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="roomd-rcluster-")
        ports = free_ports(6)  # client ports, then cluster bus ports (port+10000 may not exist)
        self.nodes = [RedisServer(ports[i], extra=["--cluster-enabled", "yes",
                                                   "--cluster-port", str(ports[3 + i]),
                                                   "--cluster-config-file", f"nodes-{i}.conf",
                                                   "--cluster-node-timeout", "2000"],
                                  workdir=self.workdir)
                      for i in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        await trio.run_process([_need("redis-cli"), "--cluster", "create", *addresses,
                                "--cluster-yes"], capture_stdout=True, capture_stderr=True,
                               check=True)
        with trio.fail_after(20):
            while True:
                infos = [await node.cli("cluster", "info") for node in self.nodes]
                if all("cluster_state:ok" in info for info in infos):
                    return
                await trio.sleep(0.1)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
async def redis_cluster() -> AsyncIterator[RedisClusterServers]:
    cluster = RedisClusterServers()
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)


class NodePeer(JsonLinesChild):
    """A Node.js Socket.IO server (or only an emitter) on the same Redis."""

    name = "cluster_node.js"

    def __init__(self, redis_url: str, *, mode: str = "classic", cluster: bool = False,
                 key: str = "socket.io", namespaces: tuple[str, ...] = (),
                 server: bool = True, requests_timeout: float = 5.0,
                 command_timeout: float = 15, watchdog: float = 120,
                 recovery: float = 0) -> None:
        super().__init__(command_timeout)
        self.args = ["--redis", redis_url, "--mode", mode, "--key", key,
                     "--requests-timeout", str(int(requests_timeout * 1000))]
        if recovery:
            self.args += ["--recovery", str(int(recovery * 1000))]
        for name in namespaces:
            self.args += ["--nsp", name]
        if cluster:
            self.args.append("--cluster")
        if not server:
            self.args.append("--no-server")
        self.watchdog = watchdog
        self.port: int | None = None
        self._ready = trio.Event()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, nursery: trio.Nursery) -> NodePeer:
        """Start the process, its reader in ``nursery``; returns once it listens."""
        node = _need("node")
        env = dict(os.environ, ROOMD_CLIENT_WATCHDOG_MS=str(int(self.watchdog * 1000)))
        self.proc = await trio.lowlevel.open_process(
            [node, str(CLUSTER_NODE_JS), *self.args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, cwd=str(NODE_DIR), env=env)
        nursery.start_soon(self._reader)
        with trio.fail_after(20):
            await self._ready.wait()
        if self._dead:
            raise HarnessError(self._dead)
        return self

    async def kill(self) -> None:
        """End the node process (by its PID) and wait for it."""
        if self.proc is not None:
            await stop(self.proc, signal.SIGKILL, timeout=10)

    def _on_exit(self) -> None:
        self._ready.set()

    def _on_event(self, msg: dict) -> None:
        kind = msg.get("event")
        if kind == "listening":
            self.port = msg["port"]
            self._ready.set()
        elif kind == "ready":
            self._ready.set()
        else:
            self.inbox.push(Received(msg.get("name") or str(kind), from_wire(msg.get("args", [])),
                                     namespace=msg.get("nsp"), raw=msg))

    async def command(self, cmd: str, **fields: Any) -> dict:
        reply = await self._exchange(cmd, to_wire(fields))
        if not reply.get("ok"):
            raise HarnessError(f"{cmd}: {reply.get('error')}", reply)
        return from_wire(reply)

    async def server_event(self, name: str, timeout: float = 5) -> Received:
        return await self.inbox.next(lambda ev: ev.raw.get("event") == "serverEvent"
                                     and ev.name == name, timeout, f"server event {name!r}")

    @staticmethod
    def target(nsp: str = "/", rooms: tuple[str, ...] | list[str] = (),
               except_rooms: tuple[str, ...] | list[str] = (), volatile: bool = False) -> dict:
        return {"nsp": nsp, "rooms": list(rooms), "except": list(except_rooms),
                "volatile": volatile}


@pytest.fixture
async def node_peer(nursery: trio.Nursery) -> AsyncIterator[Any]:
    """``peer = await node_peer(redis_url, mode=..., ...)``; all are killed at teardown."""
    peers: list[NodePeer] = []

    async def make(redis_url: str, **kwargs: Any) -> NodePeer:
        peer = NodePeer(redis_url, **kwargs)
        peers.append(peer)
        return await peer.start(nursery)

    try:
        yield make
    finally:
        for peer in peers:
            await peer.kill()
