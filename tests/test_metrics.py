"""The Prometheus endpoint: scraped while stock clients connect, join, publish and leave.

Values are read with prometheus-client's own text parser, never by matching strings.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import harness
import pytest
import trio
from http_client import request
from prometheus_client.parser import text_string_to_metric_families

import roomd
from roomd.apps.relay import RelayApp
from roomd.ops.config import NamespaceConfig
from roomd.ops.metrics import serve_metrics
from roomd.rooms.adapter import AdapterFactory

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


async def scrape(url: str) -> Scrape:
    reply = await request("GET", url)
    assert reply.status == 200, str(reply)
    assert reply.headers["content-type"].startswith("text/plain")
    return Scrape(reply.body.decode())


async def until(url: str, check, timeout: float = 10) -> Scrape:
    """Scrape until ``check(scrape)`` holds (the server applies commands asynchronously)."""
    with trio.fail_after(timeout):
        while True:
            s = await scrape(url)
            if check(s):
                return s
            await trio.sleep(0.05)


@pytest.fixture
async def served(nursery, start_server):
    io = roomd.Server(ping_interval=25)
    RelayApp(io, [NamespaceConfig(name="/"), NamespaceConfig(name="/chat")])

    @io.on("boom")
    async def boom(socket, *args):
        raise RuntimeError("an application bug")

    srv = await start_server(io)
    host, port = await nursery.start(functools.partial(serve_metrics, io, "127.0.0.1:0"))
    return srv, f"http://{host}:{port}/metrics"


async def test_values_move_with_real_clients(served, node, py_client):
    srv, url = served
    before = await scrape(url)
    assert before.value("roomd_connections", transport="websocket") == 0
    assert before.value("roomd_sockets", namespace="/") == 0
    assert before.value("roomd_build_info", version=roomd.__version__) == 1

    a = await node.connect(srv.url, "/", transports=["websocket"])
    p = await py_client()
    await p.connect(srv.url, ["/"], transports=["polling"])
    b = await node.connect(srv.url, "/chat", transports=["websocket"], force_new=True)
    s = await until(url, lambda s: s.value("roomd_sockets", namespace="/") == 2)
    assert s.value("roomd_connections", transport="websocket") == 2
    assert s.value("roomd_connections", transport="polling") == 1
    assert s.value("roomd_sockets", namespace="/chat") == 1
    assert s.value("roomd_connections_opened_total") - before.value(
        "roomd_connections_opened_total") == 3
    assert s.value("roomd_memory_budget_limit_bytes") == 512 * 1024 * 1024
    assert s.value("roomd_memory_budget_peak_bytes") >= s.value("roomd_memory_budget_used_bytes")
    assert s.value("roomd_half_open_connections") >= 0

    assert (await a.emit_with_ack("join", "lobby"))[0]["rooms"]
    assert (await p.call("join", "lobby"))
    assert (await b.emit_with_ack("join", ["r1", "r2"]))[0]["rooms"]
    s = await until(url, lambda s: s.value("roomd_rooms", namespace="/") == 1)
    assert s.value("roomd_rooms", namespace="/chat") == 2
    # room names and socket ids never become labels
    for labels in (lbl for key in s.samples for lbl in [dict(key[1])]):
        assert not set(labels.values()) & {"lobby", "r1", "r2", a.sid}

    mark = s
    ack = await a.emit_with_ack("publish", "lobby", "chat", {"text": "hi"}, 42)
    assert ack == [{"recipients": 1}]
    got = await p.next_event("chat")
    assert got.args == [{"text": "hi"}, 42]
    s = await until(url, lambda s: s.value("roomd_broadcasts_total")
                    > mark.value("roomd_broadcasts_total"))
    assert s.value("roomd_events_received_total") - mark.value("roomd_events_received_total") == 1
    assert s.value("roomd_deliveries_total") - mark.value("roomd_deliveries_total") >= 2
    assert s.value("roomd_events_sent_total") > mark.value("roomd_events_sent_total")
    assert s.value("roomd_sent_bytes_total") - mark.value("roomd_sent_bytes_total") > len("chat")
    assert s.value("roomd_received_bytes_total") > mark.value("roomd_received_bytes_total")
    assert s.value("roomd_messages_received_total") > mark.value("roomd_messages_received_total")

    # acks: one answered, one left to time out
    await srv.io.to("lobby").emit_with_ack("ping", 1, timeout=5)
    await node.on(a, "silent", auto_ack=False)
    with pytest.raises(roomd.AckTimeout):
        await srv.io.to(a.sid).emit_with_ack("silent", timeout=0.2)
    s = await scrape(url)
    assert s.value("roomd_acks_received_total") - mark.value("roomd_acks_received_total") >= 2
    assert s.value("roomd_ack_timeouts_total") - mark.value("roomd_ack_timeouts_total") == 1

    # a handler that raises
    await a.emit("boom")
    s = await until(url, lambda s: s.value("roomd_handler_errors_total")
                    - mark.value("roomd_handler_errors_total") == 1)

    # refusals: a namespace that does not exist, and an HTTP request of the wrong protocol
    with pytest.raises(harness.ConnectError):
        await node.connect(srv.url, "/nope", force_new=True)
    bad = await request("GET", f"{srv.url}/socket.io/?EIO=3&transport=polling")
    assert bad.status == 400
    s = await scrape(url)
    assert s.value("roomd_connect_errors_total") - mark.value("roomd_connect_errors_total") == 1
    assert s.value("roomd_http_refusals_total", status="400",
                   reason="Unsupported protocol version") == 1

    # disconnects by reason (the refused client's connection may still be closing)
    mark = await until(url, lambda s: s.value("roomd_connections", transport="websocket") == 2)
    await p.disconnect()
    s = await until(url, lambda s: s.value("roomd_connections", transport="polling") == 0)
    assert s.total("roomd_disconnects_total") - mark.total("roomd_disconnects_total") == 1
    assert s.value("roomd_sockets", namespace="/") == 1
    mark = s
    await srv.io.disconnect_sockets(close=True)
    s = await until(url, lambda s: s.value("roomd_connections", transport="websocket") == 1)
    # the server closes the connection, unless the client, told to go, closed it first
    closed = {labels["reason"]: s.value("roomd_disconnects_total", **labels) - mark.value(
        "roomd_disconnects_total", **labels) for labels in s.labels_of("roomd_disconnects_total")}
    assert {r: n for r, n in closed.items() if n} in ({"forced close": 1},
                                                      {"transport close": 1}), closed

    # process figures come along
    assert s.value("process_resident_memory_bytes") > 0
    assert s.value("process_open_fds") > 0


async def test_only_get_metrics(served):
    _, url = served
    base = url.rsplit("/", 1)[0]
    missing = await request("GET", base + "/other")
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"
    post = await request("POST", url, data=b"x")
    assert post.status == 413  # no body is accepted here at all
    wrong = await request("DELETE", url)
    assert wrong.status == 405


async def test_every_metric_is_documented(served):
    _, url = served
    s = await scrape(url)
    documented = set(re.findall(r"^\| `(roomd_\w+)`", DOCS.read_text(), re.MULTILINE))
    exported = {name for name in s.families if name.startswith("roomd_")}
    assert exported, "no roomd metric exported"
    assert exported <= documented, f"undocumented: {sorted(exported - documented)}"
    types = dict(re.findall(r"^\| `(roomd_\w+)` \| (\w+) \|", DOCS.read_text(), re.MULTILINE))
    for name in exported:
        assert types[name] == s.families[name], name


class ReportingFactory(AdapterFactory):
    """An adapter factory that reports cluster figures as a cluster factory does."""

    def status(self) -> dict:
        return {"adapter": "redis", "mode": "classic", "redis": "up", "published": 12,
                "dropped": 1, "connects": 2, "requests": {"fetch_sockets": 4},
                "request_seconds": {"fetch_sockets": 0.5},
                "request_timeouts": {"fetch_sockets": 1}, "stream_appended": 5,
                "stream_read": 9, "stream_failed": 0}

    async def server_count(self) -> int:
        return 3


async def test_cluster_figures(nursery, start_server):
    io = roomd.Server(adapter=ReportingFactory())
    await start_server(io)
    host, port = await nursery.start(functools.partial(serve_metrics, io, "127.0.0.1:0"))
    s = await scrape(f"http://{host}:{port}/metrics")
    assert s.value("roomd_cluster_info", adapter="redis", mode="classic") == 1
    assert s.value("roomd_cluster_redis_connected") == 1
    assert s.value("roomd_cluster_servers") == 3
    assert s.value("roomd_cluster_published_total") == 12
    assert s.value("roomd_cluster_dropped_total") == 1
    assert s.value("roomd_cluster_connects_total") == 2
    assert s.value("roomd_cluster_stream_appended_total") == 5
    assert s.value("roomd_cluster_stream_read_total") == 9
    assert s.value("roomd_cluster_stream_failed_total") == 0
    assert s.value("roomd_cluster_requests_total", type="fetch_sockets") == 4
    assert s.value("roomd_cluster_request_seconds_total", type="fetch_sockets") == 0.5
    assert s.value("roomd_cluster_request_timeouts_total", type="fetch_sockets") == 1
    documented = set(re.findall(r"^\| `(roomd_\w+)`", DOCS.read_text(), re.MULTILINE))
    exported = {name for name in s.families if name.startswith("roomd_cluster")}
    assert exported <= documented, sorted(exported - documented)


async def test_no_cluster_figures_in_memory(served):
    _, url = served
    s = await scrape(url)
    assert not [name for name in s.families if name.startswith("roomd_cluster")]


async def test_recovery_figures(nursery, start_server):
    """With connection state recovery on, a session whose connection dropped is kept: the
    gauges show it."""
    io = roomd.Server(connection_state_recovery=True)
    RelayApp(io, [NamespaceConfig(name="/")])
    srv = await start_server(io)
    host, port = await nursery.start(functools.partial(serve_metrics, io, "127.0.0.1:0"))
    url = f"http://{host}:{port}/metrics"
    assert (await scrape(url)).value("roomd_recovery_sessions") == 0
    # a raw WebSocket client connects "/", then its TCP connection just ends (no close frame)
    stream, status, _ = await harness.raw_ws_upgrade(srv.port)
    assert status == 101
    async with stream:
        await stream.send_all(harness.ws_frame("40"))
        with trio.fail_after(5):
            while not io.sockets.sockets:
                await trio.sleep(0.02)
        await io.emit("news", 1)
        await until(url, lambda s: s.value("roomd_deliveries_total") >= 2)
    s = await until(url, lambda s: s.value("roomd_recovery_sessions") == 1)
    assert s.value("roomd_recovery_packets") >= 1 and s.value("roomd_recovery_bytes") > 0
    documented = set(re.findall(r"^\| `(roomd_\w+)`", DOCS.read_text(), re.MULTILINE))
    assert {n for n in s.families if n.startswith("roomd_recovery")} <= documented
