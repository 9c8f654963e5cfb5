"""Signed tokens (issue 10) with the stock clients: who may connect, join and publish.

The relay app with ``auth = "NAME"`` namespaces, and ``roomd.auth.jwt`` in a custom app.
Tokens are minted here with PyJWT (``roomd.auth.mint`` and, for the forged ones, PyJWT
directly); both clients send them in their standard ``auth`` payload.
"""

from __future__ import annotations

import base64
import json
import time

import jwt as pyjwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from harness import ConnectError

import roomd
import roomd.auth
from roomd.apps.relay import RelayApp
from roomd.apps.tokens import TokenVerifier
from roomd.ops.config import NamespaceConfig

WS = ["websocket"]
SECRET = b"s3cret-s3cret-s3cret-s3cret-s3cret!"  # 35 bytes
OTHER_SECRET = b"another-secret-another-secret-another"


def token(key=SECRET, **kw) -> str:
    kw.setdefault("sub", "alice")
    kw.setdefault("audience", "roomd")
    return roomd.auth.mint(key, **kw)


def verifier(**kw) -> TokenVerifier:
    kw.setdefault("secret", SECRET)
    kw.setdefault("audience", "roomd")
    kw.setdefault("leeway", 0)
    return TokenVerifier(**kw)


async def relay(start_server, namespaces=None, verifiers=None):
    io = roomd.Server()
    namespaces = namespaces or [
        NamespaceConfig(name="/"),
        NamespaceConfig(name="/chat", auth="main", rooms=("room-*", "lobby")),
    ]
    RelayApp(io, namespaces, verifiers or {"main": verifier()})
    return await start_server(io)


async def node_refusal(node, url, ns, auth, transports=WS) -> str:
    with pytest.raises(ConnectError) as info:
        await node.connect(url, ns, transports=transports, auth=auth)
    return info.value.message


async def py_refusal(py_client, url, ns, auth) -> list:
    p = await py_client()
    with pytest.raises(ConnectError):
        await p.connect(url, [ns], transports=WS, auth=auth)
    return (await p.next_event("connect_error", namespace=ns)).args


def _b64(obj) -> str:
    raw = json.dumps(obj).encode() if isinstance(obj, dict) else obj
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


BAD_TOKENS = [
    ("expired", dict(ttl=-60), "token expired"),
    ("not yet valid", dict(extra={"nbf": int(time.time()) + 3600}), "token not yet valid"),
    ("wrong audience", dict(audience="somebody-else"), "invalid audience"),
    ("no audience", dict(audience=None), "token lacks a required claim"),
    ("wrong signature", dict(key=OTHER_SECRET), "invalid signature"),
]


@pytest.mark.parametrize("case,kw,message", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
async def test_bad_tokens_refused_with_a_clear_message(start_server, node, py_client,
                                                       case, kw, message):
    srv = await relay(start_server)
    kw = dict(kw)
    bad = token(kw.pop("key", SECRET), **kw)
    assert await node_refusal(node, srv.url, "/chat", {"token": bad}) == message
    assert await py_refusal(py_client, srv.url, "/chat", {"token": bad}) == [
        {"message": message}]
    assert srv.io.stats()["auth_refused"] == 2
    # the same client with a good token gets in
    s = await node.connect(srv.url, "/chat", transports=WS, auth={"token": token()})
    assert s.sid


async def test_none_algorithm_and_garbage_refused(start_server, node, py_client):
    srv = await relay(start_server)
    claims = {"sub": "mallory", "aud": "roomd", "rooms": ["*"], "exp": int(time.time()) + 60}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert await node_refusal(node, srv.url, "/chat", {"token": unsigned}) == \
        "algorithm not allowed"
    assert await py_refusal(py_client, srv.url, "/chat", {"token": unsigned}) == [
        {"message": "algorithm not allowed"}]
    # an HS256 token whose "secret" is a public key (algorithm confusion) on an RS256 namespace
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/", auth="rsa")],
             {"rsa": TokenVerifier(public_key=private.public_key(), audience="roomd")})
    rsa_srv = await start_server(io)
    forged = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    import hashlib
    import hmac
    signature = hmac.new(pem, forged.encode(), hashlib.sha256).digest()
    forged += "." + _b64(signature)
    assert await node_refusal(node, rsa_srv.url, "/", {"token": forged}) == \
        "algorithm not allowed"
    for auth, message in (({}, "token required"), (None, "token required"),
                          ({"token": 42}, "token required"),
                          ({"token": "not.a.jwt"}, "malformed token"),
                          ({"token": "x" * 9000}, "malformed token")):
        assert await node_refusal(node, srv.url, "/chat", auth) == message, auth
    # the unauthenticated namespace of the same server still lets anyone in
    p = await py_client()
    await p.connect(srv.url, ["/"], transports=WS)
    assert p.connected


@pytest.mark.parametrize("kind", ["RS256", "ES256", "EdDSA", "JWKS"])
async def test_asymmetric_keys(start_server, node, py_client, tmp_path, kind):
    if kind == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    io = roomd.Server()
    if kind == "JWKS":
        jwk = json.loads(pyjwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
        other = ed25519.Ed25519PrivateKey.generate()
        other_jwk = json.loads(pyjwt.algorithms.OKPAlgorithm.to_jwk(other.public_key()))
        path = tmp_path / "keys.jwks"
        path.write_text(json.dumps({"keys": [dict(other_jwk, kid="old"),
                                             dict(jwk, kid="k2")]}))
        auth = roomd.auth.jwt(io, jwks_file=str(path), audience="roomd")
    else:
        path = tmp_path / "public.pem"
        path.write_bytes(public_pem)
        auth = roomd.auth.jwt(io, public_key_file=str(path), audience="roomd")
    io.of("/").use(auth)

    @io.on("whoami")
    async def whoami(socket):
        return {"sub": socket.data["sub"], "rooms": list(socket.data["auth"].rooms)}

    srv = await start_server(io)
    kid = "k2" if kind == "JWKS" else None
    good = token(private, kid=kid, sub="bob", rooms=["r-*"])
    s = await node.connect(srv.url, transports=WS, auth={"token": good})
    assert await s.emit_with_ack("whoami") == [{"sub": "bob", "rooms": ["r-*"]}]
    p = await py_client()
    await p.connect(srv.url, transports=["polling"], auth={"token": good})
    assert await p.call("whoami") == [{"sub": "bob", "rooms": ["r-*"]}]
    # signed by another key of the same type
    if kind == "RS256":
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ES256":
        stranger = ec.generate_private_key(ec.SECP256R1())
    else:
        stranger = ed25519.Ed25519PrivateKey.generate()
    assert await node_refusal(node, srv.url, "/", {"token": token(stranger, kid=kid)}) == \
        "invalid signature"
    if kind == "JWKS":
        assert await node_refusal(node, srv.url, "/", {"token": token(private, kid="nope")}) \
            == "unknown key"
        assert await node_refusal(node, srv.url, "/", {"token": token(private, kid="old")}) \
            == "invalid signature"


async def test_rights_are_token_and_config_intersected(start_server, node, py_client):
    srv = await relay(start_server, [
        NamespaceConfig(name="/chat", auth="main", rooms=("room-*", "lobby", "news")),
        NamespaceConfig(name="/orders", auth="main", client_publish=False,
                        rooms=("order-*",)),
    ])
    alice = token(sub="alice", rooms=["room-a*", "lobby", "other"], publish=["room-a1"])
    bob = token(sub="bob", rooms=["room-*"], publish=["room-*"])
    a = await node.connect(srv.url, "/chat", transports=WS, auth={"token": alice})
    b = await py_client()
    await b.connect(srv.url, ["/chat"], transports=WS, auth={"token": bob})
    # allowed by both
    assert await a.emit_with_ack("join", ["room-a1", "lobby"]) == [
        {"rooms": sorted([a.sid, "room-a1", "lobby"])}]
    # the token allows "other", the config does not; the config allows room-b1, the token not
    assert await a.emit_with_ack("join", "other") == [
        {"error": "room 'other' is not allowed in /chat"}]
    assert await a.emit_with_ack("join", "room-b1") == [
        {"error": "your token does not allow you to join room 'room-b1'"}]
    assert await b.call("join", "room-a1", namespace="/chat") == [
        {"rooms": sorted([b.get_sid("/chat"), "room-a1"])}]
    # publish: alice may publish to room-a1 only
    assert await a.emit_with_ack("publish", "room-a1", "chat", "hi") == [{"recipients": 1}]
    assert (await b.next_event("chat", namespace="/chat")).args == ["hi"]
    assert await a.emit_with_ack("publish", "lobby", "chat", "no") == [
        {"error": "your token does not allow you to publish to room 'lobby'"}]
    assert await b.call("publish", "room-a1", "chat", "yo", namespace="/chat") == [
        {"recipients": 1}]
    assert (await a.next_event("chat")).args == ["yo"]
    # the config forbids client publishing in /orders whatever the token says
    o = await node.connect(srv.url, "/orders", transports=WS,
                           auth={"token": token(rooms=["order-*"], publish=["*"])})
    assert await o.emit_with_ack("join", "order-7") == [{"rooms": sorted([o.sid, "order-7"])}]
    assert await o.emit_with_ack("publish", "order-7", "x") == [
        {"error": "publishing is not allowed in /orders"}]
    # a token without rights claims connects but may neither join nor publish
    n = await node.connect(srv.url, "/chat", transports=WS, auth={"token": token(sub="nobody")})
    assert await n.emit_with_ack("join", "lobby") == [
        {"error": "your token does not allow you to join room 'lobby'"}]
    assert await n.emit_with_ack("publish", "lobby", "chat", 1) == [
        {"error": "your token does not allow you to publish to room 'lobby'"}]
    await a.no_event("chat", wait=0.2)


async def test_auto_join_and_subject(start_server, node, py_client):
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/chat", auth="main", rooms=("room-*", "lobby"))],
             {"main": verifier()})

    @io.of("/chat").on("whoami")
    async def whoami(socket):
        return socket.data["sub"]

    srv = await start_server(io)
    t = token(sub="carol", join=["lobby", "room-9", "secret-room"])
    s = await node.connect(srv.url, "/chat", transports=WS, auth={"token": t})
    p = await py_client()
    await p.connect(srv.url, ["/chat"], transports=["polling"], auth={"token": t})
    # joined on connect, without asking; secret-room is outside the config: not joined
    rooms = {r["room"]: len(r["members"]) for r in await io.rooms_snapshot("/chat")
             if r["room"] in ("lobby", "room-9", "secret-room")}
    assert rooms == {"lobby": 2, "room-9": 2}
    assert await s.emit_with_ack("whoami") == ["carol"]
    assert await p.call("whoami", namespace="/chat") == ["carol"]
    await io.of("/chat").to("room-9").emit("news", 1)
    assert (await s.next_event("news")).args == [1]
    assert (await p.next_event("news", namespace="/chat")).args == [1]


@pytest.mark.deadline(90)
async def test_refresh_keeps_the_socket_and_expiry_disconnects(start_server, node, py_client):
    srv = await relay(start_server)
    ttl = 3
    keep = await node.connect(srv.url, "/chat", transports=WS,
                              auth={"token": token(ttl=ttl, rooms=["lobby"])})
    lapse = await node.connect(srv.url, "/chat", transports=WS, force_new=True,
                               auth={"token": token(ttl=ttl, rooms=["lobby"])})
    py = await py_client()
    await py.connect(srv.url, ["/chat"], transports=WS, auth={"token": token(ttl=ttl)})
    py_lapse = await py_client()
    await py_lapse.connect(srv.url, ["/chat"], transports=["polling"],
                           auth={"token": token(ttl=ttl)})
    # a refresh with a bad token or another subject's token is refused, and changes nothing
    assert await keep.emit_with_ack("refresh", "garbage") == [{"error": "malformed token"}]
    assert await keep.emit_with_ack("refresh", token(sub="mallory", ttl=600)) == [
        {"error": "the token is for another subject"}]
    fresh = token(ttl=600, rooms=["lobby", "room-1"])
    [ack] = await keep.emit_with_ack("refresh", fresh)
    assert ack["exp"] == pyjwt.decode(fresh, options={"verify_signature": False})["exp"]
    [ack] = await py.call("refresh", token(ttl=600), namespace="/chat")
    assert ack["exp"] > time.time() + 500
    # the refreshed rights apply at once
    assert await keep.emit_with_ack("join", "room-1") == [{"rooms": sorted([keep.sid,
                                                                             "room-1"])}]
    # the unrefreshed socket is told, then disconnected, at exp
    told = await lapse.next_event("token_expired", timeout=ttl + 10)
    assert told.args == [{"message": "token expired"}]
    gone = await lapse.next_event("disconnect", timeout=10)
    assert gone.args == ["io server disconnect"]
    told = await py_lapse.next_event("token_expired", namespace="/chat", timeout=10)
    assert told.args == [{"message": "token expired"}]
    await py_lapse.next_event("disconnect", namespace="/chat", timeout=10)
    # the refreshed ones stay connected past the first exp
    await keep.no_event("disconnect", wait=1.0)
    assert await keep.is_connected()
    assert await keep.emit_with_ack("join", "lobby") == [{"rooms": sorted([keep.sid, "lobby",
                                                                            "room-1"])}]
    assert py.connected
    assert srv.io.stats()["auth_expired"] == 2


async def test_custom_app_middleware_refuses_and_admits(start_server, node, tmp_path):
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_bytes(SECRET + b"\n")
    io = roomd.Server()
    io.use(roomd.auth.jwt(io, secret_file=str(secret_file), issuer="backend", audience="roomd"))

    @io.on("connection")
    async def connected(socket):
        await socket.join(list(socket.data["auth"].join))

    srv = await start_server(io)
    assert await node_refusal(node, srv.url, "/", {"token": token(issuer="other")}) == \
        "invalid issuer"
    s = await node.connect(srv.url, transports=["polling"],
                           auth={"token": token(issuer="backend", join=["vip"])})
    await io.to("vip").emit("hello", "vip")
    assert (await s.next_event("hello")).args == ["vip"]


def test_key_loading_errors_name_the_file(tmp_path):
    io = roomd.Server()
    short = tmp_path / "short.secret"
    short.write_text("too short\n")
    with pytest.raises(roomd.ConfigError, match="short.secret must be at least 32 bytes"):
        roomd.auth.jwt(io, secret_file=str(short))
    with pytest.raises(roomd.ConfigError, match="cannot read the JWT secret file .*missing"):
        roomd.auth.jwt(io, secret_file=str(tmp_path / "missing"))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(roomd.ConfigError, match="junk.pem does not hold a PEM public key"):
        roomd.auth.jwt(io, public_key_file=str(junk))
    with pytest.raises(roomd.ConfigError, match="not a usable JWKS file"):
        roomd.auth.jwt(io, jwks_file=str(junk))
    weak = tmp_path / "weak.jwks"
    weak.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "w", "alg": "HS256",
                                          "k": _b64(b"short")}]}))
    with pytest.raises(roomd.ConfigError, match="key 'w' must be at least 32 bytes"):
        roomd.auth.jwt(io, jwks_file=str(weak))
    with pytest.raises(roomd.ConfigError, match="exactly one key"):
        roomd.auth.jwt(io, secret=SECRET, secret_file=str(short))
    with pytest.raises(roomd.ConfigError, match="does not fit the key"):
        roomd.auth.jwt(io, secret=SECRET, algorithm="RS256")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(roomd.ConfigError, match="at least 2048 bits"):
        roomd.auth.jwt(io, public_key=small.public_key())


async def test_verification_happens_once_per_connection(start_server, node, monkeypatch):
    """Events never re-verify the token (the cost is per connection; docs/performance.md)."""
    v = verifier()
    calls = []
    original = v.verify

    def counting(tok):
        calls.append(tok)
        return original(tok)

    monkeypatch.setattr(v, "verify", counting)
    srv = await relay(start_server, verifiers={"main": v})
    s = await node.connect(srv.url, "/chat", transports=WS,
                           auth={"token": token(rooms=["room-*"], publish=["room-*"])})
    for i in range(20):
        await s.emit_with_ack("join", f"room-{i}")
        await s.emit_with_ack("publish", f"room-{i}", "x", i)
    await trio.sleep(0)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# Per-socket rate limits
# ---------------------------------------------------------------------------------------------

async def test_rate_limit_refuses_then_disconnects(start_server, node, py_client):
    # One token per 1000 s: after the burst of 3, every event is over the limit, however slow
    # the machine. Two refusals are tolerated; the next one disconnects.
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/", rate_limit=0.001, rate_burst=3, rate_disconnect=2)])
    srv = await start_server(io)
    flood = await node.connect(srv.url, transports=WS)
    other = await node.connect(srv.url, transports=WS, force_new=True)
    py = await py_client()
    await py.connect(srv.url, transports=["polling"])
    for _ in range(3):
        assert await flood.emit_with_ack("join", "lobby") == [
            {"rooms": sorted([flood.sid, "lobby"])}]
    assert await flood.emit_with_ack("join", "x") == [{"error": "rate limit exceeded"}]
    assert await flood.emit_with_ack("publish", "lobby", "e") == [{"error": "rate limit exceeded"}]
    assert "x" not in {r["room"] for r in await io.rooms_snapshot("/")}
    await flood.emit("join", "y")  # the third refusal: disconnected
    assert (await flood.next_event("disconnect", timeout=10)).args == ["io server disconnect"]
    # the others were not affected: each has its own bucket
    for _ in range(3):
        assert await other.emit_with_ack("join", "lobby") == [
            {"rooms": sorted([other.sid, "lobby"])}]
        assert await py.call("join", "lobby") == [{"rooms": sorted([py.sid, "lobby"])}]
    assert await other.emit_with_ack("join", "lobby") == [{"error": "rate limit exceeded"}]
    assert py.connected and await other.is_connected()
    stats = io.stats()
    assert stats["rate_limited_events"] == 4
    assert stats["rate_limit_disconnects"] == 1
    from prometheus_client import generate_latest

    from roomd.ops.metrics import build_registry

    exported = generate_latest(build_registry(io)[0]).decode()
    assert "roomd_rate_limited_events_total 4.0" in exported
    assert "roomd_rate_limit_disconnects_total 1.0" in exported
    assert "roomd_auth_refused_total 0.0" in exported


async def test_rate_limit_without_disconnect_and_refill(start_server, mock_clock):
    """Virtual time: the bucket refills at the configured rate; rate_disconnect 0 never
    disconnects. The clock stands still while the test talks to the server and jumps only
    when everything has been idle for a while (the sleep below)."""
    mock_clock.autojump_threshold = 0.1
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/", rate_limit=2, rate_burst=2, rate_disconnect=0)])
    srv = await start_server(io)
    # a python-socketio client would run on the wall clock; the raw protocol is used instead
    from harness import open_raw_ws

    async with open_raw_ws(srv.port) as ws:
        await ws.handshake()
        await ws.send("40")
        assert (await ws.recv_skip_pings()).startswith("40")
        results = []
        for i in range(6):
            await ws.send(f'42{i}["join","r"]')
            reply = await ws.recv_skip_pings()
            results.append("error" not in reply)
        assert results == [True, True, False, False, False, False]
        await trio.sleep(1.0)  # two tokens back
        for i in range(3):
            await ws.send(f'42{10 + i}["join","r"]')
            results.append("error" not in await ws.recv_skip_pings())
        assert results[6:] == [True, True, False]
    assert io.stats()["rate_limited_events"] == 5
    assert "rate_limit_disconnects" not in io.stats()


# ---------------------------------------------------------------------------------------------
# Origin checks on WebSocket upgrades
# ---------------------------------------------------------------------------------------------

async def test_websocket_from_a_disallowed_origin_is_refused(start_server, node, py_client):
    io = roomd.Server(cors_origins=["https://app.example"])
    RelayApp(io, [NamespaceConfig(name="/")])
    srv = await start_server(io)
    with pytest.raises(ConnectError):
        await node.connect(srv.url, transports=WS, extraHeaders={"Origin": "https://evil.example"},
                           timeout=5)
    p = await py_client()
    with pytest.raises(ConnectError):
        await p.connect(srv.url, transports=WS, headers={"Origin": "https://evil.example"})
    ok = await node.connect(srv.url, transports=WS, extraHeaders={"Origin": "https://app.example"})
    assert await ok.emit_with_ack("join", "r") == [{"rooms": sorted([ok.sid, "r"])}]
    # not a browser (no Origin at all): not a cross-site request, let in
    bare = await node.connect(srv.url, transports=WS, force_new=True)
    assert bare.sid
    assert len(io.sockets.sockets) == 2


async def test_token_within_the_leeway_connects_then_expires(start_server, node):
    """Accepted because of the leeway (exp already past on roomd's clock), the socket is
    still disconnected when exp + leeway comes."""
    srv = await relay(start_server, verifiers={"main": verifier(leeway=5)})
    exp = int(time.time()) - 3  # exp + leeway is 1 to 2 s away
    s = await node.connect(srv.url, "/chat", transports=WS,
                           auth={"token": token(ttl=None, extra={"exp": exp})})
    assert (await s.next_event("token_expired", timeout=10)).args == [
        {"message": "token expired"}]
    assert (await s.next_event("disconnect", timeout=10)).args == ["io server disconnect"]


async def test_expiry_while_still_connecting(start_server, node):
    """The token expires after it was verified but before the socket is connected (a slow
    middleware after the JWT one): the socket is disconnected once connected."""
    io = roomd.Server()
    io.use(roomd.auth.jwt(io, secret=SECRET, audience="roomd", leeway=0))
    passed = trio.Event()

    async def slow(socket):
        # until the token's exp is behind us (wall clock), however long that takes
        while time.time() < socket.data["auth"].exp + 0.2:
            await trio.sleep(0.1)
        passed.set()

    io.use(slow)
    srv = await start_server(io)
    s = await node.connect(srv.url, transports=WS, auth={"token": token(ttl=1)})
    assert passed.is_set()
    assert (await s.next_event("token_expired", timeout=10)).args == [
        {"message": "token expired"}]
    assert (await s.next_event("disconnect", timeout=10)).args == ["io server disconnect"]


async def test_expiry_watch_forgets_sockets_that_left(start_server, node, monkeypatch):
    """Sockets that disconnect long before their token's exp do not pile up in the watch."""
    from roomd.apps import jwtauth

    monkeypatch.setattr(jwtauth, "COMPACT_MIN", 4)
    io = roomd.Server()
    auth = roomd.auth.jwt(io, secret=SECRET, audience="roomd")
    io.use(auth)
    srv = await start_server(io)
    for _ in range(30):
        s = await node.connect(srv.url, transports=WS, force_new=True,
                               auth={"token": token(ttl=86400)})
        await s.disconnect()
        with trio.fail_after(10):
            while io.sockets.sockets:
                await trio.sleep(0.01)
    assert len(auth._heap) <= 5
    # and the watch still works for those that stay
    keep = await node.connect(srv.url, transports=WS, force_new=True,
                              auth={"token": token(ttl=1)})
    assert (await keep.next_event("token_expired", timeout=10)).args == [
        {"message": "token expired"}]


async def test_a_removed_namespace_admits_no_one(start_server, node):
    io = roomd.Server()
    relay_app = RelayApp(io, [NamespaceConfig(name="/"),
                              NamespaceConfig(name="/chat", auth="main")],
                         {"main": verifier()})
    srv = await start_server(io)
    s = await node.connect(srv.url, "/chat", transports=WS, auth={"token": token(rooms=["*"])})
    assert await relay_app.update([NamespaceConfig(name="/")], {}) == ([], ["/chat"])
    assert (await s.next_event("disconnect")).args == ["io server disconnect"]
    assert await node_refusal(node, srv.url, "/chat", {"token": token()}) == "Invalid namespace"
    # a namespace naming a verifier that is not given: refused before anything changes
    with pytest.raises(roomd.ConfigError, match="no auth named 'other'"):
        await relay_app.update([NamespaceConfig(name="/"),
                                NamespaceConfig(name="/chat", auth="other")], {})
    assert not relay_app.serves("/chat")
