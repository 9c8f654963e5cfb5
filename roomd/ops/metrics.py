"""Prometheus metrics: a collector that reads roomd's counters at scrape time.

Nothing here runs on the delivery path. The server keeps plain integers where
things happen (``Server.metrics()`` gathers them); :class:`RoomdCollector`
turns one such snapshot into metric families when Prometheus scrapes, and
:func:`serve_metrics` answers ``GET /metrics`` on its own listener
(``[metrics] listen``). Labels are bounded sets: transports, namespaces (which
the configuration or the application declares), disconnect reasons and
Engine.IO error messages (fixed strings in the code). Room names and socket
ids never become labels.

Every metric is documented in docs/metrics.md; a test checks that the two
agree. A cluster adapter's figures come from its factory's ``status()``
(:data:`CLUSTER_KEYS` says which keys are exported).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .._version import VERSION
from ..api.server import Server
from .httpserv import Request, Response, error_response, serve_http

logger = logging.getLogger("roomd.metrics")

METRICS_PATH = "/metrics"


CLUSTER_KEYS = """What is read of a cluster adapter factory's ``status()`` (all optional
but ``adapter``): ``adapter``, ``mode``, ``redis`` ("up" when connected; or a boolean
``redis_connected``), ``published``, ``dropped``, ``connects``, ``stream_appended``,
``stream_read``, ``stream_failed``, and per request type
``requests``, ``request_seconds``, ``request_timeouts`` ({type: number}). The server
count comes from the factory's ``async server_count()``, asked at scrape time (bounded
by SERVER_COUNT_TIMEOUT). The in-memory adapter reports ``{"adapter": "memory"}``: no
cluster metric is exported for it."""

# How long a scrape waits for the cluster's server count before leaving it out.
SERVER_COUNT_TIMEOUT = 2.0


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class RoomdCollector(Collector):
    """Builds every ``roomd_*`` metric from one ``Server.metrics()`` snapshot."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server_count: int | None = None  # set by the scrape handler before collecting

    def collect(self) -> Iterator[Metric]:
        m = self.server.metrics()
        info = GaugeMetricFamily("roomd_build_info", "roomd's version (always 1)",
                                 labels=["version"])
        info.add_metric([VERSION], 1)
        yield info
        yield _gauge("roomd_uptime_seconds", "Seconds since the server started listening",
                     m["uptime"])

        connections = GaugeMetricFamily("roomd_connections",
                                        "Open Engine.IO connections by transport",
                                        labels=["transport"])
        for transport, count in sorted(m["connections"].items()):
            connections.add_metric([transport], count)
        yield connections
        yield _counter("roomd_connections_opened", "Engine.IO connections opened",
                       m["connections_opened"])
        disconnects = CounterMetricFamily(
            "roomd_disconnects", "Engine.IO connections closed, by reason", labels=["reason"])
        for reason, count in sorted(m["disconnects"].items()):
            disconnects.add_metric([reason], count)
        yield disconnects
        refusals = CounterMetricFamily(
            "roomd_http_refusals", "HTTP requests to the Engine.IO endpoint refused",
            labels=["status", "reason"])
        for (status, reason), count in sorted(m["http_refusals"].items()):
            refusals.add_metric([str(status), reason], count)
        yield refusals
        budget = m["memory_budget"]
        yield _gauge("roomd_memory_budget_used_bytes",
                     "Bytes counted in the memory budget now (docs/limits.md)", budget["used"])
        yield _gauge("roomd_memory_budget_peak_bytes",
                     "The most bytes ever counted in the memory budget", budget["peak"])
        yield _gauge("roomd_memory_budget_limit_bytes",
                     "The memory budget (limits.memory_budget; 0: unlimited)", budget["limit"])
        yield _gauge("roomd_half_open_connections",
                     "TCP connections accepted and not yet past their request",
                     m["half_open"])
        yield _counter("roomd_connect_errors",
                       "CONNECT_ERROR replies (unknown namespace, refused by a middleware)",
                       m["connect_errors"])

        sockets = GaugeMetricFamily("roomd_sockets", "Connected sockets per namespace",
                                    labels=["namespace"])
        rooms = GaugeMetricFamily("roomd_rooms",
                                  "Rooms per namespace, not counting each socket's own room",
                                  labels=["namespace"])
        for name, figures in sorted(m["namespaces"].items()):
            sockets.add_metric([name], figures["sockets"])
            rooms.add_metric([name], figures["rooms"])
        yield sockets
        yield rooms

        for name, key, doc in (
            ("roomd_messages_received", "messages_received", "Engine.IO messages received"),
            ("roomd_received_bytes", "bytes_received",
             "Bytes received from WebSockets and long-polling POST bodies"),
            ("roomd_events_received", "events_received", "Socket.IO events received"),
            ("roomd_events_sent", "events_sent",
             "Events emitted by the server (a broadcast counts once)"),
            ("roomd_broadcasts", "broadcasts", "Broadcasts (to rooms or namespaces) sent"),
            ("roomd_deliveries", "deliveries",
             "Packets put into a socket's outbox (each recipient of a broadcast counts)"),
            ("roomd_sent_bytes", "bytes_sent",
             "Bytes put into outboxes, counted as WebSocket frames"),
            ("roomd_dropped_messages", "dropped",
             "Messages dropped by a full outbox (volatile, or slow_consumer = \"drop\")"),
            ("roomd_acks_received", "acks_received", "Acknowledgements received from clients"),
            ("roomd_ack_timeouts", "ack_timeouts", "emit_with_ack calls that timed out"),
            ("roomd_handler_errors", "handler_errors",
             "Event handlers that raised (each is logged)"),
        ):
            yield _counter(name, doc, m[key])
        app = m.get("counters", {})
        for name, key, doc in (
            ("roomd_auth_refused", "auth_refused",
             "Connections refused for their token (namespaces with auth)"),
            ("roomd_auth_expired", "auth_expired",
             "Sockets disconnected when their token expired unrefreshed"),
            ("roomd_rate_limited_events", "rate_limited_events",
             "Events refused by a per-socket rate limit"),
            ("roomd_rate_limit_disconnects", "rate_limit_disconnects",
             "Sockets disconnected for exceeding their rate limit"),
        ):
            yield _counter(name, doc, app.get(key, 0))
        recovery = m.get("recovery")
        if recovery is not None:  # connection state recovery is on
            for key, doc in (("sessions", "Disconnected sessions kept for recovery"),
                             ("packets", "Packets kept for replay to recovering sessions"),
                             ("bytes", "Bytes of the packets kept for replay")):
                yield _gauge(f"roomd_recovery_{key}", doc, recovery[key])
        yield from self._cluster(m["cluster"])

    def _cluster(self, c: dict[str, Any]) -> Iterator[Metric]:
        if c.get("adapter", "memory") == "memory":
            return
        info = GaugeMetricFamily("roomd_cluster_info", "The cluster adapter in use (always 1)",
                                 labels=["adapter", "mode"])
        info.add_metric([str(c.get("adapter")), str(c.get("mode", ""))], 1)
        yield info
        connected = c.get("redis_connected", c.get("redis") == "up" if "redis" in c else None)
        if connected is not None:
            yield _gauge("roomd_cluster_redis_connected",
                         "1 while the Redis connection is up, else 0", int(bool(connected)))
        if self.server_count is not None:
            yield _gauge("roomd_cluster_servers", "Servers in the cluster, this one included",
                         self.server_count)
        for key, name, doc in (
            ("published", "roomd_cluster_published", "Messages published to the cluster"),
            ("dropped", "roomd_cluster_dropped",
             "Messages that could not be published (Redis down)"),
            ("connects", "roomd_cluster_connects", "Connections made to Redis"),
            ("stream_appended", "roomd_cluster_stream_appended",
             "Entries this node appended to the Redis stream (streams adapter)"),
            ("stream_read", "roomd_cluster_stream_read",
             "Entries read from the Redis stream (streams adapter)"),
            ("stream_failed", "roomd_cluster_stream_failed",
             "Stream and session commands that failed (streams adapter)"),
        ):
            if isinstance(c.get(key), (int, float)):
                yield _counter(name, doc, c[key])
        for key, name, doc in (
            ("requests", "roomd_cluster_requests", "Cluster requests sent, by type"),
            ("request_seconds", "roomd_cluster_request_seconds",
             "Seconds spent waiting for cluster responses, by request type"),
            ("request_timeouts", "roomd_cluster_request_timeouts",
             "Cluster requests that timed out, by type"),
        ):
            if isinstance(c.get(key), dict):
                family = CounterMetricFamily(name, doc, labels=["type"])
                for kind, value in sorted(c[key].items()):
                    family.add_metric([str(kind)], value)
                yield family


def build_registry(server: Server) -> tuple[CollectorRegistry, RoomdCollector]:
    """roomd's collector plus the process, platform and garbage-collector figures."""
    registry = CollectorRegistry(auto_describe=False)
    collector = RoomdCollector(server)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, collector


async def cluster_server_count(server: Server) -> int | None:
    """The adapter factory's server count, when it has one and answers in time."""
    factory = server.adapter_factory
    count = getattr(factory, "server_count", None)
    if count is None or factory.status().get("adapter", "memory") == "memory":
        return None
    with trio.move_on_after(SERVER_COUNT_TIMEOUT):
        try:
            return int(await count())
        except Exception as exc:  # a cluster error must not fail the scrape
            logger.info("cluster server count unavailable: %s", exc)
    return None


async def serve_metrics(server: Server, listen: str, *,
                        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Answer ``GET /metrics`` on ``listen`` until cancelled.

    ``task_status.started`` gets the bound (host, port); OSError when the
    address cannot be bound.
    """
    registry, collector = build_registry(server)

    async def handle(request: Request) -> Response:
        if request.path != METRICS_PATH:
            return error_response(404, "not_found", f"no such path; metrics are at {METRICS_PATH}")
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", "use GET")
        collector.server_count = await cluster_server_count(server)
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    await serve_http(handle, listen, name="metrics", max_body=0, task_status=task_status)


__all__ = ["CLUSTER_KEYS", "RoomdCollector", "build_registry", "serve_metrics"]
