"""The daemon: a Server, the admin socket, systemd integration and signals.

Beside the Socket.IO listener it runs, when the configuration turns them on,
the Prometheus endpoint (``[metrics]``), the Socket.IO Admin UI's namespace
(``[admin_ui]``) and the HTTP API for backends (``[http_api]``), each started
before READY=1 so that a bad address or key file stops the start-up.

``roomd serve`` calls :func:`run_daemon`. SIGTERM and SIGINT stop it
gracefully (stop accepting, every client's transport closed without a
Socket.IO DISCONNECT so that it reconnects, queued messages drained within
``limits.shutdown_grace``); SIGHUP re-reads the
configuration file and applies what can change safely: the log level, the
relay app's namespaces (added, removed: their sockets disconnected, changed;
rate limits included), token keys (``[auth.NAME]``, re-read from their
files), and the TLS certificate (re-read from its files even when their names
did not change, for new connections; open ones keep theirs).

The listening address is bound here (unless systemd passed sockets), so a
port that is taken is named in the one-line error. The admin socket's default
path is per instance: ``admin.instance``, else the port that was bound.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import gc
import importlib
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from typing import Any

import trio

from .._errors import ConfigError, RoomdError
from ..api.server import Server
from ..apps.admin_ui import AdminUI
from ..apps.relay import RelayApp
from ..apps.tokens import TokenVerifier
from ..transport.tls import server_context
from . import systemd
from .admin import serve_admin
from .admin_proto import default_admin_socket
from .config import AuthConfig, Config, ServerConfig, load_config
from .http_api import read_key, serve_http_api
from .metrics import serve_metrics

logger = logging.getLogger("roomd.daemon")

GC_THRESHOLDS = (20_000, 20, 20)
# The listen queue holds the connections a burst of reconnecting clients opens faster than
# roomd accepts them: None asks trio for the most it passes (65535), which the kernel caps
# at net.core.somaxconn, so the system's setting decides. As Server.serve's own listeners.
LISTEN_BACKLOG = None


def load_app(spec: str, app_dir: str | None = None) -> Server:
    """Import ``module:attribute`` (as uvicorn does) and return the Server.

    The module is looked up from ``app_dir`` (when given), the current
    directory and PYTHONPATH. Raises ConfigError when it cannot be imported
    or the attribute is not a roomd.Server.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"app must look like 'module:attribute', got {spec!r}")
    for directory in (os.getcwd(), app_dir):
        if directory:
            directory = os.path.abspath(directory)
            if directory in sys.path:
                sys.path.remove(directory)
            sys.path.insert(0, directory)  # app_dir ends up first
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from None
    app: Any = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise ConfigError(
                f"app module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(app, Server):
        raise ConfigError(f"{spec} is a {type(app).__name__}, not a roomd.Server")
    return app


def cors_origins(config: Config) -> list[str]:
    """server.cors_origins, plus the Admin UI's origins when it is enabled."""
    origins = list(config.server.cors_origins)
    if config.admin_ui.enabled and "*" not in origins:
        origins += [o for o in config.admin_ui.origins if o not in origins]
    return origins


def adapter_factory(config: Config) -> Any:
    """The cluster adapter factory ``[cluster]`` asks for, or None (in memory).

    roomd.cluster (and with it coredis) is imported only here, only then.
    """
    cluster = config.cluster
    if cluster.adapter not in ("redis", "redis-streams"):
        return None
    from ..cluster.factory import RedisAdapterFactory

    mode = "streams" if cluster.adapter == "redis-streams" else cluster.mode
    return RedisAdapterFactory(cluster.url, key=cluster.key, mode=mode,
                               request_timeout=cluster.request_timeout, stream=cluster.stream,
                               stream_maxlen=cluster.stream_maxlen)


def server_options(config: Config) -> dict[str, Any]:
    """The Server keyword arguments the configuration sets."""
    s, limits = config.server, config.limits
    return dict(ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
                max_payload=s.max_payload, connect_timeout=s.connect_timeout,
                cors_origins=cors_origins(config), path=s.path,
                outbox_limit=limits.outbox_messages, slow_consumer=limits.slow_consumer,
                max_connections=limits.max_connections, trusted_proxies=s.trusted_proxies,
                outbox_bytes=limits.outbox_bytes, memory_budget=limits.memory_budget,
                connections_per_ip=limits.connections_per_ip,
                sessions_per_ip_rate=limits.sessions_per_ip_rate,
                sessions_per_ip_burst=limits.sessions_per_ip_burst,
                exempt_addresses=limits.exempt_addresses, max_half_open=limits.max_half_open,
                head_timeout=limits.head_timeout, body_timeout=limits.body_timeout,
                keepalive_timeout=limits.keepalive_timeout, send_timeout=limits.send_timeout,
                upgrade_timeout=limits.upgrade_timeout,
                connection_state_recovery=recovery_options(config),
                adapter=adapter_factory(config))


def recovery_options(config: Config) -> dict[str, Any] | None:
    """``[recovery]`` for the relay's namespaces that recover (None when none does).

    A namespace's ``recovery`` key wins over ``recovery.enabled``.
    """
    r = config.recovery
    names = [ns.name for ns in config.namespaces
             if (r.enabled if ns.recovery is None else ns.recovery)]
    if not names:
        return None
    return dict(max_disconnection_duration=r.max_disconnection_duration,
                skip_middlewares=r.skip_middlewares, max_packets=r.max_packets,
                max_bytes=r.max_bytes, max_sessions=r.max_sessions, namespaces=names)


def verifier_for(auth: AuthConfig) -> TokenVerifier:
    """The token verifier an ``[auth.NAME]`` table describes; ConfigError names the table."""
    try:
        return TokenVerifier.from_files(
            secret_file=auth.secret_file, public_key_file=auth.public_key_file,
            jwks_file=auth.jwks_file, algorithm=auth.algorithm, issuer=auth.issuer,
            audience=auth.audience, leeway=auth.leeway, require_exp=auth.require_exp)
    except ConfigError as exc:
        raise ConfigError(f"auth.{auth.name}: {exc}") from None


def verifiers_for(config: Config) -> dict[str, TokenVerifier]:
    return {auth.name: verifier_for(auth) for auth in config.auth}


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's SSLContext when ``server.tls_certfile`` is set (files read now)."""
    s = config.server
    if s.tls_certfile is None:
        return None
    return server_context(s.tls_certfile, s.tls_keyfile, s.tls_client_ca)


def _without_tls(server: ServerConfig) -> ServerConfig:
    """The [server] settings a reload cannot apply (the TLS files it can)."""
    return dataclasses.replace(server, tls_certfile=None, tls_keyfile=None, tls_client_ca=None)


class Daemon:
    """One run of ``roomd serve``."""

    def __init__(self, config: Config, overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        self.overrides = dict(overrides or {})
        self.relay: RelayApp | None = None
        self.ssl_context = tls_context(config)
        if config.app.module:
            if config.cluster.adapter != "memory":
                raise ConfigError("[cluster] configures the built-in relay app; an application "
                                  "passes adapter=roomd.cluster.RedisAdapterFactory(...) to "
                                  "its roomd.Server")
            self.server = load_app(config.app.module, config.app.dir)
        else:
            self.server = Server(**server_options(config))
            self.relay = RelayApp(self.server, config.namespaces, verifiers_for(config),
                                  rooms_per_socket=config.limits.rooms_per_socket)
        self.admin_ui: AdminUI | None = None
        ui = config.admin_ui
        if ui.enabled:
            self._check_ui_origins()
            self.admin_ui = AdminUI(
                self.server, namespace=ui.namespace, auth=ui.auth, username=ui.username,
                password_hash=ui.password_hash, readonly=ui.readonly, mode=ui.mode,
                server_id=ui.server_id)
        if config.http_api.enabled:
            assert config.http_api.key_file is not None
            read_key(config.http_api.key_file)  # an unusable key file stops the start-up now

    def _check_ui_origins(self) -> None:
        allowed = self.server.options.cors_origins
        if not self.config.server.cors_origins and self.config.app.module is None:
            logger.warning("admin_ui: CORS now allows only %s; list other browser origins "
                           "in server.cors_origins", ", ".join(cors_origins(self.config)))
        missing = [o for o in self.config.admin_ui.origins
                   if "*" not in allowed and o not in allowed]
        if missing:
            logger.warning("admin_ui: the app's cors_origins lack %s: the Admin UI page "
                           "there cannot connect", ", ".join(missing))

    async def _listeners(self) -> list[trio.SocketListener]:
        """The sockets systemd passed (socket activation), else server.host:port bound here.

        Raises RoomdError naming the address when it cannot be bound.
        """
        sockets = systemd.listen_fds()
        if sockets:
            return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        host, port = self.config.server.host, self.config.server.port
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            return await trio.open_tcp_listeners(port, host=host, backlog=LISTEN_BACKLOG)
        except socket.gaierror as exc:  # before OSError, its base class
            raise RoomdError(f"cannot listen on {where}: {exc.strerror}") from None
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (another process listens there: stop it, or choose another --port)"
            elif exc.errno == errno.EACCES and port < 1024:
                hint = " (ports below 1024 need privileges)"
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise RoomdError(f"cannot listen on {where}: {reason}{hint}") from None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (then shut down gracefully) or cancellation.

        Raises RoomdError (or OSError) when the listener or the admin socket
        cannot be set up; nothing is left running then.
        """
        config = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(functools.partial(
                    self.server.serve, config.server.host, config.server.port,
                    listeners=await self._listeners(), ssl_context=self.ssl_context))
                if config.admin.enabled:
                    instance = config.admin.instance or str(port)
                    await nursery.start(functools.partial(
                        serve_admin, AdminBackend(self.server, self.relay),
                        config.admin.socket or default_admin_socket(instance),
                        group=config.admin.group, instance=instance))
                await self._start_extras(nursery)
                await nursery.start(systemd.run_watchdog)
                where = ", ".join(self.server.listen_addresses)
                systemd.notify_ready(f"serving on {where}")
                task_status.started(port)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload()
                        continue
                    logger.info("received %s: shutting down", signal.Signals(signum).name)
                    systemd.notify_stopping("draining connections")
                    # The drain frees what the connections held and builds nothing that
                    # lasts: the cyclic collector would only rescan the dying heap
                    # (40 % of a 5000-connection shutdown, docs/performance.md).
                    collecting = gc.isenabled()
                    gc.disable()
                    try:
                        await self.server.shutdown(config.limits.shutdown_grace)
                    finally:
                        if collecting:
                            gc.enable()
                    nursery.cancel_scope.cancel()
                    break

    async def _start_extras(self, nursery: trio.Nursery) -> None:
        config = self.config  # the Admin UI runs as a background task of the server
        if config.metrics.enabled:
            await nursery.start(functools.partial(serve_metrics, self.server,
                                                  config.metrics.listen))
        api = config.http_api
        if api.enabled:
            assert api.key_file is not None
            await nursery.start(functools.partial(
                serve_http_api, self.server, api.listen, api.key_file, prefix=api.prefix,
                max_body=api.max_body))

    async def reload(self) -> None:
        """Re-read the configuration file; keep the old one when it is invalid.

        Applied: the log level, the relay's namespaces (added ones served, removed
        ones refuse connections and disconnect their sockets, policies replaced),
        the token keys and the TLS certificate (for new connections). Everything
        is read and checked before anything is applied. Other changes are logged
        as needing a restart.
        """
        systemd.notify_reloading("reloading configuration")
        try:
            if self.config.source is None:
                logger.info("SIGHUP: no configuration file to reload")
                return
            new = load_config(self.config.source, self.overrides)
            context = tls_context(new)
            verifiers = verifiers_for(new) if self.relay is not None else {}
            if (context is None) != (self.ssl_context is None):
                raise ConfigError("turning TLS on or off needs a restart")
            systemd.setup_logging(new.log.level)
            if self.relay is not None:
                added, removed = await self.relay.update(new.namespaces, verifiers)
                for verb, names in (("added", added), ("removed", removed)):
                    if names:
                        logger.info("SIGHUP: namespaces %s: %s", verb, ", ".join(names))
            if context is not None:
                self.ssl_context = self.server.ssl_context = context
                logger.info("SIGHUP: TLS certificate reloaded for new connections")
            restart = [key for key in ("admin", "app", "metrics", "admin_ui",
                                       "http_api", "cluster")
                       if getattr(new, key) != getattr(self.config, key)]
            if _without_tls(new.server) != _without_tls(self.config.server):
                restart.insert(0, "server")
            if recovery_options(new) != recovery_options(self.config):
                restart.append("recovery")
            if new.limits != self.config.limits:
                restart.append("limits")
            if restart:
                logger.warning("SIGHUP: changes to [%s] take effect after a restart",
                               "], [".join(restart))
            self.config = new
            logger.info("SIGHUP: configuration reloaded from %s", new.source)
        except RoomdError as exc:
            logger.error("SIGHUP: keeping the running configuration: %s", exc)
        finally:
            systemd.notify_ready("serving")


class AdminBackend:
    """The Server as the admin socket sees it: with the relay app, only the namespaces of
    the current configuration exist (a namespace removed on SIGHUP is not listed)."""

    def __init__(self, server: Server, relay: RelayApp | None) -> None:
        self.server = server
        self.relay = relay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def namespace_names(self) -> list[str]:
        names = self.server.namespace_names()
        if self.relay is None:
            return names
        return [name for name in names if self.relay.serves(name)]

    def stats(self) -> dict[str, Any]:
        stats = dict(self.server.stats())
        stats["namespaces"] = len(self.namespace_names())
        return stats


def tune_gc() -> None:
    """Set the cyclic collector up for a server of long-lived connections.

    With the default thresholds the collector rescans every live
    connection's objects again and again as connections accumulate: a
    quarter of the CPU under load, and pauses of tens of milliseconds (see
    docs/performance.md). A larger young generation lets short-lived
    objects die first; what the daemon built before serving is frozen out
    of every scan.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])


def raise_fd_limit() -> None:
    """Raise the soft descriptor limit to the hard one: every connection needs one.

    Shells often start with a soft limit of 1024 under a far larger hard
    limit; the systemd unit sets LimitNOFILE itself.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            logger.info("file descriptor limit raised from %d to %s", soft,
                        "unlimited" if hard == resource.RLIM_INFINITY else hard)
    except (OSError, ValueError) as exc:
        logger.info("file descriptor limit left as it is: %s", exc)


def run_daemon(config: Config, overrides: dict[str, Any] | None = None) -> int:
    """Run ``roomd serve`` in the foreground; returns the exit status.

    ``overrides`` are the command-line settings, re-applied on SIGHUP.
    ConfigError (a bad app, say) propagates; other start-up errors are
    logged as one line (exit status 1), never as a traceback.
    """
    systemd.setup_logging(config.log.level)
    status = 0
    raise_fd_limit()
    daemon = Daemon(config, overrides)
    tune_gc()
    try:
        trio.run(daemon.run)
    except* (RoomdError, OSError) as group:
        for exc in _leaves(group):
            logger.error("%s", exc)
        status = 1
    except* KeyboardInterrupt:
        pass
    return status


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for exc in group.exceptions for leaf in _leaves(exc)]
    return [group]
