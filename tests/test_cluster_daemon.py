"""Issue 14: ``[cluster]`` in roomd.toml, ``roomd serve`` nodes in a mixed cluster, status.

Two ``roomd serve`` processes with ``[cluster] adapter = "redis"`` and a Node.js Socket.IO
node share one real Redis: the relay app's ``publish`` on one daemon reaches the clients of
the other daemon and of the Node node; ``roomd status`` shows the adapter, the Redis
connection state and the server count. Without ``[cluster]`` nothing imports coredis.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
from daemon_proc import running_daemon, short_dir
from test_cluster_classic import WS, until

from roomd._errors import ConfigError
from roomd.ops.config import ClusterConfig, config_to_toml, load_config

pytestmark = pytest.mark.deadline(90)


def cluster_toml(url: str, mode: str = "classic") -> str:
    return f"""\
[cluster]
adapter = "redis"
url = "{url}"
mode = "{mode}"
request_timeout = 2.5

[[namespaces]]
name = "/"
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "roomd.toml"
    path.write_text(text)
    return str(path)


def test_cluster_config_defaults_and_values(tmp_path, monkeypatch):
    monkeypatch.delenv("ROOMD_CONFIG", raising=False)
    assert load_config(None, {}).cluster == ClusterConfig()
    assert ClusterConfig().adapter == "memory"
    config = load_config(write(tmp_path, cluster_toml("redis://10.0.0.1:7000", "sharded")))
    assert config.cluster == ClusterConfig("redis", "redis://10.0.0.1:7000", "socket.io",
                                           "sharded", 2.5)
    again = load_config(write(tmp_path, config_to_toml(config)))
    assert again.cluster == config.cluster


@pytest.mark.parametrize("body, message", [
    ('adapter = "kafka"', "cluster.adapter must be one of memory, redis"),
    ('mode = "streams"', "cluster.mode must be one of classic, sharded"),
    ('request_timeout = 0', "cluster.request_timeout must be greater than 0"),
    ('request_timeout = "5"', "cluster.request_timeout must be a number"),
    ('key = ""', "cluster.key must not be empty"),
    ('url = "http://x"', "cluster.url must be a redis://"),
    ('urls = ["redis://x"]', "unknown key 'cluster.urls'"),
    ('stream = ""', "cluster.stream must not be empty"),
    ('stream_maxlen = 0', "cluster.stream_maxlen must be at least 1"),
    ('stream_maxlen = 1.5', "cluster.stream_maxlen must be an integer"),
])
def test_cluster_config_errors_name_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write(tmp_path, f"[cluster]\n{body}\n"))


def test_without_cluster_nothing_imports_coredis():
    code = ("import sys\n"
            "from roomd.ops.config import load_config\n"
            "from roomd.ops.daemon import Daemon\n"
            "d = Daemon(load_config(None, {}))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('coredis', 'msgpack',"
            " 'roomd.cluster'))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_app_with_cluster_config_is_refused(tmp_path):
    from roomd.ops.daemon import Daemon

    config = load_config(write(tmp_path, '[cluster]\nadapter = "redis"\n[app]\nmodule = "x:io"\n'))
    with pytest.raises(ConfigError, match="adapter=roomd.cluster.RedisAdapterFactory"):
        Daemon(config)


async def test_roomd_serve_nodes_in_a_mixed_cluster(node, node_peer, redis_server):
    with short_dir() as dir1, short_dir() as dir2:
        async with running_daemon(dir1, cluster_toml(redis_server.url)) as d1, \
                running_daemon(dir2, cluster_toml(redis_server.url)) as d2:
            peer = await node_peer(redis_server.url)

            async def three() -> bool:
                status = (await d1.cli("status", "--json")).json()
                return status["cluster"]["servers"] == 3
            await until(three, timeout=20, what="roomd status counting 3 servers")

            s1 = await node.connect(d1.url, transports=WS, force_new=True)
            s2 = await node.connect(d2.url, transports=WS, force_new=True)
            sn = await node.connect(peer.url, transports=WS, force_new=True)
            assert await s1.emit_with_ack("join", "lobby") == [{"rooms": sorted([s1.sid,
                                                                                "lobby"])}]
            await s2.emit_with_ack("join", "lobby")
            await sn.emit_with_ack("join", ["lobby"])
            # the relay's publish on d1 reaches d2's and the Node node's clients
            await s1.emit_with_ack("publish", "lobby", "chat", "hi", b"\x01")
            assert (await s2.next_event("chat")).args == ["hi", b"\x01"]
            assert (await sn.next_event("chat")).args == ["hi", b"\x01"]
            # the admin emit of d2 too
            result = await d2.cli("emit", "/", "notice", '"x"', "--room", "lobby")
            assert result.returncode == 0, result.stderr
            for sock in (s1, s2, sn):
                assert (await sock.next_event("notice")).args == ["x"]

            # the cluster's rooms, from either node, with this node's members
            s_only = await node.connect(peer.url, transports=WS, force_new=True)
            await s_only.emit_with_ack("join", "node-only")
            rooms = (await d2.cli("rooms", "list", "--cluster", "--json")).json()
            by_name = {r["room"]: r for r in rooms}
            assert by_name["lobby"]["local"] == 1 and by_name["node-only"]["local"] == 0
            assert not any(r["private"] for r in rooms)
            everything = (await d2.cli("rooms", "list", "--cluster", "--all", "--json")).json()
            assert {s1.sid, s2.sid, sn.sid} <= {r["room"] for r in everything if r["private"]}
            text = (await d1.cli("rooms", "list", "--cluster")).stdout
            assert "LOCAL MEMBERS" in text and "node-only" in text

            status = (await d1.cli("status", "--json")).json()["cluster"]
            assert status["adapter"] == "redis" and status["mode"] == "classic"
            assert status["redis"] == "up" and status["servers"] == 3
            text = await d1.cli("status")
            assert f"redis classic {redis_server.url}: up, 3 server(s)" in text.stdout

            await redis_server.stop()

            async def down() -> bool:
                return (await d1.cli("status", "--json")).json()["cluster"]["redis"] == "down"
            await until(down, timeout=10, what="roomd status showing Redis down")
            with trio.fail_after(5):  # d1 keeps serving its own clients
                await s1.emit_with_ack("join", "lobby")
            log = d1.log_path.read_text()
            assert log.count("unavailable") == 1, log


async def test_prometheus_figures_of_a_real_cluster(nursery, start_server, redis_server):
    import functools

    from test_cluster_classic import cluster_of, make_roomd
    from test_metrics import scrape

    from roomd.ops.metrics import serve_metrics

    a, b = make_roomd(redis_server.url), make_roomd(redis_server.url)
    await start_server(a)
    await start_server(b)
    await cluster_of([a, b], None, 2)
    host, port = await nursery.start(functools.partial(serve_metrics, a, "127.0.0.1:0"))
    await a.emit("x")
    await a.fetch_sockets()

    async def figures() -> bool:
        s = await scrape(f"http://{host}:{port}/metrics")
        return s.value("roomd_cluster_published_total") >= 2
    await until(figures, what="published messages counted")
    s = await scrape(f"http://{host}:{port}/metrics")
    assert s.value("roomd_cluster_info", adapter="redis", mode="classic") == 1
    assert s.value("roomd_cluster_redis_connected") == 1
    assert s.value("roomd_cluster_servers") == 2
    assert s.value("roomd_cluster_connects_total") == 1
    assert s.value("roomd_cluster_requests_total", type="fetch_sockets") == 1
    assert s.value("roomd_cluster_request_timeouts_total", type="fetch_sockets") == 0
