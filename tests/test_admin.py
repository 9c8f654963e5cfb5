"""The admin socket with a fake backend: protocol, credentials, socket file life cycle."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import tempfile
import textwrap
from contextlib import asynccontextmanager

import pytest
import trio
from other_user import (
    AS_OTHER_USER,
    needs_root,
    readable_packages,
    require_python_for_other_user,
)

from roomd._errors import AdminError, RoomdError
from roomd.ops.admin import serve_admin
from roomd.ops.admin_proto import (
    PEERCRED_FORMAT,
    AdminClient,
    Instance,
    InstanceChoiceError,
    peer_allowed,
    preview_args,
    resolve_admin_socket,
    running_instances,
    unpack_peercred,
)


class FakeBackend:
    def __init__(self) -> None:
        self.taps: list[trio.MemorySendChannel] = []
        self.emitted: list[tuple] = []
        self.sockets = {
            "a1": {"id": "a1", "namespace": "/", "rooms": ["a1", "lobby"], "transport": "websocket",
                   "address": "127.0.0.1:5000", "connected_at": 1700000000.0},
            "b1": {"id": "b1", "namespace": "/orders", "rooms": ["b1", "eu", "us"],
                   "transport": "polling",
                   "address": "127.0.0.1:5001", "connected_at": 1700000001.0},
            "b2": {"id": "b2", "namespace": "/orders", "rooms": ["b2", "eu"],
                   "transport": "websocket",
                   "address": "127.0.0.1:5002", "connected_at": 1700000002.0},
        }

    def stats(self) -> dict:
        return {"version": "0.1.0", "started_at": 1700000000.0, "uptime": 12.5,
                "listen": ["127.0.0.1:3000"], "connections": 3, "namespaces": 2, "rooms": 3,
                "events_total": 7, "events_per_second": 0.5}

    def namespace_names(self) -> list[str]:
        return ["/orders", "/", "/boom"]  # /boom: a namespace whose emit fails

    def rooms_snapshot(self, namespace):
        rooms: dict[tuple[str, str], list[str]] = {}
        for s in self.sockets.values():
            if namespace is None or s["namespace"] == namespace:
                for r in s["rooms"]:
                    rooms.setdefault((s["namespace"], r), []).append(s["id"])
        return [{"namespace": ns, "room": r, "members": m, "private": r in self.sockets}
                for (ns, r), m in rooms.items()]

    async def sockets_snapshot(self, namespace, room):  # async on purpose: both kinds are accepted
        return [s for s in self.sockets.values()
                if (namespace is None or s["namespace"] == namespace)
                and (room is None or room in s["rooms"])]

    @asynccontextmanager
    async def open_tap(self):
        send, receive = trio.open_memory_channel(100)
        self.taps.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self.taps.remove(send)

    def publish(self, **event) -> None:
        item = {"time": 1700000000.25, "namespace": "/", "rooms": [], "except": [], "event": "e",
                "args": [], "recipients": 1, "source": "client"}
        item.update(event)
        for tap in list(self.taps):
            try:
                tap.send_nowait(item)  # as the real daemon must: never block on a tap
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass

    async def admin_emit(self, namespace, event, args, rooms, except_rooms):
        if namespace == "/boom":
            raise ValueError("kaboom")
        if namespace == "/nope":
            raise RoomdError("no namespace /nope")
        self.emitted.append((namespace, event, args, rooms, except_rooms))
        self.publish(namespace=namespace, event=event, args=args, rooms=rooms, source="server",
                     recipients=2)
        return 2

    async def admin_disconnect(self, sid):
        return self.sockets.pop(sid, None) is not None


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "roomd.sock")


@asynccontextmanager
async def running(backend, path, **kw):
    async with trio.open_nursery() as nursery:
        started = await nursery.start(
            lambda task_status: serve_admin(backend, path, task_status=task_status, **kw))
        assert started == path
        yield nursery
        nursery.cancel_scope.cancel()


async def call(path, cmd, **args):
    return await trio.to_thread.run_sync(lambda: AdminClient(path).request(cmd, **args))


async def test_commands(sock_path):
    backend = FakeBackend()
    async with running(backend, sock_path):
        assert (await call(sock_path, "ping"))["pong"] is True
        status = (await call(sock_path, "status"))["status"]
        assert status["version"] == "0.1.0" and status["pid"] == os.getpid()
        assert status["connections"] == 3

        assert (await call(sock_path, "namespaces"))["namespaces"] == [
            {"name": "/", "sockets": 1, "rooms": 1},
            {"name": "/boom", "sockets": 0, "rooms": 0},
            {"name": "/orders", "sockets": 2, "rooms": 2},
        ]
        rooms = (await call(sock_path, "rooms", namespace="/orders"))["rooms"]
        assert rooms == [
            {"namespace": "/orders", "room": "eu", "count": 2, "private": False},
            {"namespace": "/orders", "room": "us", "count": 1, "private": False},
        ]
        rooms = (await call(sock_path, "rooms", members=True, all=True))["rooms"]
        assert {"namespace": "/orders", "room": "eu", "count": 2, "private": False,
                "members": ["b1", "b2"]} in rooms
        assert {"namespace": "/", "room": "a1", "count": 1, "private": True,
                "members": ["a1"]} in rooms

        sockets = (await call(sock_path, "sockets", namespace="/orders", room="us"))["sockets"]
        assert [s["id"] for s in sockets] == ["b1"]

        answer = await call(sock_path, "emit", namespace="/orders", event="ping",
                            args=[1, {"a": None}], rooms=["eu"], **{"except": ["us"]})
        assert answer["recipients"] == 2
        assert backend.emitted == [("/orders", "ping", [1, {"a": None}], ["eu"], ["us"])]

        assert (await call(sock_path, "disconnect", sid="b2"))["disconnected"] is True
        with pytest.raises(AdminError, match="no socket with id 'b2'"):
            await call(sock_path, "disconnect", sid="b2")


async def test_errors_keep_the_connection_and_the_server(sock_path):
    backend = FakeBackend()
    async with running(backend, sock_path):
        stream = await trio.open_unix_socket(sock_path)
        lines = [
            b"this is not json\n",
            b"[1, 2]\n",
            b"\n",
            b'{"nocmd": 1}\n',
            b'{"cmd": "frobnicate"}\n',
            b'{"cmd": "emit", "namespace": "/", "event": "e", "args": "notalist"}\n',
            b'{"cmd": "emit", "namespace": "orders", "event": "e"}\n',
            b'{"cmd": "emit", "namespace": "/nope", "event": "e"}\n',
            b'{"cmd": "emit", "namespace": "/boom", "event": "e"}\n',
            b'{"cmd": "rooms", "namespace": 5}\n',
            b'{"cmd": "disconnect"}\n',
            b'{"cmd": "ping"}\n',
        ]
        await stream.send_all(b"".join(lines))
        received = b""
        while received.count(b"\n") < len(lines) - 1:  # the blank line gets no answer
            received += await stream.receive_some(65536)
        answers = [json.loads(line) for line in received.splitlines()]
        errors = [a.get("error") for a in answers]
        assert errors[0].startswith("malformed admin message")
        assert errors[1] == "malformed admin message: not a JSON object"
        assert errors[2] == "'cmd' is required"
        assert errors[3] == "unknown command 'frobnicate'"
        assert errors[4] == "'args' must be a list"
        assert errors[5] == "namespace must start with '/', got 'orders'"
        assert errors[6] == "no namespace /nope"
        assert errors[7] == "internal error: ValueError: kaboom"
        assert errors[8] == "'namespace' must be a string"
        assert errors[9] == "'sid' is required"
        assert answers[10] == {"ok": True, "pong": True}
        await stream.aclose()
        assert (await call(sock_path, "ping"))["ok"]


async def test_tail_filters_and_previews(sock_path):
    backend = FakeBackend()
    async with running(backend, sock_path):
        got: list[dict] = []

        def tail():
            stream = AdminClient(sock_path).stream("tail", namespace="/orders", room="eu",
                                                   event="order")
            for item in stream:
                got.append(item)
                if len(got) == 3:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, tail)
            while not backend.taps:
                await trio.sleep(0.01)
            backend.publish(namespace="/", rooms=["eu"], event="order")  # wrong namespace
            backend.publish(namespace="/orders", rooms=["us"], event="order")  # wrong room
            backend.publish(namespace="/orders", rooms=["eu"], event="other")  # wrong event
            backend.publish(namespace="/orders", rooms=["eu", "us"], except_=[], event="order",
                            args=["x" * 300])
            assert await call(sock_path, "emit", namespace="/orders", event="order",
                              args=[{"id": 7}], rooms=["eu"])
            backend.publish(namespace="/orders", rooms=["eu"], event="order", args=[b"\x00\x01"])
        assert len(got) == 3
        first, second, third = got
        assert third["preview"] == '"<2 bytes>"'
        assert first["namespace"] == "/orders" and first["rooms"] == ["eu", "us"]
        assert first["event"] == "order"
        assert len(first["preview"]) == 120 and first["preview"].endswith("\u2026")
        assert "args" not in first
        assert second["source"] == "server" and second["recipients"] == 2
        assert second["preview"] == '{"id":7}'
        # The client closed: the daemon notices and closes the tap.
        with trio.fail_after(5):
            while backend.taps:
                await trio.sleep(0.01)


async def test_systemd_sockets_are_found_by_instance(tmp_path):
    """roomd.service's /run/roomd/roomd.sock is instance "roomd", roomd@NAME's
    /run/roomd/NAME/roomd.sock is NAME (here under a stand-in for /run/roomd)."""
    system = tmp_path / "run" / "roomd"
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "user")}
    main, eu1 = str(system / "roomd.sock"), str(system / "eu1" / "roomd.sock")
    with pytest.raises(AdminError, match="no roomd daemon answering .*run/roomd/roomd.sock"):
        resolve_admin_socket(env=env, system_dir=str(system))
    async with running(FakeBackend(), main):
        found = await trio.to_thread.run_sync(lambda: resolve_admin_socket(
            env=env, system_dir=str(system)))
        assert found == main
        async with running(FakeBackend(), eu1):
            instances = running_instances(env, str(system))
            assert instances == [Instance("roomd", main), Instance("eu1", eu1)]
            with pytest.raises(InstanceChoiceError) as info:
                resolve_admin_socket(env=env, system_dir=str(system))
            assert info.value.exit_code == 2 and "roomd (" in str(info.value)
            assert resolve_admin_socket(instance="eu1", env=env, system_dir=str(system)) == eu1
            # an explicit socket, or a configured one, wins over discovery
            where = {"env": env, "system_dir": str(system)}
            assert resolve_admin_socket("/x.sock", "eu1", **where) == "/x.sock"
            assert resolve_admin_socket(configured="/y.sock", **where) == "/y.sock"


async def test_unknown_namespaces_are_errors(sock_path):
    backend = FakeBackend()
    async with running(backend, sock_path):
        for cmd, args in (("emit", {"event": "e", "args": [1]}), ("rooms", {}), ("sockets", {}),
                          ("tail", {})):
            with pytest.raises(AdminError) as info:
                if cmd == "tail":
                    await trio.to_thread.run_sync(
                        lambda: next(AdminClient(sock_path).stream("tail", namespace="/nosuch")))
                else:
                    await call(sock_path, cmd, namespace="/nosuch", **args)
            assert str(info.value) == "no namespace /nosuch", cmd
        assert backend.emitted == [] and backend.taps == []
        assert (await call(sock_path, "rooms", namespace="/boom"))["rooms"] == []


async def test_tail_filters_are_shell_patterns(sock_path):
    backend = FakeBackend()
    async with running(backend, sock_path):
        got: list[dict] = []

        def tail():
            for item in AdminClient(sock_path).stream("tail", room="eu-*", event="order.[cu]*"):
                got.append(item)
                if len(got) == 2:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, tail)
            while not backend.taps:
                await trio.sleep(0.01)
            backend.publish(rooms=["eu"], event="order.created")  # room does not match
            backend.publish(rooms=["eu-1"], event="order.deleted")  # event does not match
            backend.publish(rooms=[], event="order.created")  # the whole namespace: no room
            backend.publish(rooms=["us", "eu-west"], event="order.created")
            backend.publish(rooms=["EU-1"], event="order.updated")  # case matters
            backend.publish(rooms=["eu-2"], event="order.updated")
        assert [(g["rooms"], g["event"]) for g in got] == [
            (["us", "eu-west"], "order.created"), (["eu-2"], "order.updated")]


async def test_tail_with_args_and_daemon_going_away(sock_path):
    backend = FakeBackend()
    got: list[dict] = []
    error: list[Exception] = []

    def tail():
        try:
            for item in AdminClient(sock_path).stream("tail", args=True):
                got.append(item)
        except AdminError as e:
            error.append(e)

    async with trio.open_nursery() as outer:
        async with running(backend, sock_path) as nursery:
            outer.start_soon(trio.to_thread.run_sync, tail)
            while not backend.taps:
                await trio.sleep(0.01)
            backend.publish(event="hi", args=[1, "two"])
            while not got:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()  # the daemon stops
    assert got[0]["args"] == [1, "two"] and got[0]["preview"] == '1,"two"'
    assert str(error[0]) == "daemon went away"
    assert not os.path.exists(sock_path)


async def test_tail_end_lines(sock_path):
    """Raw protocol: the end line on daemon stop, and when the tap channel closes."""
    backend = FakeBackend()
    async with running(backend, sock_path) as nursery:
        stream = await trio.open_unix_socket(sock_path)
        await stream.send_all(b'{"cmd": "tail"}\n')
        assert await stream.receive_some(100) == b'{"ok":true,"tail":true}\n'
        backend.taps[0].close()
        assert await stream.receive_some(100) == b'{"end":true,"reason":"event tap closed"}\n'
        assert await stream.receive_some(100) == b""

        stream = await trio.open_unix_socket(sock_path)
        await stream.send_all(b'{"cmd": "tail"}\n')
        assert await stream.receive_some(100) == b'{"ok":true,"tail":true}\n'
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            data = b""
            while chunk := await stream.receive_some(100):
                data += chunk
        assert data == b'{"end":true,"reason":"daemon stopping"}\n'


async def test_socket_file_life_cycle(sock_path):
    parent = os.path.dirname(sock_path)
    async with running(FakeBackend(), sock_path):
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o700
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        # A live socket is not stolen.
        with pytest.raises(AdminError, match=f"another roomd is listening on {sock_path}"):
            await serve_admin(FakeBackend(), sock_path)
        assert (await call(sock_path, "ping"))["ok"]
    assert not os.path.exists(sock_path)

    # A stale socket (bound, nobody listening) is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    assert os.path.exists(sock_path)
    async with running(FakeBackend(), sock_path):
        assert (await call(sock_path, "ping"))["ok"]
    assert not os.path.exists(sock_path)

    # Something that is not a socket is left alone.
    with open(sock_path, "w") as f:
        f.write("precious")
    with pytest.raises(AdminError, match="exists and is not a socket"):
        await serve_admin(FakeBackend(), sock_path)
    os.unlink(sock_path)


async def test_group_mode(tmp_path):
    path = str(tmp_path / "g" / "roomd.sock")
    gid = os.getgid()
    async with running(FakeBackend(), path, group=gid):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o750


def test_no_daemon_names_the_path(tmp_path):
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(AdminError, match=f"no roomd daemon answering on {path}"):
        AdminClient(path).request("status")
    # A socket file whose daemon died.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(AdminError, match=f"no roomd daemon answering on {path}"):
        AdminClient(path).request("status")


def test_peer_allowed_with_real_peercred():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        size = struct.calcsize(PEERCRED_FORMAT)
        pid, uid, gid = unpack_peercred(a.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size))
    assert (pid, uid, gid) == (os.getpid(), os.geteuid(), os.getegid())
    me = os.geteuid()
    # Our own credentials pass; so would root's.
    assert peer_allowed(uid, gid, own_uid=uid, group_gid=None)
    assert peer_allowed(0, 12345, own_uid=1000, group_gid=None)
    # Another user without the group does not.
    other = me + 4242
    assert not peer_allowed(other, gid + 4242, own_uid=me if me else 1000, group_gid=None)
    assert not peer_allowed(other, gid + 4242, own_uid=me if me else 1000, group_gid=gid)
    # ...unless their primary or a supplementary group is the configured one.
    assert peer_allowed(other, gid, own_uid=me if me else 1000, group_gid=gid)
    assert peer_allowed(other, gid + 4242, own_uid=me if me else 1000, group_gid=gid, groups=(gid,))


def test_preview_args():
    assert preview_args([1, "a", None]) == '1,"a",null'
    assert preview_args([]) == ""
    assert preview_args([b"abc"]) == '"<3 bytes>"'
    assert preview_args(["é" * 200], limit=10) == '"ééééééé' + "é\u2026"
    assert len(preview_args(["x" * 500])) == 120


CLIENT_AS_NOBODY = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"cmd": "ping"}\\n')
    except BrokenPipeError:
        pass  # a refusing daemon may close before reading; its answer is still there
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    sys.stdout.write(data.decode())
    """
)

CLIENT_AS_NOBODY_WITH_ADMINCLIENT = textwrap.dedent(
    """
    import sys
    from roomd.ops.admin_proto import AdminClient
    from roomd._errors import AdminError
    try:
        AdminClient(sys.argv[1]).request("ping")
    except AdminError as e:
        print(e)
    """
)


async def run_as_nobody(path: str) -> dict:
    """CLIENT_AS_NOBODY run as uid 65534 by a Python it can read (not this venv's)."""
    python = require_python_for_other_user()
    result = await trio.run_process(
        [*AS_OTHER_USER, python, "-I", "-c", CLIENT_AS_NOBODY, path],
        capture_stdout=True, capture_stderr=True, check=False, cwd="/",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_root
async def test_other_uid_is_refused():
    python = require_python_for_other_user()
    base = tempfile.mkdtemp(prefix="roomd-admin-test-", dir="/tmp")
    try:
        os.chmod(base, 0o711)
        path = os.path.join(base, "run", "roomd.sock")
        async with running(FakeBackend(), path):
            # Open the file modes so the connection reaches the credential check.
            os.chmod(os.path.dirname(path), 0o711)
            os.chmod(path, 0o666)
            answer = await run_as_nobody(path)
            assert answer == {
                "ok": False, "error": "permission denied: uid 65534 may not use this admin socket"}
            # The real client reports the refusal, whoever wins the race to the socket.
            # It runs from a world-readable copy: the clone may be private (mode 0700).
            with readable_packages("roomd") as packages:
                for _ in range(5):
                    result = await trio.run_process(
                        [*AS_OTHER_USER, python, "-c", CLIENT_AS_NOBODY_WITH_ADMINCLIENT, path],
                        capture_stdout=True, capture_stderr=True, check=False, cwd="/",
                        env=dict(os.environ, PYTHONPATH=str(packages)),
                    )
                    assert result.stdout.decode() == (
                        "permission denied: uid 65534 may not use this admin socket\n"
                    ), result.stderr
            assert (await call(path, "ping"))["ok"]  # root still gets in
    finally:
        shutil.rmtree(base)


@needs_root
async def test_configured_group_is_allowed():
    base = tempfile.mkdtemp(prefix="roomd-admin-test-", dir="/tmp")
    try:
        os.chmod(base, 0o711)
        path = os.path.join(base, "run", "roomd.sock")
        async with running(FakeBackend(), path, group=65534):
            assert os.stat(path).st_gid == 65534
            assert await run_as_nobody(path) == {"ok": True, "pong": True}
    finally:
        shutil.rmtree(base)


async def test_tail_client_vanishing_mid_stream_is_not_an_error(sock_path, caplog):
    backend = FakeBackend()
    async with running(backend, sock_path):
        stream = await trio.open_unix_socket(sock_path)
        await stream.send_all(b'{"cmd": "tail"}\n')
        assert await stream.receive_some(100) == b'{"ok":true,"tail":true}\n'
        stream.socket.close()  # gone without reading
        for _ in range(200):
            backend.publish(args=["x" * 10000])
            await trio.sleep(0)
        with trio.fail_after(5):
            while backend.taps:
                await trio.sleep(0.01)
        assert (await call(sock_path, "ping"))["ok"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
