"""The admin socket's wire protocol, the credential check and the sync client.

Protocol (a unix stream socket, UTF-8, one JSON object per line):

    request   {"cmd": "<command>", ...arguments}\\n
    response  {"ok": true, ...results}\\n   or   {"ok": false, "error": "<message>"}\\n

A connection may carry any number of requests, answered in order. ``tail``
is a streaming command: after its ``{"ok": true, "tail": true}`` line comes
one line per emitted event until the client closes the connection; when the
daemon stops, a last ``{"end": true, "reason": "..."}`` line is sent (or the
connection just closes). A peer whose credentials are refused gets one
``{"ok": false, "error": "permission denied..."}`` line and is disconnected.

Commands and their results:

    ping                                   {"pong": true}
    status                                 {"status": {version, pid, started_at, uptime,
                                             listen, connections, namespaces, rooms,
                                             events_total, events_per_second,
                                             closed: {reason: count} (Engine.IO
                                             sessions that ended, by reason),
                                             instance, admin_socket}}
    namespaces                             {"namespaces": [{name, sockets, rooms}]}
    rooms   [namespace] [members] [all]    {"rooms": [{namespace, room, count, private,
                                             members?}]}   (all: include the private
                                             own-id rooms; members: list socket ids)
    sockets [namespace] [room]             {"sockets": [{id, namespace, rooms, transport,
                                             address, connected_at}]}
    emit    namespace event [args] [rooms] [except]      {"recipients": N}
    disconnect sid                         {"disconnected": true} or an error
    tail    [namespace] [room] [event] [args]   stream of {time, namespace, rooms, except,
                                             event, preview, recipients, source, args?}
                                             (room, event: shell-style patterns, as
                                             fnmatch; room matches any of the rooms)

A namespace given to rooms, sockets, emit or tail must be one the daemon has
(``namespaces`` lists them): otherwise the answer is the error "no namespace NAME".
"""

from __future__ import annotations

import glob
import json
import math
import os
import socket
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import AdminError

__all__ = [
    "AdminClient",
    "PEERCRED_FORMAT",
    "Instance",
    "InstanceChoiceError",
    "admin_socket_dir",
    "default_admin_socket",
    "resolve_admin_socket",
    "running_instances",
    "decode_line",
    "encode_line",
    "peer_allowed",
    "preview_args",
]

PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid
MAX_LINE = 8 * 1024 * 1024  # a request line longer than this closes the connection
PREVIEW_CHARS = 120
SYSTEM_DIR = "/run/roomd"  # RuntimeDirectory=roomd (roomd.service), roomd/%i (roomd@.service)


def peer_allowed(uid: int, gid: int, *, own_uid: int, group_gid: int | None,
                 groups: tuple[int, ...] = ()) -> bool:
    """May a peer with these credentials use the admin socket?

    Allowed: the daemon's own user, root, and (when a group is configured)
    a peer whose gid, or one of whose supplementary ``groups``, is that group.
    """
    if uid == own_uid or uid == 0:
        return True
    if group_gid is None:
        return False
    return gid == group_gid or group_gid in groups


def unpack_peercred(raw: bytes) -> tuple[int, int, int]:
    """(pid, uid, gid) from a SO_PEERCRED getsockopt result."""
    return struct.unpack(PEERCRED_FORMAT, raw)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"_binary": len(value)}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def encode_line(obj: dict) -> bytes:
    """One protocol line. Bytes become {"_binary": length}; other odd values their repr."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return text.encode() + b"\n"


def _no_constant(name: str) -> Any:
    raise AdminError(f"malformed admin message: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AdminError(f"malformed admin message: {text} is out of range for a number")
    return value


_loads = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float).decode


def decode_line(line: bytes) -> dict:
    """Parse one line; raises AdminError when it is not a JSON object.

    NaN, Infinity and numbers out of a double's range are refused (no client
    could receive them as JSON), and so is nesting too deep to parse.
    """
    try:
        obj = _loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdminError(f"malformed admin message: {e}") from None
    except RecursionError:
        raise AdminError("malformed admin message: nested too deeply") from None
    if not isinstance(obj, dict):
        raise AdminError("malformed admin message: not a JSON object")
    return obj


def preview_args(args: Any, limit: int = PREVIEW_CHARS) -> str:
    """The event arguments as compact JSON without the outer brackets, cut to ``limit``."""
    def binary(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return f"<{len(value)} bytes>"
        return _json_default(value)

    if isinstance(args, (list, tuple)):
        text = json.dumps(list(args), ensure_ascii=False, separators=(",", ":"),
                          default=binary)[1:-1]
    else:
        text = json.dumps(args, ensure_ascii=False, separators=(",", ":"), default=binary)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


# -- where the admin socket is --------------------------------------------------
SYSTEMD_SOCKET_NAME = "roomd.sock"  # in $RUNTIME_DIRECTORY, which systemd gives each unit


def admin_socket_dir(env: Mapping[str, str] | None = None) -> str:
    """Where a daemon outside systemd puts its default admin socket, and where the CLI
    (in the same environment) looks for it: ``$XDG_RUNTIME_DIR/roomd`` when that variable
    is set, else ``/tmp/roomd-<uid>``."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR", "")
    return os.path.join(xdg, "roomd") if xdg else f"/tmp/roomd-{os.geteuid()}"


def default_admin_socket(instance: str, env: Mapping[str, str] | None = None) -> str:
    """The admin socket path of instance ``instance`` when the config names none.

    Under systemd, ``$RUNTIME_DIRECTORY/roomd.sock`` (``RuntimeDirectory=``: each unit has
    its own directory; a colon-separated list uses the first); otherwise
    ``<dir>/<instance>.sock`` in :func:`admin_socket_dir`, so that several instances (by
    default named by their port) have a socket each.
    """
    env = os.environ if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, SYSTEMD_SOCKET_NAME)
    return os.path.join(admin_socket_dir(env), f"{instance}.sock")


@dataclass(frozen=True)
class Instance:
    """A daemon's admin socket found by :func:`running_instances`, and its instance name."""

    name: str
    path: str


class InstanceChoiceError(AdminError):
    """Several daemons answer and nothing says which one is meant: a usage error."""

    exit_code = 2


def _candidates(env: Mapping[str, str] | None, system_dir: str) -> list[Instance]:
    found: list[Instance] = []
    directory = glob.escape(admin_socket_dir(env))
    for path in sorted(glob.glob(os.path.join(directory, "*.sock"))):
        found.append(Instance(os.path.basename(path)[: -len(".sock")], path))
    found.append(Instance("roomd", os.path.join(system_dir, SYSTEMD_SOCKET_NAME)))
    pattern = os.path.join(glob.escape(system_dir), "*", SYSTEMD_SOCKET_NAME)
    for path in sorted(glob.glob(pattern)):
        found.append(Instance(os.path.basename(os.path.dirname(path)), path))
    unique: dict[str, Instance] = {}
    for instance in found:
        unique.setdefault(os.path.realpath(instance.path), instance)
    return list(unique.values())


def _answers(path: str, timeout: float = 2.0) -> bool:
    """Is a daemon listening on ``path``? (True also when we may not connect: it exists.)"""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        return True
    except PermissionError:
        return True  # someone's daemon: using it will say "permission denied"
    except OSError:
        return False  # a stale file left by a daemon that died, or one that does not answer
    finally:
        sock.close()


def running_instances(env: Mapping[str, str] | None = None,
                      system_dir: str = SYSTEM_DIR) -> list[Instance]:
    """The daemons answering on default admin sockets.

    Looked for: ``*.sock`` in :func:`admin_socket_dir` (named by the
    file: ``3000.sock`` is instance 3000), ``/run/roomd/roomd.sock`` (roomd.service:
    instance "roomd") and ``/run/roomd/NAME/roomd.sock`` (roomd@NAME.service).
    """
    return [instance for instance in _candidates(env, system_dir) if _answers(instance.path)]


def _listing(instances: list[Instance]) -> str:
    return ", ".join(f"{i.name} ({i.path})" for i in instances)


def resolve_admin_socket(socket_path: str | None = None, instance: str | None = None,
                         configured: str | None = None,
                         env: Mapping[str, str] | None = None,
                         system_dir: str = SYSTEM_DIR) -> str:
    """The admin socket the CLI should use.

    ``socket_path`` (--socket, ROOMD_SOCKET) wins; then the instance named ``instance``
    (--instance, ROOMD_INSTANCE) among :func:`running_instances`; then ``configured``
    (``admin.socket`` of $ROOMD_CONFIG); then the only running instance. Raises
    AdminError when nothing answers or no instance has that name, InstanceChoiceError
    (exit status 2) when several answer and nothing says which one.
    """
    if socket_path:
        return socket_path
    if instance is None and configured:
        return configured
    running = running_instances(env, system_dir)
    if instance is not None:
        chosen = [i for i in running if i.name == instance]
        if len(chosen) == 1:
            return chosen[0].path
        if len(chosen) > 1:
            raise InstanceChoiceError(f"several roomd instances are named {instance!r}: "
                                      f"{_listing(chosen)}; choose one with --socket PATH")
        others = f" (running: {_listing(running)})" if running else ""
        raise AdminError(f"no roomd instance {instance!r} is running{others}")
    if len(running) == 1:
        return running[0].path
    if running:
        raise InstanceChoiceError(f"{len(running)} roomd instances are running: "
                                  f"{_listing(running)}; choose one with --instance NAME "
                                  "or --socket PATH")
    places = [os.path.join(admin_socket_dir(env), "*.sock"),
              os.path.join(system_dir, SYSTEMD_SOCKET_NAME),
              os.path.join(system_dir, "*", SYSTEMD_SOCKET_NAME)]
    raise AdminError(f"no roomd daemon answering (looked for {', '.join(places)})")


class AdminClient:
    """A blocking client of the admin socket, for the CLI and for scripts.

    Every call opens its own connection. Raises AdminError naming the socket
    path when no daemon answers, when the daemon refuses the request (the
    message is the daemon's error), or when the connection breaks.
    """

    def __init__(self, path: str, *, timeout: float | None = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            sock.close()
            raise AdminError(f"no roomd daemon answering on {self.path}") from None
        except PermissionError:
            sock.close()
            raise AdminError(f"permission denied connecting to {self.path}") from None
        except TimeoutError:
            sock.close()
            raise AdminError(f"no roomd daemon answering on {self.path} (timed out)") from None
        except OSError as e:
            sock.close()
            raise AdminError(f"cannot connect to {self.path}: {e.strerror or e}") from None
        return sock

    def _lines(self, sock: socket.socket) -> Iterator[dict]:
        buffer = b""
        while True:
            newline = buffer.find(b"\n")
            if newline >= 0:
                line, buffer = buffer[:newline], buffer[newline + 1 :]
                yield decode_line(line)
                continue
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AdminError(
                    f"the roomd daemon on {self.path} did not answer in time") from None
            except OSError as e:
                raise AdminError(f"connection to {self.path} broke: {e.strerror or e}") from None
            if not chunk:
                return
            buffer += chunk

    def _send(self, sock: socket.socket, cmd: str, args: dict) -> None:
        request = {k: v for k, v in args.items() if v is not None}
        request["cmd"] = cmd
        try:
            sock.sendall(encode_line(request))
        except OSError as e:
            # A daemon refusing us answers and closes at once, maybe before we
            # finished sending: its answer says more than EPIPE does.
            try:
                sock.settimeout(1.0)
                for response in self._lines(sock):
                    self._check(response)
            except AdminError as refusal:
                raise refusal from None
            raise AdminError(f"connection to {self.path} broke: {e.strerror or e}") from None

    @staticmethod
    def _check(response: dict) -> dict:
        if not response.get("ok"):
            raise AdminError(str(response.get("error") or "the daemon refused the request"))
        return response

    def request(self, cmd: str, **args: Any) -> dict:
        """Send one command (None arguments are left out) and return its response."""
        with self._connect() as sock:
            self._send(sock, cmd, args)
            for response in self._lines(sock):
                return self._check(response)
        raise AdminError(f"the roomd daemon on {self.path} closed the connection without answering")

    def stream(self, cmd: str, **args: Any) -> Iterator[dict]:
        """Send a streaming command and yield each item after the ok line.

        Blocks between items without a timeout. Ends by raising AdminError
        "daemon went away" when the daemon closes the stream.
        Closing the generator closes the connection.
        """
        with self._connect() as sock:
            self._send(sock, cmd, args)
            lines = self._lines(sock)
            first = next(lines, None)
            if first is None:
                raise AdminError(f"the roomd daemon on {self.path} "
                                 "closed the connection without answering")
            self._check(first)
            sock.settimeout(None)
            for item in lines:
                if item.get("end"):
                    break
                yield item
        raise AdminError("daemon went away")
