"""The HTTP API for backends: publish into rooms and manage sockets with one request.

Served on its own listener (``[http_api] listen``), every call is
``POST <prefix>/<method>`` with a JSON object as the body and answers a JSON
object (Centrifugo's server API is the model). Calls are authenticated by an
API key read from ``key_file``, sent as ``Authorization: Bearer <key>`` and
compared in constant time. ``GET <prefix>/openapi.json`` serves the OpenAPI
document (no key needed).

Every operation goes through the public broadcast-operator API of
:class:`roomd.Server` (``io.of(ns).to(...).except_(...)``), so it is
cluster-wide whenever the server's adapter is.

Errors are ``{"error": {"code": "...", "message": "...", "field": "..."}}``
(``field`` only when one field is at fault) with status 400 (bad JSON, a
missing or mistyped field), 401 (no or wrong key), 404 (no such method or
namespace), 405 (not POST), 413 (body over ``max_body``); nothing a client
sends crashes the listener. The calls are documented in docs/http-api.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import trio

from .._errors import ConfigError
from ..api.broadcast import RESERVED_EVENTS, BroadcastOperator, FetchedSocket
from ..api.server import Server
from ..api.socket import Socket
from .httpserv import Request, Response, error_response, json_response, serve_http

logger = logging.getLogger("roomd.http_api")

MAX_ROOMS = 1000  # rooms per field of one request
MAX_ROOM_NAME = 256
MAX_KEY_FILE = 4096


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> Response:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return json_response(self.status, {"error": error})


def read_key(path: str) -> bytes:
    """The API key: the file's first line, stripped; ConfigError when unusable."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"http_api.key_file: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(f"http_api.key_file: {path} is over {MAX_KEY_FILE} bytes")
    lines = data.strip().splitlines()
    key = lines[0].strip() if lines else b""
    if len(key) < 16:
        raise ConfigError(f"http_api.key_file: {path} must hold a key of at least 16 characters")
    if st.st_mode & stat.S_IROTH:
        logger.warning("http_api.key_file %s is readable by every user; chmod 600 it", path)
    return key


def _field(body: dict, name: str, kind: type | tuple[type, ...], default: Any,
           what: str) -> Any:
    value = body.get(name, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _BadRequest(400, "invalid_field", f"'{name}' must be {what}", name)
    return value


def _rooms(body: dict, name: str, *, required: bool = False) -> list[str]:
    value = body.get(name)
    if value is None:
        if required:
            raise _BadRequest(400, "missing_field", f"'{name}' is required", name)
        return []
    rooms = [value] if isinstance(value, str) else value
    if (not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms)
            or any(not r or len(r) > MAX_ROOM_NAME for r in rooms)):
        raise _BadRequest(400, "invalid_field", f"'{name}' must be a room name or a list of room "
                          f"names (1 to {MAX_ROOM_NAME} characters each)", name)
    if len(rooms) > MAX_ROOMS:
        raise _BadRequest(400, "invalid_field", f"'{name}' holds more than {MAX_ROOMS} rooms",
                          name)
    if required and not rooms:
        raise _BadRequest(400, "invalid_field", f"'{name}' must name at least one room", name)
    return rooms


class HttpApi:
    """The calls, on one Server; :meth:`handle` is the listener's handler."""

    def __init__(self, server: Server, key: bytes, prefix: str = "/api") -> None:
        self.server = server
        self.key = key
        self.prefix = prefix.rstrip("/")
        self.methods: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "emit": self.emit, "rooms": self.rooms, "sockets": self.sockets,
            "join": self.join, "leave": self.leave, "disconnect": self.disconnect,
        }

    # -- the front ------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        if not request.path.startswith(self.prefix + "/"):
            return error_response(404, "not_found", f"no such path; the API is under "
                                  f"{self.prefix or '/'}")
        name = request.path[len(self.prefix) + 1:]
        if name == "openapi.json":
            if request.method != "GET":
                return error_response(405, "method_not_allowed", "use GET")
            return Response(200, openapi_document(self.prefix))
        method = self.methods.get(name)
        if method is None:
            return error_response(404, "unknown_method", f"no API method {name!r}; methods: "
                                  f"{', '.join(sorted(self.methods))}")
        if request.method != "POST":
            return Response(405, error_response(405, "method_not_allowed", "use POST").body,
                            headers=(("Allow", "POST"),))
        if not self._authorized(request.headers.get("authorization", "")):
            return Response(401, error_response(401, "unauthorized",
                                                "missing or wrong API key").body,
                            headers=(("WWW-Authenticate", 'Bearer realm="roomd"'),))
        try:
            return json_response(200, await method(self._body(request.body)))
        except _BadRequest as bad:
            return bad.response()

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        # compare_digest takes as long whatever the bytes are (it does reveal the length).
        return (scheme.lower() == "bearer"
                and hmac.compare_digest(token.strip().encode("utf-8", "replace"), self.key))

    @staticmethod
    def _body(raw: bytes) -> dict:
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, "invalid_json", "the body must be a JSON object")
        return body

    def _namespace(self, body: dict) -> str:
        name = _field(body, "namespace", str, "/", "a namespace name starting with '/'")
        if not name.startswith("/"):
            raise _BadRequest(400, "invalid_field", "'namespace' must start with '/'", "namespace")
        if self.server.get_namespace(name) is None:
            raise _BadRequest(404, "unknown_namespace", f"no namespace {name!r}", "namespace")
        return name

    def _operator(self, body: dict) -> BroadcastOperator:
        namespace = self.server.of(self._namespace(body))  # exists: of() creates nothing
        operator = namespace.to(_rooms(body, "to")).except_(_rooms(body, "except"))
        return operator

    # -- the calls --------------------------------------------------------
    async def emit(self, body: dict) -> dict:
        """``{namespace, to, except, event, args, volatile}`` -> ``{}``."""
        operator = self._operator(body)
        event = body.get("event")
        if event is None:
            raise _BadRequest(400, "missing_field", "'event' is required", "event")
        if not isinstance(event, str) or not event or event in RESERVED_EVENTS:
            raise _BadRequest(400, "invalid_field",
                              "'event' must be a non-empty string and not a reserved name", "event")
        args = _field(body, "args", list, [], "a list of JSON values")
        if _field(body, "volatile", bool, False, "true or false"):
            operator = operator.volatile
        await operator.emit(event, *args)
        return {}

    async def rooms(self, body: dict) -> dict:
        """``{namespace, include_private}`` -> ``{rooms: [{name, sockets}]}``."""
        namespace = self._namespace(body)
        private = _field(body, "include_private", bool, False, "true or false")
        counts: dict[str, int] = {}
        for socket in await self.server.of(namespace).fetch_sockets():
            for room in socket.rooms:
                if private or room != socket.id:
                    counts[room] = counts.get(room, 0) + 1
        return {"rooms": [{"name": name, "sockets": n} for name, n in sorted(counts.items())]}

    async def sockets(self, body: dict) -> dict:
        """``{namespace, to, except}`` -> ``{sockets: [{id, rooms, ...}]}``."""
        operator = self._operator(body)
        namespace = body.get("namespace", "/")
        out = [_describe(socket, namespace) for socket in await operator.fetch_sockets()]
        out.sort(key=lambda s: str(s["id"]))
        return {"sockets": out}

    async def join(self, body: dict) -> dict:
        """``{namespace, to, except, rooms}`` -> ``{}``: the selected sockets join ``rooms``."""
        operator = self._operator(body)
        await operator.sockets_join(_rooms(body, "rooms", required=True))
        return {}

    async def leave(self, body: dict) -> dict:
        """``{namespace, to, except, rooms}`` -> ``{}``: the selected sockets leave ``rooms``."""
        operator = self._operator(body)
        await operator.sockets_leave(_rooms(body, "rooms", required=True))
        return {}

    async def disconnect(self, body: dict) -> dict:
        """``{namespace, to, except, close}`` -> ``{}``."""
        operator = self._operator(body)
        close = _field(body, "close", bool, False, "true or false")
        await operator.disconnect_sockets(close)
        return {}


def _describe(socket: FetchedSocket, namespace: str) -> dict[str, Any]:
    """One socket as the API shows it; another node's (a RemoteSocket) as far as known."""
    info: dict[str, Any] = {"id": socket.id, "namespace": namespace,
                            "rooms": sorted(socket.rooms)}
    if isinstance(socket, Socket):
        info.update(transport=socket.transport, address=socket.handshake.address,
                    connected_at=socket.handshake.time)
    else:
        handshake = getattr(socket, "handshake", None)
        handshake = handshake if isinstance(handshake, dict) else {}
        issued = handshake.get("issued")
        info.update(transport=None, address=handshake.get("address"),
                    connected_at=issued / 1000 if isinstance(issued, (int, float)) else None)
    return info


def openapi_document(prefix: str = "/api") -> bytes:
    """The shipped OpenAPI document, its paths under ``prefix``."""
    document = json.loads(resources.files(__package__).joinpath("openapi.json").read_text())
    document["paths"] = {prefix.rstrip("/") + path: item
                         for path, item in document["paths"].items()}
    return json.dumps(document, indent=2).encode() + b"\n"


async def serve_http_api(server: Server, listen: str, key_file: str, *, prefix: str = "/api",
                         max_body: int = 1_048_576,
                         task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Serve the HTTP API on ``listen`` until cancelled.

    Reads the key first (ConfigError when the file is unusable); OSError when
    the address cannot be bound. ``task_status.started`` gets (host, port).
    """
    api = HttpApi(server, read_key(key_file), prefix)
    await serve_http(api.handle, listen, name="HTTP API", max_body=max_body,
                     task_status=task_status)
