"""The daemon's configuration: a TOML file, flags on top, defaults under both.

``load_config(path, overrides)`` returns a frozen :class:`Config`. With no file
at all every value has a working default (the relay app on 127.0.0.1:3000 with
one namespace "/"). Every key of the file is checked: an unknown key, a value
of the wrong type or out of range raises :class:`~roomd.ConfigError` whose
message names the dotted key (``server.port``, ``namespaces[1].rooms``); a
file that is not valid TOML raises ConfigError naming the file and the line.
Nothing is ever silently ignored.

``config_to_toml(config)`` prints the effective configuration back as TOML
that ``load_config`` reads to the same value (used by ``roomd config check``).

CORS (``server.cors_origins``): an empty list (the default) means roomd sends
no CORS headers and checks no Origin, so browsers let only pages of roomd's
own origin use HTTP long-polling (WebSocket is not origin-checked then).
``["*"]`` allows any origin; otherwise the list holds exact origins such as
``"https://app.example.com"`` and a request from any other Origin is refused
with HTTP 403 — on both transports: a WebSocket upgrade whose Origin is not in
the list is refused too (browsers do not apply CORS to WebSockets, so this is
the defence against cross-site WebSocket hijacking). A request without an
Origin header (not a browser) is not checked.

TLS (``server.tls_certfile``, ``tls_keyfile``, ``tls_client_ca``): the paths
are checked for shape here; the daemon loads them and stops with a
ConfigError naming the file when they are unusable.

Token authentication: ``[auth.NAME]`` tables each describe one key
(``secret_file``, ``public_key_file`` or ``jwks_file``, exactly one) and the
checks made with it; a namespace says ``auth = "NAME"`` to require tokens
verified with it. Per namespace, ``rate_limit`` (events per second, 0 = no
limit), ``rate_burst`` (bucket size; 0 = one second's worth) and
``rate_disconnect`` (refusals tolerated before disconnecting; 0 = never).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from ..transport.options import EngineOptions

_ENGINE = EngineOptions()  # the transport's defaults: one place for each

__all__ = [
    "AdminConfig",
    "AdminUIConfig",
    "AppConfig",
    "AuthConfig",
    "ClusterConfig",
    "HttpApiConfig",
    "MetricsConfig",
    "Config",
    "LimitsConfig",
    "LogConfig",
    "NamespaceConfig",
    "RecoveryConfig",
    "ServerConfig",
    "config_to_toml",
    "load_config",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ADMIN_UI_MODES = ("development", "production")
# A bcrypt hash as bcrypt and bcryptjs write it: $2a$/$2b$/$2y$, cost, 53 characters of salt+hash.
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_LISTEN_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):([0-9]{1,5})$")
SLOW_CONSUMER_POLICIES = ("disconnect", "drop")
CLUSTER_ADAPTERS = ("memory", "redis", "redis-streams")
CLUSTER_MODES = ("classic", "sharded")
_APP_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_AUTH_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
JWT_ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")


INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 3000
    path: str = "/socket.io/"
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    connect_timeout: float = 45.0
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = _ENGINE.trusted_proxies
    tls_certfile: str | None = None  # PEM certificate chain; TLS (https, wss) when set
    tls_keyfile: str | None = None  # PEM private key; None: in tls_certfile
    tls_client_ca: str | None = None  # PEM CA; clients must present a certificate it signed


@dataclass(frozen=True)
class LimitsConfig:
    """docs/limits.md describes each limit and the worst case the defaults allow."""

    outbox_messages: int = 1024
    slow_consumer: str = "disconnect"
    max_connections: int = 0  # 0 = unlimited
    shutdown_grace: float = 10.0
    outbox_bytes: int = _ENGINE.outbox_bytes
    memory_budget: int = _ENGINE.memory_budget
    connections_per_ip: int = _ENGINE.connections_per_ip
    sessions_per_ip_rate: float = _ENGINE.sessions_per_ip_rate
    sessions_per_ip_burst: int = _ENGINE.sessions_per_ip_burst
    exempt_addresses: tuple[str, ...] = _ENGINE.exempt_addresses
    max_half_open: int = _ENGINE.max_half_open
    head_timeout: float = _ENGINE.head_timeout
    body_timeout: float = _ENGINE.body_timeout
    keepalive_timeout: float = _ENGINE.keepalive_timeout
    send_timeout: float = _ENGINE.send_timeout
    upgrade_timeout: float = _ENGINE.upgrade_timeout
    rooms_per_socket: int = 100  # the relay app's cap on the rooms one socket is in


@dataclass(frozen=True)
class AdminConfig:
    socket: str | None = None  # None: default_admin_socket(instance)
    group: str | None = None
    enabled: bool = True
    instance: str | None = None  # None: the port the daemon listens on


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False
    listen: str = "127.0.0.1:9464"  # HOST:PORT of the Prometheus endpoint (GET /metrics)


@dataclass(frozen=True)
class AdminUIConfig:
    enabled: bool = False
    namespace: str = "/admin"
    auth: bool = True  # false: anyone who reaches the port may use the Admin UI
    username: str = "admin"
    password_hash: str | None = None  # bcrypt; required when auth is true
    readonly: bool = False
    mode: str = "development"  # "production": no per-socket and per-event updates
    server_id: str | None = None  # default "<hostname>#<pid>"
    origins: tuple[str, ...] = ("https://admin.socket.io",)  # added to server.cors_origins


@dataclass(frozen=True)
class HttpApiConfig:
    enabled: bool = False
    listen: str = "127.0.0.1:3001"
    prefix: str = "/api"
    key_file: str | None = None  # required when enabled: the bearer token, one line
    max_body: int = 1_048_576


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class AppConfig:
    module: str | None = None  # "package.module:attribute"
    dir: str | None = None  # put in front of sys.path before importing module


@dataclass(frozen=True)
class RecoveryConfig:
    """Connection state recovery of the relay app (docs/recovery.md); off by default."""

    enabled: bool = False
    max_disconnection_duration: float = 120.0
    skip_middlewares: bool = True
    max_packets: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    max_sessions: int = 100_000


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: share rooms with other roomd and Node.js Socket.IO servers.

    ``adapter = "redis"`` turns it on (the default "memory" is one process);
    ``mode`` is the Node adapter the cluster speaks: "classic"
    (``createAdapter``) or "sharded" (``createShardedAdapter``).
    ``adapter = "redis-streams"`` speaks @socket.io/redis-streams-adapter
    instead (``mode`` is ignored): ``stream`` and ``stream_maxlen`` are its
    stream name and MAXLEN; it recovers sessions across nodes.
    """

    adapter: str = "memory"
    url: str = "redis://127.0.0.1:6379"
    key: str = "socket.io"
    mode: str = "classic"
    request_timeout: float = 5.0
    stream: str = "socket.io"
    stream_maxlen: int = 10_000


@dataclass(frozen=True)
class AuthConfig:
    """One ``[auth.NAME]`` table: a key to verify tokens with, and the checks."""

    name: str
    secret_file: str | None = None  # HS256
    public_key_file: str | None = None  # RS256, ES256 or EdDSA (PEM)
    jwks_file: str | None = None  # keys chosen by the token's kid
    algorithm: str | None = None  # default: the key's own
    issuer: str | None = None  # the token's iss must equal it when set
    audience: str | None = None  # the token's aud must contain it when set
    leeway: float = 5.0  # seconds of clock skew allowed on exp and nbf
    require_exp: bool = False


@dataclass(frozen=True)
class NamespaceConfig:
    name: str
    client_join: bool = True
    client_leave: bool = True
    client_publish: bool = True
    publish_to_sockets: bool = False  # may clients publish to another socket's own room?
    rooms: tuple[str, ...] = ("*",)  # fnmatch-style patterns of allowed room names
    recovery: bool | None = None  # None: as recovery.enabled says
    auth: str | None = None  # an [auth.NAME] table: tokens required
    rate_limit: float = 0.0  # events per second per socket; 0 = no limit
    rate_burst: int = 0  # bucket size; 0 = one second's worth (at least 1)
    rate_disconnect: int = 20  # refusals (refilling 1/s) before disconnecting; 0 = never


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    app: AppConfig = field(default_factory=AppConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    admin_ui: AdminUIConfig = field(default_factory=AdminUIConfig)
    http_api: HttpApiConfig = field(default_factory=HttpApiConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    namespaces: tuple[NamespaceConfig, ...] = (NamespaceConfig(name="/"),)
    auth: tuple[AuthConfig, ...] = ()
    source: str | None = field(default=None, compare=False)  # the file read, if any


# ---------------------------------------------------------------------------
# Checking values
# ---------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _want(key: str, value: Any, kind: str) -> Any:
    """Check ``value`` against ``kind`` and return it normalised."""
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, (list, tuple)),
        "table": isinstance(value, dict),
    }[kind]
    if not ok:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConfigError(f"{key} must be {article} {kind}, got {_type_name(value)}")
    if kind == "number":
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    items = _want(key, value, "array")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"{key}[{i}] must be a string, got {_type_name(item)}")
    return tuple(items)


def _at_least(key: str, value: float, low: float, *, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        word = "greater than" if strict else "at least"
        raise ConfigError(f"{key} must be {word} {low:g}, got {value:g}")


def _addresses(key: str, values: tuple[str, ...]) -> None:
    for i, value in enumerate(values):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"{key}[{i}] must be an IP address, got {value!r}") from None


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


# Per table: key -> kind. "strings" is an array of strings.
_SCHEMA: dict[str, dict[str, str]] = {
    "server": {
        "host": "string",
        "port": "integer",
        "path": "string",
        "ping_interval": "number",
        "ping_timeout": "number",
        "max_payload": "integer",
        "connect_timeout": "number",
        "cors_origins": "strings",
        "trusted_proxies": "strings",
        "tls_certfile": "string",
        "tls_keyfile": "string",
        "tls_client_ca": "string",
    },
    "limits": {
        "outbox_messages": "integer",
        "slow_consumer": "string",
        "max_connections": "integer",
        "shutdown_grace": "number",
        "outbox_bytes": "integer",
        "memory_budget": "integer",
        "connections_per_ip": "integer",
        "sessions_per_ip_rate": "number",
        "sessions_per_ip_burst": "integer",
        "exempt_addresses": "strings",
        "max_half_open": "integer",
        "head_timeout": "number",
        "body_timeout": "number",
        "keepalive_timeout": "number",
        "send_timeout": "number",
        "upgrade_timeout": "number",
        "rooms_per_socket": "integer",
    },
    "admin": {"socket": "string", "group": "string", "enabled": "boolean", "instance": "string"},
    "log": {"level": "string"},
    "app": {"module": "string", "dir": "string"},
    "recovery": {
        "enabled": "boolean",
        "max_disconnection_duration": "number",
        "skip_middlewares": "boolean",
        "max_packets": "integer",
        "max_bytes": "integer",
        "max_sessions": "integer",
    },
    "metrics": {"enabled": "boolean", "listen": "string"},
    "admin_ui": {
        "enabled": "boolean",
        "namespace": "string",
        "auth": "boolean",
        "username": "string",
        "password_hash": "string",
        "readonly": "boolean",
        "mode": "string",
        "server_id": "string",
        "origins": "strings",
    },
    "http_api": {
        "enabled": "boolean",
        "listen": "string",
        "prefix": "string",
        "key_file": "string",
        "max_body": "integer",
    },
    "cluster": {"adapter": "string", "url": "string", "key": "string", "mode": "string",
                "request_timeout": "number", "stream": "string", "stream_maxlen": "integer"},
}
_NAMESPACE_SCHEMA = {
    "name": "string",
    "client_join": "boolean",
    "client_leave": "boolean",
    "client_publish": "boolean",
    "publish_to_sockets": "boolean",
    "rooms": "strings",
    "recovery": "boolean",
    "auth": "string",
    "rate_limit": "number",
    "rate_burst": "integer",
    "rate_disconnect": "integer",
}
_AUTH_SCHEMA = {
    "secret_file": "string",
    "public_key_file": "string",
    "jwks_file": "string",
    "algorithm": "string",
    "issuer": "string",
    "audience": "string",
    "leeway": "number",
    "require_exp": "boolean",
}


def _check_table(prefix: str, table: dict, schema: dict[str, str], where: str) -> dict:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}"
        kind = schema.get(key)
        if kind is None:
            raise ConfigError(f"unknown key '{dotted}'{where}")
        out[key] = _strings(dotted, value) if kind == "strings" else _want(dotted, value, kind)
    return out


def _build(raw: dict, where: str) -> Config:
    for key in raw:
        if key not in _SCHEMA and key not in ("namespaces", "auth"):
            raise ConfigError(f"unknown key '{key}'{where}")
    sections: dict[str, dict] = {}
    for name, schema in _SCHEMA.items():
        table = raw.get(name, {})
        _want(name, table, "table")
        sections[name] = _check_table(name, table, schema, where)

    server = ServerConfig(**sections["server"])
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"server.port must be between 0 and 65535, got {server.port}")
    if not server.host:
        raise ConfigError("server.host must not be empty")
    if not server.path.startswith("/"):
        raise ConfigError(f"server.path must start with '/', got {server.path!r}")
    if not server.path.endswith("/"):
        server = dataclasses.replace(server, path=server.path + "/")
    for key in ("ping_interval", "ping_timeout", "connect_timeout"):
        _at_least(f"server.{key}", getattr(server, key), 0, strict=True)
    _at_least("server.max_payload", server.max_payload, 1)
    server = _check_tls(server)

    limits = LimitsConfig(**sections["limits"])
    _at_least("limits.outbox_messages", limits.outbox_messages, 1)
    _one_of("limits.slow_consumer", limits.slow_consumer, SLOW_CONSUMER_POLICIES)
    _at_least("limits.max_connections", limits.max_connections, 0)
    _at_least("limits.shutdown_grace", limits.shutdown_grace, 0)
    for key in ("outbox_bytes", "memory_budget", "connections_per_ip", "sessions_per_ip_rate",
                "sessions_per_ip_burst", "max_half_open"):
        _at_least(f"limits.{key}", getattr(limits, key), 0)  # 0: unlimited
    if limits.sessions_per_ip_rate and limits.sessions_per_ip_burst < 1:
        raise ConfigError("limits.sessions_per_ip_burst must be at least 1 when "
                          "limits.sessions_per_ip_rate is set")
    for key in ("head_timeout", "body_timeout", "keepalive_timeout", "send_timeout",
                "upgrade_timeout"):
        _at_least(f"limits.{key}", getattr(limits, key), 0, strict=True)
    _at_least("limits.rooms_per_socket", limits.rooms_per_socket, 1)
    for key in ("exempt_addresses",):
        _addresses(f"limits.{key}", getattr(limits, key))
    _addresses("server.trusted_proxies", server.trusted_proxies)

    admin_raw = sections["admin"]
    if "socket" in admin_raw:
        if not admin_raw["socket"]:
            raise ConfigError("admin.socket must not be empty")
        admin_raw["socket"] = os.path.abspath(os.path.expanduser(admin_raw["socket"]))
    if admin_raw.get("group") == "":
        raise ConfigError("admin.group must not be empty (leave it out for no group)")
    instance = admin_raw.get("instance")
    if instance is not None and not INSTANCE_RE.match(instance):
        raise ConfigError("admin.instance must be 1 to 64 letters, digits and _.@- "
                          f"(not starting with one of _.@-), got {instance!r}")
    admin = AdminConfig(**admin_raw)

    log = LogConfig(**sections["log"])
    log = dataclasses.replace(log, level=log.level.lower())
    _one_of("log.level", log.level, LOG_LEVELS)

    app = AppConfig(**sections["app"])
    if app.module is not None and not _APP_RE.match(app.module):
        raise ConfigError(
            f"app.module must look like 'package.module:attribute', got {app.module!r}")

    recovery = RecoveryConfig(**sections["recovery"])
    _at_least("recovery.max_disconnection_duration", recovery.max_disconnection_duration, 0,
              strict=True)
    for key in ("max_packets", "max_bytes", "max_sessions"):
        _at_least(f"recovery.{key}", getattr(recovery, key), 1)

    cluster = ClusterConfig(**sections["cluster"])
    _one_of("cluster.adapter", cluster.adapter, CLUSTER_ADAPTERS)
    _one_of("cluster.mode", cluster.mode, CLUSTER_MODES)
    if not cluster.key:
        raise ConfigError("cluster.key must not be empty")
    if not cluster.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"cluster.url must be a redis://, rediss:// or unix:// URL, "
                          f"got {cluster.url!r}")
    _at_least("cluster.request_timeout", cluster.request_timeout, 0, strict=True)
    if not cluster.stream:
        raise ConfigError("cluster.stream must not be empty")
    _at_least("cluster.stream_maxlen", cluster.stream_maxlen, 1)

    metrics = MetricsConfig(**sections["metrics"])
    _check_listen("metrics.listen", metrics.listen)
    admin_ui = _build_admin_ui(sections["admin_ui"])
    http_api = _build_http_api(sections["http_api"])
    auth = _build_auth(raw.get("auth"), where)
    namespaces = _build_namespaces(raw.get("namespaces"), where)
    names = {a.name for a in auth}
    for i, ns in enumerate(namespaces):
        if ns.auth is not None and ns.auth not in names:
            raise ConfigError(f"namespaces[{i}].auth names no [auth.{ns.auth}] table{where}")
    if admin_ui.enabled and any(ns.name == admin_ui.namespace for ns in namespaces):
        raise ConfigError(f"admin_ui.namespace {admin_ui.namespace!r} is also a relay namespace "
                          "in [[namespaces]]; choose another name for one of them")
    return Config(
        server=server,
        limits=limits,
        admin=admin,
        log=log,
        app=app,
        recovery=recovery,
        metrics=metrics,
        admin_ui=admin_ui,
        http_api=http_api,
        cluster=cluster,
        namespaces=namespaces,
        auth=auth,
    )


def _check_listen(key: str, value: str) -> None:
    match = _LISTEN_RE.match(value)
    if match is None or int(match.group(2)) > 65535:
        raise ConfigError(f"{key} must look like HOST:PORT (\"127.0.0.1:9464\", \"[::1]:9464\"), "
                          f"got {value!r}")


def _build_admin_ui(fields: dict) -> AdminUIConfig:
    if "origins" in fields:
        for i, origin in enumerate(fields["origins"]):
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise ConfigError(f"admin_ui.origins[{i}] must be an origin such as "
                                  f"\"https://admin.socket.io\" (no path), got {origin!r}")
    ui = AdminUIConfig(**fields)
    if not ui.namespace.startswith("/"):
        raise ConfigError(f"admin_ui.namespace must start with '/', got {ui.namespace!r}")
    _one_of("admin_ui.mode", ui.mode, ADMIN_UI_MODES)
    if ui.password_hash is not None and not _BCRYPT_RE.match(ui.password_hash):
        raise ConfigError("admin_ui.password_hash must be a bcrypt hash ($2b$12$... , 60 "
                          "characters); make one with `roomd hash-password`")
    if ui.enabled and ui.auth and ui.password_hash is None:
        raise ConfigError("admin_ui.password_hash is required when admin_ui.auth is true "
                          "(or set admin_ui.auth = false to run the Admin UI without a password)")
    if ui.server_id == "":
        raise ConfigError("admin_ui.server_id must not be empty (leave it out for the default)")
    return ui


def _build_http_api(fields: dict) -> HttpApiConfig:
    if fields.get("key_file"):
        fields["key_file"] = os.path.abspath(os.path.expanduser(fields["key_file"]))
    api = HttpApiConfig(**fields)
    _check_listen("http_api.listen", api.listen)
    if not api.prefix.startswith("/") or api.prefix.endswith("/") and api.prefix != "/":
        raise ConfigError(f"http_api.prefix must start with '/' and not end with one, "
                          f"got {api.prefix!r}")
    _at_least("http_api.max_body", api.max_body, 1)
    if api.enabled and not api.key_file:
        raise ConfigError("http_api.key_file is required when http_api.enabled is true")
    return api


def _path(value: str | None) -> str | None:
    return None if value is None else os.path.abspath(os.path.expanduser(value))


def _check_tls(server: ServerConfig) -> ServerConfig:
    for key in ("tls_certfile", "tls_keyfile", "tls_client_ca"):
        if getattr(server, key) == "":
            raise ConfigError(f"server.{key} must not be empty (leave it out for none)")
    if server.tls_certfile is None:
        for key in ("tls_keyfile", "tls_client_ca"):
            if getattr(server, key) is not None:
                raise ConfigError(f"server.{key} needs server.tls_certfile")
        return server
    return dataclasses.replace(server, tls_certfile=_path(server.tls_certfile),
                               tls_keyfile=_path(server.tls_keyfile),
                               tls_client_ca=_path(server.tls_client_ca))


def _build_auth(value: Any, where: str) -> tuple[AuthConfig, ...]:
    if value is None:
        return ()
    tables = _want("auth", value, "table")
    out = []
    for name, table in tables.items():
        prefix = f"auth.{name}"
        if not _AUTH_NAME_RE.match(name):
            raise ConfigError(f"[{prefix}]: auth table names are letters, digits, _ and -")
        if not isinstance(table, dict):
            raise ConfigError(f"{prefix} must be a table, got {_type_name(table)}")
        fields = _check_table(prefix, table, _AUTH_SCHEMA, where)
        keys = [k for k in ("secret_file", "public_key_file", "jwks_file") if k in fields]
        if len(keys) != 1:
            raise ConfigError(f"{prefix} needs exactly one of secret_file, public_key_file, "
                              f"jwks_file{where}")
        for key in ("secret_file", "public_key_file", "jwks_file"):
            if key in fields:
                if not fields[key]:
                    raise ConfigError(f"{prefix}.{key} must not be empty")
                fields[key] = _path(fields[key])
        if "algorithm" in fields:
            _one_of(f"{prefix}.algorithm", fields["algorithm"], JWT_ALGORITHMS)
            if (fields["algorithm"] == "HS256") != ("secret_file" in fields):
                raise ConfigError(f"{prefix}.algorithm: HS256 goes with secret_file, and "
                                  f"secret_file with HS256")
        _at_least(f"{prefix}.leeway", fields.get("leeway", 0.0), 0)
        out.append(AuthConfig(name=name, **fields))
    return tuple(out)


def _build_namespaces(value: Any, where: str) -> tuple[NamespaceConfig, ...]:
    if value is None:
        return (NamespaceConfig(name="/"),)
    items = _want("namespaces", value, "array")
    out: list[NamespaceConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        prefix = f"namespaces[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{prefix} must be a table, got {_type_name(item)}")
        fields = _check_table(prefix, item, _NAMESPACE_SCHEMA, where)
        name = fields.get("name")
        if name is None:
            raise ConfigError(f"{prefix}.name is required{where}")
        if not name.startswith("/"):
            raise ConfigError(f"{prefix}.name must start with '/', got {name!r}")
        if name in seen:
            raise ConfigError(f"{prefix}.name {name!r} is given twice")
        seen.add(name)
        fields.setdefault("client_leave", fields.get("client_join", True))
        for key in ("rate_limit", "rate_burst", "rate_disconnect"):
            _at_least(f"{prefix}.{key}", fields.get(key, 0), 0)
        out.append(NamespaceConfig(**fields))
    return tuple(out)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message reads "<what> (at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None


def _apply_overrides(raw: dict, overrides: Mapping[str, Any]) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in _SCHEMA or key not in _SCHEMA[section]:
            raise ConfigError(f"unknown key '{dotted}' (override)")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section} must be a table, got {_type_name(table)}")
        table[key] = list(value) if isinstance(value, tuple) else value


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read the config file (if any), apply ``overrides`` and check everything.

    ``path`` None means ``$ROOMD_CONFIG`` when set, else no file (defaults).
    ``overrides`` maps dotted keys (``"server.port"``) to values that win over
    the file; None values are skipped, so CLI flags can be passed as they are.

    Raises ConfigError, naming the file and line for bad TOML, and the dotted
    key for an unknown key, a wrong type or a value out of range.
    """
    if path is None:
        path = os.environ.get("ROOMD_CONFIG") or None
    raw: dict = {}
    where = ""
    if path is not None:
        raw = _read_toml(path)
        where = f" in {path}"
    _apply_overrides(raw, overrides or {})
    config = _build(raw, where)
    return dataclasses.replace(config, source=path)


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_table(obj: Any) -> list[str]:
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            lines.append(f"# {f.name} is not set")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return lines


def config_to_toml(config: Config) -> str:
    """The effective configuration as TOML; ``load_config`` reads it back equal."""
    out: list[str] = []
    if config.source:
        out.append(f"# effective configuration (read from {config.source})")
    else:
        out.append("# effective configuration (defaults, no file)")
    for section in ("server", "limits", "admin", "log", "app", "recovery", "metrics",
                    "admin_ui", "http_api", "cluster"):
        out.append("")
        out.append(f"[{section}]")
        out.extend(_toml_table(getattr(config, section)))
    for auth in config.auth:
        out.append("")
        out.append(f"[auth.{auth.name}]")
        out.extend(line for line in _toml_table(auth) if not line.startswith("name ="))
    for ns in config.namespaces:
        out.append("")
        out.append("[[namespaces]]")
        out.extend(_toml_table(ns))
    return "\n".join(out) + "\n"
