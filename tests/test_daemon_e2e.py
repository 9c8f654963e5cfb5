"""The real ``roomd`` executable, end to end: ``roomd serve`` in a subprocess (its own port and
admin socket), stock clients (socket.io-client under node, python-socketio) connected to it, and
the admin commands run as subprocesses against it: rooms/sockets/namespaces/status, tail, emit,
disconnect; plus the no-daemon message, ``config check`` and the admin credential check."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

import pytest
import trio
from daemon_proc import roomd, running_daemon, short_dir, stop, tailing
from harness import ConnectError, build_request, raw_http
from other_user import AS_OTHER_USER, needs_root, readable_packages, require_python_for_other_user

CONFIG = """\
[limits]
shutdown_grace = 3.0

[[namespaces]]
name = "/"

[[namespaces]]
name = "/orders"
rooms = ["eu", "us", "asia", "eu-*"]
"""

TAIL_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (\S+) (.+) (\S+) (.*) -> (\d+)$")


@pytest.fixture
def tmpdir_short():
    with short_dir() as path:
        yield path


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, str(result)


async def test_rooms_sockets_namespaces_status(tmpdir_short, node, py_client):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        n1 = await node.connect(d.url, "/orders", transports=["websocket"])
        n2 = await node.connect(d.url, "/orders", transports=["polling"], force_new=True)
        p = await py_client()
        await p.connect(d.url, namespaces=["/", "/orders"])
        assert await n1.emit_with_ack("join", ["eu", "us"]) == [
            {"rooms": sorted([n1.sid, "eu", "us"])}]
        assert await n2.emit_with_ack("join", "eu") == [{"rooms": sorted([n2.sid, "eu"])}]
        joined = await p.call("join", "lobby", namespace="/")
        assert joined[0]["rooms"] == sorted([p.get_sid("/"), "lobby"])
        # the relay refuses a room the namespace does not allow
        assert await n2.emit_with_ack("join", "mars") == [
            {"error": "room 'mars' is not allowed in /orders"}]

        js, table, members, orders, everything, status = await _gather(
            d.cli("rooms", "list", "--json"),
            d.cli("rooms", "list"),
            d.cli("rooms", "list", "--members", "--json"),
            roomd("rooms", "list", "orders", "--members", "--socket", d.socket),  # no leading slash
            d.cli("rooms", "list", "--all", "--json"),
            d.cli("status", "--json"),
        )
        for r in (js, table, members, orders, everything, status):
            assert r.returncode == 0 and r.stderr == "", str(r)
        assert js.json() == [
            {"namespace": "/", "room": "lobby", "count": 1, "private": False},
            {"namespace": "/orders", "room": "eu", "count": 2, "private": False},
            {"namespace": "/orders", "room": "us", "count": 1, "private": False},
        ]
        assert table.stdout.splitlines() == [
            "NAMESPACE  ROOM   MEMBERS",
            "/          lobby  1",
            "/orders    eu     2",
            "/orders    us     1",
        ]
        assert {(r["room"], tuple(r["members"])) for r in members.json()} == {
            ("lobby", (p.get_sid("/"),)), ("eu", tuple(sorted([n1.sid, n2.sid]))),
            ("us", (n1.sid,))}
        lines = orders.stdout.splitlines()
        assert lines[0].split() == ["NAMESPACE", "ROOM", "MEMBERS", "SOCKETS"]
        assert [line.split() for line in lines[1:]] == [
            ["/orders", "eu", "2", ",".join(sorted([n1.sid, n2.sid]))],
            ["/orders", "us", "1", n1.sid]]
        private = {(r["namespace"], r["room"]) for r in everything.json() if r["private"]}
        assert private == {("/", p.get_sid("/")), ("/orders", p.get_sid("/orders")),
                           ("/orders", n1.sid), ("/orders", n2.sid)}

        s = status.json()
        assert s["listen"] == [f"127.0.0.1:{d.port}"] and s["pid"] == d.pid
        assert (s["connections"], s["sockets"], s["namespaces"], s["rooms"]) == (3, 4, 2, 3)
        assert s["version"] and s["uptime"] >= 0 and isinstance(s["events_total"], int)

        eu_json, eu_table, ns_json, ns_table, st_table = await _gather(
            d.cli("sockets", "list", "/orders", "--room", "eu", "--json"),
            roomd("sockets", "list", "--room", "eu", "--socket", d.socket),
            d.cli("namespaces", "list", "--json"),
            d.cli("namespaces", "list"),
            d.cli("status"),
        )
        eu = eu_json.json()
        assert {s["id"]: s["transport"] for s in eu} == {n1.sid: "websocket", n2.sid: "polling"}
        assert all(s["namespace"] == "/orders" and "eu" in s["rooms"] and
                   s["address"] == "127.0.0.1" for s in eu)
        rows = eu_table.stdout.splitlines()
        assert rows[0].split() == ["ID", "NAMESPACE", "TRANSPORT", "ADDRESS", "CONNECTED", "ROOMS"]
        assert sorted(line.split()[0] for line in rows[1:]) == sorted([n1.sid, n2.sid])
        assert p.get_sid("/orders") not in eu_table.stdout
        assert ns_json.json() == [{"name": "/", "sockets": 1, "rooms": 1},
                                  {"name": "/orders", "sockets": 3, "rooms": 2}]
        assert [line.split() for line in ns_table.stdout.splitlines()] == [
            ["NAMESPACE", "SOCKETS", "ROOMS"], ["/", "1", "1"], ["/orders", "3", "2"]]
        assert f"listen:      127.0.0.1:{d.port}" in st_table.stdout
        assert re.search(r"^connections: 3$", st_table.stdout, re.M), st_table.stdout

        # the listings follow leaves and disconnects
        await n2.emit_with_ack("leave", "eu")
        await n1.disconnect()
        await p.call("leave", "lobby", namespace="/")
        with trio.fail_after(5):
            while (await d.admin("rooms"))["rooms"]:
                await trio.sleep(0.02)
        r1, r2 = await _gather(d.cli("rooms", "list"),
                               d.cli("sockets", "list", "/orders", "--room", "eu"))
        assert (r1.returncode, r1.stdout) == (0, "no rooms\n"), str(r1)
        assert (r2.returncode, r2.stdout) == (0, "no sockets\n"), str(r2)


async def test_tail_filters_and_daemon_going_away(tmpdir_short, node, py_client):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        a = await node.connect(d.url, "/orders")
        b = await node.connect(d.url, "/orders", force_new=True)
        await a.emit_with_ack("join", "eu")
        await b.emit_with_ack("join", ["eu", "us"])
        p = await py_client()
        await p.connect(d.url, namespaces=["/"])
        await p.call("join", "lobby", namespace="/")

        async with tailing(d.socket) as everything, \
                tailing(d.socket, "/orders") as orders, \
                tailing(d.socket, "orders", "--room", "eu") as eu, \
                tailing(d.socket, "--event", "created") as created, \
                tailing(d.socket, "/orders", "--json") as js:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(everything.sync, d.socket)
                nursery.start_soon(orders.sync, d.socket, "/orders")
                nursery.start_soon(eu.sync, d.socket, "/orders", "eu")
                nursery.start_soon(created.sync, d.socket, "/", None, "created")
                nursery.start_soon(js.sync, d.socket, "/orders")

            # 1. a client publishes to /orders eu (the relay: everyone in eu but the sender)
            ack = await a.emit_with_ack("publish", "eu", "created", {"id": 1})
            assert ack == [{"recipients": 1}]
            assert (await b.next_event("created")).args == [{"id": 1}]
            e1 = await everything.line()
            assert TAIL_LINE.match(e1), e1
            assert e1.split(" ", 1)[1] == f'/orders eu !{a.sid} created {{"id":1}} -> 1'
            # 2. roomd emit to /orders us
            r = await d.cli("emit", "/orders", "shipped", '{"id": 2}', '"fast"', "--room", "us")
            assert (r.returncode, r.stdout) == (0, "delivered to 1 socket\n"), str(r)
            assert (await b.next_event("shipped")).args == [{"id": 2}, "fast"]
            e2 = await everything.line()
            assert e2.split(" ", 1)[1] == '/orders us shipped {"id":2},"fast" -> 1'
            # 3. a client publishes in / to lobby (nobody else there)
            ack = await p.call("publish", "lobby", "created", "hello", namespace="/")
            assert ack == [{"recipients": 0}]
            e3 = await everything.line()
            assert e3.split(" ", 1)[1] == f'/ lobby !{p.get_sid("/")} created "hello" -> 0'
            # 4. roomd emit to the whole of /
            r = await d.cli("emit", "/", "created", "42", "--json")
            assert (r.returncode, r.json()) == (0, {"recipients": 1}), str(r)
            assert (await p.next_event("created", namespace="/")).args == [42]
            e4 = await everything.line()
            assert e4.split(" ", 1)[1] == "/ * created 42 -> 1"

            assert [await orders.line(), await orders.line()] == [e1, e2]
            assert await eu.line() == e1
            assert [await created.line() for _ in range(3)] == [e1, e3, e4]
            j1, j2 = [__import__("json").loads(await js.line()) for _ in range(2)]
            keys = ("namespace", "rooms", "except", "event", "args", "recipients", "source")
            assert {k: j1[k] for k in keys} == {
                "namespace": "/orders", "rooms": ["eu"], "except": [a.sid], "event": "created",
                "args": [{"id": 1}], "recipients": 1, "source": "client"}
            assert (j2["event"], j2["args"], j2["source"]) == (
                "shipped", [{"id": 2}, "fast"], "admin")
            for t in (everything, orders, eu, created, js):
                await t.no_line(0.2 if t is everything else 0)

            # Ctrl-C ends a tail quietly; SIGTERM by PID ends it too
            assert await stop(created.proc, signal.SIGINT) == 0
            assert created.stderr == b""
            assert await stop(js.proc, signal.SIGTERM) == -signal.SIGTERM

            # the daemon goes away: the tails say so and exit 1
            assert await stop(d.proc) == 0
            for t in (everything, orders, eu):
                assert await t.wait_exit() == 1
                assert t.stderr == b"roomd: daemon went away\n", t.stderr


async def test_tail_daemon_killed(tmpdir_short):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        async with tailing(d.socket, "/orders") as t:
            await t.sync(d.socket, "/orders")
            assert await stop(d.proc, signal.SIGKILL) == -signal.SIGKILL
            assert await t.wait_exit() == 1
            assert t.stderr == b"roomd: daemon went away\n", t.stderr


async def test_emit_reaches_exactly_the_right_clients(tmpdir_short, node, py_client):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        only_eu = await node.connect(d.url, "/orders")
        eu_us = await node.connect(d.url, "/orders", force_new=True)
        only_us = await node.connect(d.url, "/orders", force_new=True)
        no_room = await node.connect(d.url, "/orders", force_new=True)
        main_eu = await node.connect(d.url, "/")  # "eu" in / is not "eu" in /orders
        py_eu = await py_client()
        await py_eu.connect(d.url, namespaces=["/orders"])
        await only_eu.emit_with_ack("join", "eu")
        await eu_us.emit_with_ack("join", ["eu", "us"])
        await only_us.emit_with_ack("join", "us")
        await main_eu.emit_with_ack("join", "eu")
        await py_eu.call("join", "eu", namespace="/orders")
        everyone = [only_eu, eu_us, only_us, no_room, main_eu]

        async def expect(result, received, what, args, py=False):
            n = len(received) + py
            assert result.returncode == 0, str(result)
            assert result.stdout == f"delivered to {n} socket{'' if n == 1 else 's'}\n", str(result)
            for s in received:
                assert (await s.next_event(what)).args == args
            if py:
                assert (await py_eu.next_event(what, namespace="/orders")).args == args
            await trio.sleep(0.3)
            for s in everyone:  # nobody else, and no duplicates
                await s.no_event(what, wait=0)
            await py_eu.no_event(what, wait=0)

        # --room eu --except us: eu members not in us
        r = await d.cli("emit", "/orders", "e1", '{"a": [1, 2]}', "null",
                        "--room", "eu", "--except", "us")
        await expect(r, [only_eu], "e1", [{"a": [1, 2]}, None], py=True)
        # two rooms: the union, each socket once
        r = await d.cli("emit", "orders", "e2", '"x"', "--room", "eu", "--room", "us")
        await expect(r, [only_eu, eu_us, only_us], "e2", ["x"], py=True)
        # the whole namespace except a room
        r = await d.cli("emit", "/orders", "e3", "--except", "eu")
        await expect(r, [only_us, no_room], "e3", [])
        # another namespace
        r = await d.cli("emit", "/", "e4", "true", "--room", "eu")
        await expect(r, [main_eu], "e4", [True])
        # a room nobody is in
        r = await d.cli("emit", "/orders", "e5", "--room", "asia")
        await expect(r, [], "e5", [])

        # errors: one line, exit 1 (bad JSON is a usage error, exit 2)
        r = await d.cli("emit", "orders", "e6", "hello")
        assert r.returncode == 2 and "'hello' is not valid JSON" in r.stderr, str(r)
        r = await d.cli("emit", "/orders", "connect", "1")
        assert r.returncode == 1 and r.stderr.startswith("roomd: "), str(r)
        assert len(r.stderr.splitlines()) == 1, str(r)
        no_traceback(r)


async def test_unknown_namespace_is_named(tmpdir_short):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        results = await _gather(
            d.cli("emit", "/nosuch", "created", "1"),
            d.cli("tail", "/nosuch"),  # would wait forever for events that cannot come
            d.cli("rooms", "list", "nosuch"),
            d.cli("sockets", "list", "/nosuch", "--json"),
        )
        for r in results:
            assert (r.returncode, r.stdout, r.stderr) == (
                1, "", "roomd: no namespace /nosuch\n"), str(r)
        r = await d.cli("emit", "/orders", "created", "1")  # a declared one, nobody in it
        assert (r.returncode, r.stdout) == (0, "delivered to 0 sockets\n"), str(r)
        async with tailing(d.socket, "/orders") as t:  # declared: tail waits for its events
            await t.sync(d.socket, "/orders")


async def test_tail_takes_shell_patterns(tmpdir_short, node):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        a = await node.connect(d.url, "/orders")
        b = await node.connect(d.url, "/orders", force_new=True)
        await b.emit_with_ack("join", ["eu-1", "eu-2", "us"])
        async with tailing(d.socket, "/orders", "--room", "eu-*", "--event", "order.[cu]*") as t:
            await t.sync(d.socket, "/orders", "eu-*", "order.created")
            for room, event in (("us", "order.created"), ("eu-1", "order.deleted"),
                                ("eu-2", "order.updated"), ("eu-1", "order.created")):
                assert await a.emit_with_ack("publish", room, event, 1) == [{"recipients": 1}]
                await b.next_event(event)
            for room, event in (("eu-2", "order.updated"), ("eu-1", "order.created")):
                line = (await t.line()).split(" ", 1)[1]
                assert line == f"/orders {room} !{a.sid} {event} 1 -> 1"
            await t.no_line(0.3)


async def test_sighup_removes_a_namespace(tmpdir_short, node):
    """A namespace dropped from the file no longer exists after SIGHUP: not listed, new
    connections refused, its sockets told and disconnected; one added is served."""
    async with running_daemon(tmpdir_short, CONFIG + '\n[[namespaces]]\nname = "/chat"\n') as d:
        chat = await node.connect(d.url, "/chat")
        main = await node.connect(d.url, "/")  # the same connection, another namespace
        assert await chat.emit_with_ack("join", "lobby") == [{"rooms": sorted([chat.sid, "lobby"])}]
        listed = (await d.cli("namespaces", "list", "--json")).json()
        assert [n["name"] for n in listed] == ["/", "/chat", "/orders"]

        (tmpdir_short / "roomd.toml").write_text(CONFIG + '\n[[namespaces]]\nname = "/news"\n')
        d.proc.send_signal(signal.SIGHUP)
        assert (await chat.next_event("disconnect")).args == ["io server disconnect"]
        with trio.fail_after(10):
            while "SIGHUP: configuration reloaded" not in d.log():
                await trio.sleep(0.05)
        assert "SIGHUP: namespaces removed: /chat" in d.log()
        assert "SIGHUP: namespaces added: /news" in d.log()
        assert await main.is_connected()
        listed = (await d.cli("namespaces", "list", "--json")).json()
        assert [n["name"] for n in listed] == ["/", "/news", "/orders"]
        assert (await d.cli("status", "--json")).json()["namespaces"] == 3
        r = await d.cli("emit", "/chat", "hello")
        assert (r.returncode, r.stderr) == (1, "roomd: no namespace /chat\n"), str(r)
        with pytest.raises(ConnectError) as info:
            await node.connect(d.url, "/chat", force_new=True)
        assert info.value.message == "Invalid namespace"
        news = await node.connect(d.url, "/news", force_new=True)
        assert await news.emit_with_ack("join", "a") == [{"rooms": sorted([news.sid, "a"])}]


async def test_ordinary_closes_are_counted_not_logged(tmpdir_short, node, py_client):
    """Clients closing, dropping their connection or going silent are routine: no INFO line
    each (they drowned real events), a count by reason in `roomd status`, DEBUG lines."""
    config = CONFIG + "\n[server]\nping_interval = 1.0\nping_timeout = 1.0\n"
    async with running_daemon(tmpdir_short, config) as d:
        ws = await node.connect(d.url, "/orders", transports=["websocket"], force_new=True)
        polling = await node.connect(d.url, "/", transports=["polling"], force_new=True)
        upgraded = await node.connect(d.url, "/", force_new=True)
        p = await py_client()
        await p.connect(d.url, namespaces=["/"])
        for s in (ws, polling, upgraded):
            await s.disconnect()
        await p.disconnect()
        # a client that opens a session, then never polls again (nor answers a ping)
        status, _, body = await raw_http(d.port, build_request(
            "GET", "/socket.io/?EIO=4&transport=polling"))
        assert status == 200, body
        sid = json.loads(body[1:].split(b"\x1e")[0])["sid"]
        with trio.fail_after(20):  # until every session is gone, the silent one included
            while (await d.admin("status"))["status"]["connections"]:
                await trio.sleep(0.1)
        # its late polls: the first may still collect the ping it never answered (a 200),
        # the next the close packet, which travels alone (a 200), then the session is gone
        # (a 400), as for any client after a close
        statuses = []
        while 400 not in statuses and len(statuses) < 4:
            status, _, _ = await raw_http(d.port, build_request(
                "GET", f"/socket.io/?EIO=4&transport=polling&sid={sid}"))
            statuses.append(status)
        assert statuses in ([400], [200, 400], [200, 200, 400]), statuses

        # (a loaded machine may let a client miss a pong: counts, not exact reasons)
        closed = (await d.cli("status", "--json")).json()["closed"]
        total = sum(closed.values())
        assert closed.get("ping timeout", 0) >= 1 and total >= 5, closed
        table = (await d.cli("status")).stdout
        assert re.search(rf"^closed: +{total} \(.*ping timeout \d", table, re.M), table
        lines = d.log().splitlines()
        assert len(lines) == 2 and all("listening on" in line for line in lines), lines


async def test_disconnect_drops_exactly_that_socket(tmpdir_short, node, py_client):
    async with running_daemon(tmpdir_short, CONFIG) as d:
        main = await node.connect(d.url, "/")
        orders = await node.connect(d.url, "/orders")  # multiplexed on main's connection
        other = await node.connect(d.url, "/", force_new=True)
        p = await py_client()
        await p.connect(d.url, namespaces=["/", "/orders"])
        assert main.sid != orders.sid

        r = await d.cli("disconnect", orders.sid)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"disconnected {orders.sid}\n", ""), str(r)
        assert (await orders.next_event("disconnect")).args == ["io server disconnect"]
        for s in (main, other):
            await s.no_event("disconnect", wait=0.2)
            assert await s.is_connected()
        await p.no_event("disconnect", wait=0)
        # the other namespace of the same connection still works
        assert await main.emit_with_ack("join", "r") == [{"rooms": sorted([main.sid, "r"])}]

        sid = p.get_sid("/orders")
        r = await roomd("disconnect", sid, "--json", "--socket", d.socket)
        assert (r.returncode, r.json()) == (0, {"disconnected": True, "id": sid}), str(r)
        ev = await p.next_event("disconnect", namespace="/orders")
        assert ev.args == ["server disconnect"]  # python-socketio's name for a DISCONNECT packet
        await p.no_event("disconnect", namespace="/", wait=0.2)
        assert p.get_sid("/") is not None

        listed = (await d.cli("sockets", "list", "--json")).json()
        assert sorted(s["id"] for s in listed) == sorted([main.sid, other.sid, p.get_sid("/")])

        r = await d.cli("disconnect", "no-such-sid")
        expected = (1, "", "roomd: no socket with id 'no-such-sid'\n")
        assert (r.returncode, r.stdout, r.stderr) == expected, str(r)


async def test_no_daemon(tmpdir_short):
    missing = "/tmp/nonexistent.sock"
    stale = str(tmpdir_short / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)  # a socket file nobody listens on: a crashed daemon's leftover
    s.close()
    results = await _gather(
        roomd("status", "--socket", missing),
        roomd("--socket", missing, "rooms", "list", "--json"),
        roomd("tail", "/orders", "--socket", missing),
        roomd("status", "--socket", stale),
        roomd("emit", "/", "x", env=dict(os.environ, ROOMD_SOCKET=stale)),
    )
    for r, path in zip(results, [missing, missing, missing, stale, stale], strict=True):
        expected = (1, "", f"roomd: no roomd daemon answering on {path}\n")
        assert (r.returncode, r.stdout, r.stderr) == expected, str(r)


async def test_serve_on_a_taken_port_names_the_address(tmpdir_short):
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = await roomd("serve", "--port", str(port), "--socket", str(tmpdir_short / "a.sock"))
    finally:
        taken.close()
    assert r.returncode == 1, str(r)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr, str(r)
    assert len(r.stderr.splitlines()) == 1, str(r)
    no_traceback(r)
    assert not (tmpdir_short / "a.sock").exists()  # nothing was left behind


async def test_config_check_and_serve_reject_bad_files(tmpdir_short):
    misspelt = tmpdir_short / "misspelt.toml"
    misspelt.write_text('[server]\nport = 4000\n\n'
                        '[[namespaces]]\nname = "/orders"\nclient_joins = true\n')
    wrong_type = tmpdir_short / "wrong-type.toml"
    wrong_type.write_text('[limits]\nshutdown_grace = "5s"\n')
    good = tmpdir_short / "good.toml"
    good.write_text(CONFIG)
    bad1, bad2, ok, serve_bad = await _gather(
        roomd("config", "check", str(misspelt)),
        roomd("config", "check", str(wrong_type)),
        roomd("config", "check", str(good)),
        roomd("serve", "--config", str(misspelt), "--socket", str(tmpdir_short / "x.sock")),
    )
    assert (bad1.returncode, bad1.stdout, bad1.stderr) == (
        1, "", f"roomd: unknown key 'namespaces[0].client_joins' in {misspelt}\n"), str(bad1)
    assert (bad2.returncode, bad2.stdout, bad2.stderr) == (
        1, "", "roomd: limits.shutdown_grace must be a number, got string\n"), str(bad2)
    assert ok.returncode == 0 and 'rooms = ["eu", "us", "asia", "eu-*"]' in ok.stdout, str(ok)
    assert (serve_bad.returncode, serve_bad.stderr) == (
        78, f"roomd: unknown key 'namespaces[0].client_joins' in {misspelt}\n"), str(serve_bad)


@needs_root
async def test_admin_socket_refuses_another_uid(tmpdir_short):
    python = require_python_for_other_user()
    os.chmod(tmpdir_short, 0o711)
    async with running_daemon(tmpdir_short) as d:
        # Open the file mode so that only the credential check stands in the way.
        os.chmod(d.socket, 0o666)
        # The other user runs the CLI from a world-readable copy: the clone may be private.
        with readable_packages("roomd", "roomd_cli", "click") as packages:
            r = await roomd("status", "--socket", d.socket, env=dict(
                os.environ, PYTHONPATH=str(packages)), cwd="/",
                command=[*AS_OTHER_USER, python, "-c", "import roomd_cli; roomd_cli.main()"])
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", "roomd: permission denied: uid 65534 may not use this admin socket\n"), str(r)
        assert "admin socket: refused pid" in d.log() and "uid 65534" in d.log()
        r = await d.cli("status", "--json")  # its own uid still gets in
        assert r.returncode == 0 and r.json()["pid"] == d.pid


async def _gather(*coros):
    """Run the coroutines concurrently; return their results in order."""
    results: list = [None] * len(coros)

    async def one(i, coro):
        results[i] = await coro

    async with trio.open_nursery() as nursery:
        for i, coro in enumerate(coros):
            nursery.start_soon(one, i, coro)
    return results
