"""The HTTP API for backends, called with a real HTTP client (urllib) while stock clients
are connected: every call, a wrong key, malformed and oversized bodies, and the real daemon
with all three observation features on."""

from __future__ import annotations

import functools
import json
import secrets

import harness
import pytest
import trio
from daemon_proc import running_daemon, short_dir
from http_client import request
from prometheus_client.parser import text_string_to_metric_families

import roomd
from roomd.apps.relay import RelayApp
from roomd.ops.config import NamespaceConfig
from roomd.ops.http_api import serve_http_api

KEY = "k-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 8192


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    async def call(self, method: str, body: object = ..., *, headers: dict | None = None,
                   data: bytes | None = None):
        return await request("POST", f"{self.base}/{method}", json_body=body, data=data,
                             headers=AUTH if headers is None else headers)

    async def ok(self, method: str, body: object) -> dict:
        reply = await self.call(method, body)
        assert reply.status == 200, str(reply)
        assert reply.headers["content-type"] == "application/json"
        return reply.json()


@pytest.fixture
async def served(nursery, start_server, tmp_path):
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/"), NamespaceConfig(name="/orders")])
    srv = await start_server(io)
    host, port = await nursery.start(functools.partial(
        serve_http_api, io, "127.0.0.1:0", str(key_file), prefix="/api/v1", max_body=MAX_BODY))
    return srv, Api(f"http://{host}:{port}/api/v1")


async def wait_rooms(api: Api, sid: str, namespace: str, expected: set[str]) -> None:
    with trio.fail_after(5):
        while True:
            found = (await api.ok("sockets", {"namespace": namespace, "to": sid}))["sockets"]
            if found and set(found[0]["rooms"]) == expected:
                return
            await trio.sleep(0.05)


async def test_every_call(served, node, py_client):
    srv, api = served
    a = await node.connect(srv.url, "/orders", transports=["websocket"])
    b = await node.connect(srv.url, "/orders", force_new=True)
    p = await py_client()
    await p.connect(srv.url, ["/orders"])
    p_sid = p.get_sid("/orders")
    assert await a.emit_with_ack("join", ["eu", "vip"])
    assert await b.emit_with_ack("join", "eu")

    # rooms: counted across sockets; sockets' own rooms only on request
    rooms = (await api.ok("rooms", {"namespace": "/orders"}))["rooms"]
    assert rooms == [{"name": "eu", "sockets": 2}, {"name": "vip", "sockets": 1}]
    every = (await api.ok("rooms", {"namespace": "/orders", "include_private": True}))["rooms"]
    assert {"name": a.sid, "sockets": 1} in every and len(every) == 5

    # sockets of a room
    in_eu = (await api.ok("sockets", {"namespace": "/orders", "to": "eu"}))["sockets"]
    assert sorted(s["id"] for s in in_eu) == sorted([a.sid, b.sid])
    first = next(s for s in in_eu if s["id"] == a.sid)
    assert first["rooms"] == sorted([a.sid, "eu", "vip"])
    assert first["transport"] == "websocket" and first["address"] == "127.0.0.1"
    everyone = (await api.ok("sockets", {"namespace": "/orders"}))["sockets"]
    assert len(everyone) == 3

    # emit to a room except another room: only b gets it
    assert await api.ok("emit", {"namespace": "/orders", "to": ["eu"], "except": "vip",
                                 "event": "order", "args": [{"id": 7}, "paid"]}) == {}
    got = await b.next_event("order")
    assert got.args == [{"id": 7}, "paid"]
    await a.no_event("order")
    # emit to the whole namespace (no "to"): the python client gets it too
    await api.ok("emit", {"namespace": "/orders", "event": "all", "args": [1]})
    assert (await p.next_event("all", namespace="/orders")).args == [1]

    # join / leave, selecting a socket by its id
    await api.ok("join", {"namespace": "/orders", "to": p_sid, "rooms": ["eu", "us"]})
    await wait_rooms(api, p_sid, "/orders", {p_sid, "eu", "us"})
    await api.ok("emit", {"namespace": "/orders", "to": "us", "event": "hello"})
    assert (await p.next_event("hello", namespace="/orders")).args == []
    await api.ok("leave", {"namespace": "/orders", "to": p_sid, "rooms": "us"})
    await wait_rooms(api, p_sid, "/orders", {p_sid, "eu"})

    # disconnect the sockets of a room
    await api.ok("disconnect", {"namespace": "/orders", "to": "vip"})
    assert (await a.next_event("disconnect")).args[0] == "io server disconnect"
    left = (await api.ok("sockets", {"namespace": "/orders", "to": "eu"}))["sockets"]
    assert sorted(s["id"] for s in left) == sorted([b.sid, p_sid])


async def test_refusals(served, node):
    srv, api = served
    a = await node.connect(srv.url, "/")
    body = {"event": "x"}
    for headers in ({}, {"Authorization": "Bearer wrong-key-of-some-length"},
                    {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}):
        reply = await api.call("emit", body, headers=headers)
        assert reply.status == 401, str(reply)
        assert reply.json()["error"]["code"] == "unauthorized"
        assert reply.headers["www-authenticate"].startswith("Bearer")
    await a.no_event("x")

    async def bad(method: str, status: int, code: str, field: str | None = None, **kw):
        reply = await api.call(method, **kw)
        assert reply.status == status, str(reply)
        error = reply.json()["error"]
        assert error["code"] == code, error
        assert error.get("field") == field, error
        assert error["message"]
        return error

    await bad("emit", 400, "invalid_json", data=b'{"event": ')
    await bad("emit", 400, "invalid_json", data=b"[1, 2]")
    await bad("emit", 400, "invalid_json", data=b"\xff\xfe")
    error = await bad("emit", 400, "missing_field", "event", body={"args": []})
    assert "'event'" in error["message"]
    await bad("emit", 400, "invalid_field", "event", body={"event": "disconnect"})
    await bad("emit", 400, "invalid_field", "event", body={"event": 5})
    await bad("emit", 400, "invalid_field", "args", body={"event": "e", "args": {"a": 1}})
    await bad("emit", 400, "invalid_field", "to", body={"event": "e", "to": 5})
    await bad("emit", 400, "invalid_field", "except", body={"event": "e", "except": [""]})
    await bad("emit", 400, "invalid_field", "volatile", body={"event": "e", "volatile": "yes"})
    await bad("emit", 400, "invalid_field", "namespace", body={"event": "e", "namespace": 1})
    await bad("emit", 404, "unknown_namespace", "namespace",
              body={"event": "e", "namespace": "/nope"})
    await bad("join", 400, "missing_field", "rooms", body={"to": a.sid})
    await bad("join", 400, "invalid_field", "rooms", body={"rooms": []})
    await bad("join", 400, "invalid_field", "rooms", body={"rooms": ["r"] * 1001})
    await bad("disconnect", 400, "invalid_field", "close", body={"close": 1})
    await bad("rooms", 400, "invalid_field", "include_private", body={"include_private": 0})
    await bad("nothing", 404, "unknown_method", body={})
    assert "/nope" not in srv.io.namespace_names()  # a refused call creates no namespace

    # bodies over max_body: by Content-Length, and without one (chunked)
    big = json.dumps({"event": "big", "args": ["x" * MAX_BODY]}).encode()
    await bad("emit", 413, "body_too_large", data=big)
    reply = await request("POST", f"{api.base}/emit", data=iter([big[:100], big[100:]]),
                          headers={**AUTH, "Transfer-Encoding": "chunked"})
    assert reply.status == 413 and reply.json()["error"]["code"] == "body_too_large"
    await a.no_event("big")

    # not POST
    reply = await request("GET", f"{api.base}/emit", headers=AUTH)
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    # and the server still serves
    await api.ok("emit", {"event": "after"})
    assert (await a.next_event("after")).args == []


async def test_openapi_document(served):
    _, api = served
    reply = await request("GET", f"{api.base}/openapi.json")
    assert reply.status == 200
    document = reply.json()
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    assert paths == {f"/api/v1/{m}" for m in
                     ("emit", "rooms", "sockets", "join", "leave", "disconnect")}
    for item in document["paths"].values():
        assert set(item) == {"post"} and item["post"]["security"] == [{"bearer": []}]


@pytest.mark.deadline(90)
async def test_daemon_serves_metrics_admin_ui_and_api(node):
    """The real `roomd serve` with [metrics], [admin_ui] and [http_api] on."""
    import bcrypt

    with short_dir() as d:
        (d / "api.key").write_text(KEY)
        (d / "api.key").chmod(0o600)
        password_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        config = f"""
[server]
cors_origins = ["http://app.example"]
[metrics]
enabled = true
listen = "127.0.0.1:0"
[admin_ui]
enabled = true
password_hash = "{password_hash}"
mode = "production"
[http_api]
enabled = true
listen = "127.0.0.1:0"
key_file = "{d / 'api.key'}"
"""
        async with running_daemon(d, config) as daemon:
            from daemon_proc import wait_for_log
            metrics = await wait_for_log(daemon.log_path, r"metrics listening on (\S+)",
                                         daemon.proc)
            api = await wait_for_log(daemon.log_path, r"HTTP API listening on (\S+)",
                                     daemon.proc)
            c = await node.connect(daemon.url, "/", transports=["websocket"])
            assert await c.emit_with_ack("join", "lobby")
            reply = await request("POST", f"http://{api.group(1)}/api/emit", headers=AUTH,
                                  json_body={"to": "lobby", "event": "news", "args": ["hi"]})
            assert reply.status == 200, str(reply)
            assert (await c.next_event("news")).args == ["hi"]
            text = (await request("GET", f"http://{metrics.group(1)}/metrics")).body.decode()
            values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for f in text_string_to_metric_families(text) for s in f.samples}
            assert values[("roomd_sockets", (("namespace", "/"),))] == 1
            assert values[("roomd_rooms", (("namespace", "/"),))] == 1
            assert values[("roomd_broadcasts_total", ())] >= 1
            # the Admin UI namespace takes a login
            with pytest.raises(harness.ConnectError, match="invalid credentials"):
                await node.connect(daemon.url, "/admin", auth={"username": "admin",
                                                               "password": "nope"})
            admin = await node.connect(daemon.url, "/admin", force_new=True,
                                       auth={"username": "admin", "password": "pw"})
            config_event = await admin.next_event("config")
            assert "EMIT" in config_event.args[0]["supportedFeatures"]
            assert "ALL_EVENTS" not in config_event.args[0]["supportedFeatures"]
            # CORS: the configured origin and the Admin UI's are both allowed
            for origin in ("http://app.example", "https://admin.socket.io"):
                reply = await request("GET", f"{daemon.url}/socket.io/?EIO=4&transport=polling",
                                      headers={"Origin": origin})
                assert reply.status == 200, str(reply)
                assert reply.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("key_text, message", [
    (None, "http_api.key_file: cannot read"),
    ("short", "must hold a key of at least 16 characters"),
])
async def test_daemon_refuses_an_unusable_key_file(key_text, message):
    from daemon_proc import roomd

    with short_dir() as d:
        if key_text is not None:
            (d / "api.key").write_text(key_text)
        (d / "roomd.toml").write_text(
            f'[http_api]\nenabled = true\nkey_file = "{d / "api.key"}"\n')
        result = await roomd("serve", "--config", str(d / "roomd.toml"), "--port", "0",
                             "--socket", str(d / "admin.sock"))
        assert result.returncode == 78, str(result)
        assert message in result.stderr, str(result)
