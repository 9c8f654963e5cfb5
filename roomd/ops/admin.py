"""The admin socket server: local, credential-checked, line-delimited JSON.

``serve_admin(backend, path, group=...)`` binds a unix stream socket and
answers the commands documented in :mod:`roomd._admin_proto` from
``backend`` (the running :class:`roomd.Server`). It needs these backend
methods (the snapshot ones may be plain or async):

    stats() -> dict
    namespace_names() -> list[str]
    rooms_snapshot(namespace | None) -> [{"namespace", "room", "members", "private"}]
    sockets_snapshot(namespace | None, room | None) -> [{"id", "namespace", "rooms", ...}]
    open_tap() -> async context manager yielding a MemoryReceiveChannel of event dicts
    async cluster_rooms(namespace | None) -> [{"namespace", "room", "local", "private"}]
    async admin_emit(namespace, event, args, rooms, except_rooms) -> int
    async admin_disconnect(sid) -> bool

A backend method raising RoomdError answers ``{"ok": false, "error": str(e)}``;
any other exception is logged and answered as an internal error. Neither
closes the admin socket nor disturbs the daemon.
"""

from __future__ import annotations

import fnmatch
import grp
import inspect
import logging
import os
import socket as _socket
import stat
import struct
from typing import Any

import trio

from .._errors import AdminError, ConfigError, RoomdError
from .admin_proto import (
    MAX_LINE,
    PEERCRED_FORMAT,
    decode_line,
    encode_line,
    peer_allowed,
    preview_args,
    unpack_peercred,
)

__all__ = ["serve_admin"]

log = logging.getLogger("roomd.admin")

_SO_PEERGROUPS = getattr(_socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13


def resolve_group(group: str | int | None) -> int | None:
    """A group name (or number) as a gid; ConfigError when there is no such group."""
    if group is None:
        return None
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"admin.group: no such group {group!r}") from None


def _prepare_directory(parent: str, group_gid: int | None) -> None:
    """Create the socket's directory (0700, or 0750 owned by the group), or vet an existing one."""
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        try:
            os.makedirs(parent, exist_ok=True)
            os.chmod(parent, 0o750 if group_gid is not None else 0o700)
            if group_gid is not None:
                os.chown(parent, -1, group_gid)
        except OSError as e:
            raise AdminError(
                f"cannot create admin socket directory {parent}: {e.strerror or e}") from None
        return
    except OSError as e:
        raise AdminError(f"cannot use admin socket directory {parent}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise AdminError(f"admin socket directory {parent} is not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise AdminError(
            f"admin socket directory {parent} belongs to uid {st.st_uid}; refusing to use it")


async def _clear_stale(path: str) -> None:
    """Remove a dead socket file at ``path``; AdminError if a daemon still answers there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminError(f"{path} exists and is not a socket")
    probe = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        with trio.move_on_after(2):
            try:
                await probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                log.info("removing stale admin socket %s", path)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                return
            except OSError as e:
                raise AdminError(f"cannot check admin socket {path}: {e.strerror or e}") from None
        raise AdminError(f"another roomd is listening on {path}")
    finally:
        probe.close()


def _remove_if_ours(path: str, ino: int) -> None:
    try:
        if os.lstat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass


async def serve_admin(
    backend: Any,
    path: str,
    *,
    group: str | int | None = None,
    instance: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin socket at ``path`` until cancelled.

    ``instance`` (the daemon's instance name) and ``path`` are part of the
    ``status`` answer.

    Creates the parent directory when missing (0700, or 0750 owned by
    ``group``), replaces a stale socket file, binds, sets the socket's mode to
    0600 (0660 and owned by ``group``) and reports ``path`` through
    ``task_status``. Raises AdminError before starting when another daemon
    answers on ``path``, the directory belongs to someone else or binding
    fails; ConfigError for an unknown group. Each peer's SO_PEERCRED is
    checked with :func:`peer_allowed`. On cancellation, open ``tail``
    streams get an end line, and the socket file is removed (unless another
    process has replaced it meanwhile).
    """
    path = os.path.abspath(path)
    group_gid = resolve_group(group)
    _prepare_directory(os.path.dirname(path), group_gid)
    await _clear_stale(path)
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(path)
        except OSError as e:
            raise AdminError(f"cannot bind admin socket {path}: {e.strerror or e}") from None
        ino = os.lstat(path).st_ino
        try:
            try:
                if group_gid is not None:
                    os.chown(path, -1, group_gid)
                    os.chmod(path, 0o660)
                else:
                    os.chmod(path, 0o600)
                sock.listen(64)
            except OSError as e:
                raise AdminError(f"cannot set up admin socket {path}: {e.strerror or e}") from None
            about = {"admin_socket": path} | ({"instance": instance} if instance else {})
            handler = _Connection.factory(backend, own_uid=os.geteuid(), group_gid=group_gid,
                                          about=about)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, handler, [trio.SocketListener(sock)])
                log.info("admin socket listening on %s", path)
                task_status.started(path)
        finally:
            _remove_if_ours(path, ino)
    finally:
        sock.close()


class _LineReader:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at EOF. AdminError when too long."""
        start = 0
        while True:
            newline = self.buffer.find(b"\n", start)
            if newline >= 0:
                line = bytes(self.buffer[:newline])
                del self.buffer[: newline + 1]
                return line
            if len(self.buffer) > MAX_LINE:
                raise AdminError(f"request longer than {MAX_LINE} bytes")
            start = len(self.buffer)
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk


# Emitted arguments nested deeper than this are refused: JSON encoders (the
# server's, the clients') recurse, and no real payload comes near it.
MAX_ARGS_DEPTH = 100


def _depth(value: object) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: no recursion limit)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level <= MAX_ARGS_DEPTH:
                stack.extend((child, level + 1) for child in item)
    return deepest


def _opt_str(request: dict, key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise AdminError(f"'{key}' must be a string")
    return value


def _req_str(request: dict, key: str) -> str:
    value = _opt_str(request, key)
    if not value:
        raise AdminError(f"'{key}' is required")
    return value


def _str_list(request: dict, key: str) -> list[str]:
    value = request.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdminError(f"'{key}' must be a list of strings")
    return value


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _existing_namespace(backend: Any, namespace: str | None) -> str | None:
    """``namespace`` when the backend has it (or None); AdminError naming it otherwise."""
    if namespace is not None and namespace not in await _call(backend.namespace_names):
        raise AdminError(f"no namespace {namespace}")
    return namespace


def _matches(pattern: str | None, values: Any) -> bool:
    """No pattern, or a shell-style ``pattern`` matching one of ``values``."""
    return pattern is None or any(fnmatch.fnmatchcase(v, pattern) for v in values)


class _Connection:
    """One admin client: credential check, then request lines until EOF."""

    def __init__(self, backend: Any, stream: trio.SocketStream, own_uid: int,
                 group_gid: int | None, about: dict[str, str]) -> None:
        self.backend = backend
        self.about = about
        self.stream = stream
        self.own_uid = own_uid
        self.group_gid = group_gid
        self.reader = _LineReader(stream)
        self.client_closed = False

    @classmethod
    def factory(cls, backend: Any, *, own_uid: int, group_gid: int | None,
                about: dict[str, str]) -> Any:
        async def handle(stream: trio.SocketStream) -> None:
            try:
                try:
                    async with stream:
                        await cls(backend, stream, own_uid, group_gid, about).run()
                except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                    pass  # the client went away
            except Exception:
                log.exception("admin connection failed")

        return handle

    def _peer_groups(self) -> tuple[int, ...]:
        try:
            raw = self.stream.socket.getsockopt(_socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 1024)
        except OSError:
            return ()
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])

    def _allowed(self) -> tuple[bool, int, int]:
        size = struct.calcsize(PEERCRED_FORMAT)
        raw = self.stream.socket.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, size)
        pid, uid, gid = unpack_peercred(raw)
        groups: tuple[int, ...] = ()
        if self.group_gid is not None and gid != self.group_gid:
            groups = self._peer_groups()
        ok = peer_allowed(uid, gid, own_uid=self.own_uid, group_gid=self.group_gid, groups=groups)
        if not ok:
            log.warning("admin socket: refused pid %d uid %d gid %d", pid, uid, gid)
        return ok, uid, gid

    async def send(self, obj: dict) -> None:
        await self.stream.send_all(encode_line(obj))

    async def run(self) -> None:
        ok, uid, _gid = self._allowed()
        if not ok:
            error = f"permission denied: uid {uid} may not use this admin socket"
            await self.send({"ok": False, "error": error})
            return
        while True:
            try:
                line = await self.reader.readline()
            except AdminError as e:
                await self.send({"ok": False, "error": str(e)})
                return
            if line is None:
                return
            if not line.strip():
                continue
            try:
                request = decode_line(line)
                cmd = _req_str(request, "cmd")
            except RoomdError as e:
                await self.send({"ok": False, "error": str(e)})
                continue
            if cmd == "tail":
                try:
                    await self.tail(request)
                except RoomdError as e:  # bad arguments, or the backend refused a tap
                    await self.send({"ok": False, "error": str(e)})
                return
            try:
                response = await self.dispatch(cmd, request)
            except RoomdError as e:
                response = {"ok": False, "error": str(e)}
            except Exception as e:
                log.exception("admin command failed")
                response = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
            await self.send(response)

    async def dispatch(self, cmd: str, request: dict) -> dict:
        b = self.backend
        if cmd == "ping":
            return {"ok": True, "pong": True}
        if cmd == "status":
            stats = dict(await _call(b.stats))
            stats.setdefault("pid", os.getpid())
            for key, value in self.about.items():
                stats.setdefault(key, value)
            return {"ok": True, "status": stats}
        if cmd == "namespaces":
            out = []
            for name in sorted(await _call(b.namespace_names)):
                rooms = await _call(b.rooms_snapshot, name)
                sockets = await _call(b.sockets_snapshot, name, None)
                public = [r for r in rooms if not r.get("private")]
                out.append({"name": name, "sockets": len(sockets), "rooms": len(public)})
            return {"ok": True, "namespaces": out}
        if cmd == "rooms":
            namespace = await _existing_namespace(b, _opt_str(request, "namespace"))
            want_members = bool(request.get("members"))
            include_private = bool(request.get("all"))
            if request.get("cluster"):
                rooms = await _call(b.cluster_rooms, namespace)
                return {"ok": True, "rooms": [
                    r for r in rooms if include_private or not r["private"]]}
            out = []
            for r in await _call(b.rooms_snapshot, namespace):
                private = bool(r.get("private"))
                if private and not include_private:
                    continue
                members = list(r.get("members", ()))
                item = {"namespace": r["namespace"], "room": r["room"],
                        "count": len(members), "private": private}
                if want_members:
                    item["members"] = sorted(members)
                out.append(item)
            out.sort(key=lambda item: (item["namespace"], item["room"]))
            return {"ok": True, "rooms": out}
        if cmd == "sockets":
            namespace = await _existing_namespace(b, _opt_str(request, "namespace"))
            sockets = await _call(b.sockets_snapshot, namespace, _opt_str(request, "room"))
            return {"ok": True, "sockets": [dict(s) for s in sockets]}
        if cmd == "emit":
            namespace = _req_str(request, "namespace")
            if not namespace.startswith("/"):
                raise AdminError(f"namespace must start with '/', got {namespace!r}")
            event = _req_str(request, "event")
            await _existing_namespace(b, namespace)
            args = request.get("args", [])
            if not isinstance(args, list):
                raise AdminError("'args' must be a list")
            if _depth(args) > MAX_ARGS_DEPTH:
                raise AdminError(f"'args' nested deeper than {MAX_ARGS_DEPTH} levels")
            recipients = await _call(
                b.admin_emit, namespace, event, args, _str_list(request, "rooms"),
                _str_list(request, "except"))
            return {"ok": True, "recipients": recipients}
        if cmd == "disconnect":
            sid = _req_str(request, "sid")
            if not await _call(b.admin_disconnect, sid):
                raise AdminError(f"no socket with id {sid!r}")
            return {"ok": True, "disconnected": True}
        raise AdminError(f"unknown command {cmd!r}")

    async def tail(self, request: dict) -> None:
        """Stream matching tap events until the client closes or the daemon stops.

        When the tap channel ends, or this task is cancelled (the daemon is
        stopping), the client gets a last ``{"end": true, ...}`` line, sent
        within a shielded second; the cancellation then propagates.
        """
        namespace = await _existing_namespace(self.backend, _opt_str(request, "namespace"))
        room = _opt_str(request, "room")
        event = _opt_str(request, "event")
        with_args = bool(request.get("args"))
        async with self.backend.open_tap() as events:
            await self.send({"ok": True, "tail": True})
            reason = "daemon stopping"
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_client_closes, nursery.cancel_scope)
                    async for item in events:
                        if namespace is not None and item.get("namespace") != namespace:
                            continue
                        if not _matches(room, item.get("rooms", ())):
                            continue
                        if not _matches(event, (str(item.get("event")),)):
                            continue
                        await self.send(self._tail_line(item, with_args))
                    reason = "event tap closed"
                    nursery.cancel_scope.cancel()
                if self.client_closed:
                    reason = ""  # nobody left to tell
            finally:
                if reason:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + 1.0
                        try:
                            await self.send({"end": True, "reason": reason})
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass

    async def _until_client_closes(self, scope: trio.CancelScope) -> None:
        while await self.stream.receive_some(65536):
            pass  # anything a tailing client sends is ignored
        self.client_closed = True
        scope.cancel()

    @staticmethod
    def _tail_line(item: dict, with_args: bool) -> dict:
        args = item.get("args", [])
        line = {
            "time": item.get("time"),
            "namespace": item.get("namespace"),
            "rooms": list(item.get("rooms", ())),
            "except": list(item.get("except", ())),
            "event": item.get("event"),
            "preview": preview_args(args),
            "recipients": item.get("recipients"),
            "source": item.get("source"),
        }
        if with_args:
            line["args"] = args
        return line
