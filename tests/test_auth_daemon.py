"""Tokens, rate limits and their configuration through the real ``roomd`` executable.

``roomd token`` mints from the configured key, the daemon verifies per ``[[namespaces]]``
``auth``, ``roomd status`` counts refusals, ``roomd config check`` names unusable keys, and
a SIGHUP rotates the key.
"""

from __future__ import annotations

import signal
import textwrap

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_proc import roomd, running_daemon, short_dir, wait_for_log
from harness import ConnectError

import roomd as roomd_pkg
from roomd.ops.config import AuthConfig, NamespaceConfig, load_config

WS = ["websocket"]
SECRET = "a-long-enough-shared-secret-for-hs256-0123456789"


def write_config(d, secret=SECRET, extra=""):
    (d / "jwt.secret").write_text(secret + "\n")
    return textwrap.dedent(f"""
        [auth.backend]
        secret_file = "{d / 'jwt.secret'}"
        audience = "roomd"
        issuer = "shop"
        leeway = 0

        [[namespaces]]
        name = "/"

        [[namespaces]]
        name = "/orders"
        auth = "backend"
        rooms = ["order-*"]
        client_publish = false
        rate_limit = 0.001
        rate_burst = 4
        rate_disconnect = 1
    """) + extra


async def test_token_cli_and_daemon(node, py_client):
    with short_dir() as d:
        config = write_config(d)
        async with running_daemon(d, config) as daemon:
            cfg = str(d / "roomd.toml")
            minted = await roomd("token", "--config", cfg, "--sub", "u1", "--room", "order-1*",
                                 "--join", "order-1", "--ttl", "600")
            assert minted.returncode == 0, str(minted)
            tok = minted.stdout.strip()
            claims = pyjwt.decode(tok, SECRET, algorithms=["HS256"], audience="roomd",
                                  issuer="shop")
            assert claims["sub"] == "u1" and claims["rooms"] == ["order-1*"]
            assert claims["join"] == ["order-1"] and claims["exp"] - claims["iat"] == 600

            url = daemon.url
            s = await node.connect(url, "/orders", transports=WS, auth={"token": tok})
            assert await s.emit_with_ack("join", "order-12") == [
                {"rooms": sorted([s.sid, "order-1", "order-12"])}]
            assert await s.emit_with_ack("join", "order-2") == [
                {"error": "your token does not allow you to join room 'order-2'"}]
            # a token from another key, and none at all
            forged = roomd_pkg.auth.mint("x" * 40, sub="u1", audience="roomd", issuer="shop")
            with pytest.raises(ConnectError, match="invalid signature"):
                await node.connect(url, "/orders", transports=WS, auth={"token": forged})
            p = await py_client()
            with pytest.raises(ConnectError):
                await p.connect(url, ["/orders"], transports=WS)
            assert (await p.next_event("connect_error")).args == [{"message": "token required"}]
            # the namespace without auth is open
            await node.connect(url, "/", transports=WS, force_new=True)

            # over the rate limit: 2 events were accepted above, 2 more, then refused twice
            assert await s.emit_with_ack("leave", "order-12") == [
                {"rooms": sorted([s.sid, "order-1"])}]
            assert await s.emit_with_ack("publish", "order-1", "x") == [
                {"error": "publishing is not allowed in /orders"}]
            assert await s.emit_with_ack("join", "order-10") == [
                {"error": "rate limit exceeded"}]
            await s.emit("join", "order-11")
            await s.next_event("disconnect", timeout=10)

            status = (await daemon.cli("status", "--json")).json()
            assert status["auth_refused"] == 2
            assert status["rate_limited_events"] == 2 and status["rate_limit_disconnects"] == 1
            table = await daemon.cli("status")
            assert "tokens:      2 refused, 0 expired" in table.stdout
            assert "rate limits: 2 events refused, 1 sockets disconnected" in table.stdout

            # SIGHUP with a new secret: old tokens are refused, new ones accepted
            (d / "jwt.secret").write_text(SECRET[::-1] + "\n")
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for_log(daemon.log_path, "configuration reloaded", daemon.proc)
            with pytest.raises(ConnectError, match="invalid signature"):
                await node.connect(url, "/orders", transports=WS, auth={"token": tok})
            fresh = (await roomd("token", "--config", cfg, "--room", "order-*")).stdout.strip()
            s2 = await node.connect(url, "/orders", transports=WS, auth={"token": fresh})
            assert s2.sid
            # a key file that became unusable: the reload is refused, the running key kept
            (d / "jwt.secret").write_text("short\n")
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for_log(daemon.log_path, "keeping the running configuration: "
                               "auth.backend: the JWT secret in .* must be at least 32 bytes",
                               daemon.proc)
            s3 = await node.connect(url, "/orders", transports=WS, force_new=True,
                                    auth={"token": fresh})
            assert s3.sid


async def test_token_cli_errors_and_key_files(tmp_path):
    with short_dir() as d:
        cfg = d / "roomd.toml"
        cfg.write_text(write_config(d))
        key = ec.generate_private_key(ec.SECP256R1())
        (d / "ec.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (d / "ec.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        r = await roomd("token", "--key-file", str(d / "ec.pem"), "--sub", "svc", "--ttl", "0")
        assert r.returncode == 0, str(r)
        claims = pyjwt.decode(r.stdout.strip(), key.public_key(), algorithms=["ES256"])
        assert claims["sub"] == "svc" and "exp" not in claims
        r = await roomd("token", "--secret-file", str(d / "missing"))
        assert r.returncode == 1 and "cannot read the JWT secret file" in r.stderr
        r = await roomd("token", "--config", str(cfg), "--auth", "nope")
        assert r.returncode == 1 and "no [auth.nope] table" in r.stderr
        r = await roomd("token", env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 1 and "no key" in r.stderr
        # a public-key table cannot sign
        cfg2 = d / "pub.toml"
        cfg2.write_text(f'[auth.svc]\npublic_key_file = "{d / "ec.pub"}"\n')
        r = await roomd("token", "--config", str(cfg2))
        assert r.returncode == 1 and "give --key-file" in r.stderr
        # config check loads the key files
        assert (await roomd("config", "check", str(cfg2))).returncode == 0
        (d / "ec.pub").write_text("not a key")
        r = await roomd("config", "check", str(cfg2))
        assert r.returncode == 1 and "auth.svc:" in r.stderr and "PEM public key" in r.stderr


def test_config_keys(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text(textwrap.dedent("""
        [server]
        tls_certfile = "cert.pem"
        tls_keyfile = "key.pem"

        [auth.web]
        jwks_file = "/etc/roomd/keys.jwks"
        issuer = "https://id.example"
        audience = "roomd"
        leeway = 2
        require_exp = true

        [[namespaces]]
        name = "/chat"
        auth = "web"
        rate_limit = 10
        rate_burst = 20
        rate_disconnect = 5
    """))
    config = load_config(str(path))
    assert config.server.tls_certfile.endswith("/cert.pem")
    assert config.auth == (AuthConfig(name="web", jwks_file="/etc/roomd/keys.jwks",
                                      issuer="https://id.example", audience="roomd",
                                      leeway=2.0, require_exp=True),)
    assert config.namespaces == (NamespaceConfig(name="/chat", auth="web", rate_limit=10.0,
                                                 rate_burst=20, rate_disconnect=5),)
    # printed back and read again: the same
    from roomd.ops.config import config_to_toml
    again = tmp_path / "again.toml"
    again.write_text(config_to_toml(config))
    assert load_config(str(again)) == config


BAD = [
    ('[[namespaces]]\nname = "/"\nauth = "nope"\n',
     "namespaces[0].auth names no [auth.nope] table"),
    ('[auth.a]\nissuer = "x"\n', "auth.a needs exactly one of secret_file"),
    ('[auth.a]\nsecret_file = "s"\njwks_file = "j"\n', "auth.a needs exactly one of"),
    ('[auth.a]\nsecret_file = "s"\nalgorithm = "RS256"\n', "auth.a.algorithm: HS256 goes with"),
    ('[auth.a]\nsecret_file = "s"\nalgorithm = "none"\n', "auth.a.algorithm must be one of"),
    ('[auth.a]\nsecret_file = "s"\nleeway = -1\n', "auth.a.leeway must be at least 0"),
    ('[auth.a]\nsecret_file = "s"\nsecret = "x"\n', "unknown key 'auth.a.secret'"),
    ('[auth]\na = 1\n', "auth.a must be a table, got integer"),
    ('[server]\ntls_keyfile = "k"\n', "server.tls_keyfile needs server.tls_certfile"),
    ('[server]\ntls_certfile = ""\n', "server.tls_certfile must not be empty"),
    ('[[namespaces]]\nname = "/"\nrate_limit = -1\n',
     "namespaces[0].rate_limit must be at least 0"),
    ('[[namespaces]]\nname = "/"\nrate_burst = 1.5\n',
     "namespaces[0].rate_burst must be an integer"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_config(tmp_path, text, message):
    path = tmp_path / "roomd.toml"
    path.write_text(text)
    with pytest.raises(roomd_pkg.ConfigError) as info:
        load_config(str(path))
    assert message in str(info.value)


async def test_token_cli_refuses_claims_the_server_would_refuse():
    with short_dir() as d:
        (d / "s").write_text(SECRET)
        r = await roomd("token", "--secret-file", str(d / "s"), "--room", "x" * 300)
        assert r.returncode == 1
        assert "rooms: at most 100 room names or patterns of 1 to 256 characters" in r.stderr
