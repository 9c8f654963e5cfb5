"""roomd serving https and wss itself (issue 10), with certificates made by trustme.

Both stock clients verify the test CA on both transports; a plain-HTTP request to the TLS
port gets a clean 400; a client certificate is required when a client CA is configured;
the real daemon reloads its certificate on SIGHUP for new connections while the open ones
go on.
"""

from __future__ import annotations

import functools
import signal
import ssl
import textwrap

import pytest
import trio
import trustme
from daemon_proc import running_daemon, short_dir, wait_for_log
from harness import ConnectError, PyClient, build_request, raw_http

import roomd
from roomd.transport.tls import server_context

HOST = "127.0.0.1"


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return ca, str(ca_file), str(cert_file), str(key_file)


def echo_app() -> roomd.Server:
    io = roomd.Server()

    @io.on("echo")
    async def echo(socket, *args):
        await socket.emit("echoed", *args)
        return list(args)

    @io.on("secure")
    async def secure(socket):
        return socket.handshake.secure

    return io


async def serve_tls(nursery, io, context) -> int:
    return await nursery.start(functools.partial(io.serve, ssl_context=context), HOST, 0)


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_stock_clients_over_tls(nursery, node, py_client, pki, transport):
    ca, ca_file, cert_file, key_file = pki
    io = echo_app()
    port = await serve_tls(nursery, io, server_context(cert_file, key_file))
    url = f"https://{HOST}:{port}"
    ca_pem = ca.cert_pem.bytes().decode()

    s = await node.connect(url, transports=[transport], ca=ca_pem)
    assert s.transport == transport
    assert await s.emit_with_ack("echo", "hi", b"\x00\xff" * 100_000) == [
        ["hi", b"\x00\xff" * 100_000]]
    assert (await s.next_event("echoed")).args == ["hi", b"\x00\xff" * 100_000]
    assert await s.emit_with_ack("secure") == [True]
    p = await py_client(ssl_ca=ca_file)
    await p.connect(url, transports=[transport])
    assert await p.call("echo", 1, {"a": [2]}) == [[1, {"a": [2]}]]
    # polling then upgraded to wss
    u = await node.connect(url, ca=ca_pem, force_new=True)
    assert await u.wait_upgrade() == "websocket"
    assert await u.emit_with_ack("echo", "after upgrade") == [["after upgrade"]]
    # a client that does not trust the CA is refused by its own verification
    with pytest.raises(ConnectError):
        await node.connect(url, transports=[transport], force_new=True, timeout=5)
    assert len(io.sockets.sockets) == 3


async def test_plain_http_to_the_tls_port(nursery, pki):
    _, _, cert_file, key_file = pki
    port = await serve_tls(nursery, echo_app(), server_context(cert_file, key_file))
    status, headers, body = await raw_http(
        port, build_request("GET", "/socket.io/?EIO=4&transport=polling"))
    assert status == 400
    assert body == b"this port speaks TLS: use https or wss\n"
    assert headers["connection"] == "close"
    # garbage that is neither HTTP nor TLS: closed, and the server goes on serving
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(b"\x01\x02\x03\x04" * 100)
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass
    status, _, _ = await raw_http(port, build_request("GET", "/"))
    assert status == 400


async def tls_get(port: int, context: ssl.SSLContext) -> bytes:
    """One HTTPS request for an Engine.IO handshake over a raw trio SSLStream."""
    with trio.fail_after(5):
        tcp = await trio.open_tcp_stream(HOST, port)
        stream = trio.SSLStream(tcp, context, server_hostname=HOST)
        async with stream:
            await stream.send_all(build_request("GET", "/socket.io/?EIO=4&transport=polling"))
            data = b""
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    return data


async def test_client_certificates_required_with_a_client_ca(nursery, pki, tmp_path):
    ca, ca_file, cert_file, key_file = pki
    client_ca = trustme.CA()
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    port = await serve_tls(nursery, echo_app(),
                           server_context(cert_file, key_file, str(client_ca_file)))
    anonymous = ssl.create_default_context(cafile=ca_file)
    try:  # TLS 1.3: the refusal may come after the client's handshake is done
        answer = await tls_get(port, anonymous)
    except trio.BrokenResourceError:
        answer = b""
    assert answer == b""
    with_cert = ssl.create_default_context(cafile=ca_file)
    client_ca.issue_cert("client@example").configure_cert(with_cert)
    assert b'"sid"' in await tls_get(port, with_cert)


async def test_client_ca_is_the_only_one_trusted_for_clients(nursery, pki, tmp_path,
                                                             monkeypatch):
    """A client certificate from a CA the system trusts (here: the CA that OpenSSL's default
    verify paths point to, through SSL_CERT_FILE) is refused: only tls_client_ca counts."""
    _, ca_file, cert_file, key_file = pki
    client_ca, public_ca = trustme.CA(), trustme.CA()
    client_ca_file, public_ca_file = tmp_path / "client-ca.pem", tmp_path / "public-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    public_ca.cert_pem.write_to_path(str(public_ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(public_ca_file))
    port = await serve_tls(nursery, echo_app(),
                           server_context(cert_file, key_file, str(client_ca_file)))
    outsider = ssl.create_default_context(cafile=ca_file)
    public_ca.issue_cert("someone@example").configure_cert(outsider)
    try:
        answer = await tls_get(port, outsider)
    except trio.BrokenResourceError:
        answer = b""
    assert answer == b""


def test_unusable_certificate_files_are_config_errors(pki, tmp_path):
    _, ca_file, cert_file, key_file = pki
    with pytest.raises(roomd.ConfigError, match="cannot load the TLS certificate and key"):
        server_context(str(tmp_path / "missing.pem"), key_file)
    with pytest.raises(roomd.ConfigError, match="cannot load the TLS certificate and key"):
        server_context(cert_file, ca_file)  # a certificate where the key should be
    with pytest.raises(roomd.ConfigError, match="cannot load the TLS client CA"):
        server_context(cert_file, key_file, str(tmp_path / "nope.pem"))


@pytest.mark.deadline(90)
async def test_sighup_reloads_the_certificate_for_new_connections(node, pki):
    ca1, ca1_file, _, _ = pki
    with short_dir() as d:
        ca2 = trustme.CA()
        ca2_file = d / "ca2.pem"
        ca2.cert_pem.write_to_path(str(ca2_file))

        def install(ca: trustme.CA) -> None:
            cert = ca.issue_cert(HOST)
            cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))

        install(ca1)
        config = textwrap.dedent(f"""
            [server]
            tls_certfile = "{d / 'server.pem'}"
        """)
        async with running_daemon(d, config) as daemon:
            url = f"https://{HOST}:{daemon.port}"
            old = await node.connect(url, transports=["websocket"],
                                     ca=ca1.cert_pem.bytes().decode())
            async with PyClient(ssl_ca=ca1_file) as old_py:
                await old_py.connect(url, transports=["polling"])
                install(ca2)
                daemon.proc.send_signal(signal.SIGHUP)
                await wait_for_log(daemon.log_path, "TLS certificate reloaded", daemon.proc)
                # new connections get the new certificate
                new = await node.connect(url, transports=["websocket"], force_new=True,
                                         ca=ca2.cert_pem.bytes().decode())
                with pytest.raises(ConnectError):
                    await node.connect(url, transports=["websocket"], force_new=True,
                                       ca=ca1.cert_pem.bytes().decode(), timeout=5)
                # the open ones were not dropped (polling makes new TCP connections, each
                # verified anew, so it is checked with the new CA afterwards only)
                for s in (old, new):
                    assert await s.emit_with_ack("join", "r") == [
                        {"rooms": sorted([s.sid, "r"])}]
            async with PyClient(ssl_ca=str(ca2_file)) as new_py:
                await new_py.connect(url, transports=["polling"])
                assert await new_py.call("join", "r") == [{"rooms": sorted([new_py.sid, "r"])}]
            # a broken certificate on reload: the running one stays
            (d / "server.pem").write_text("garbage")
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for_log(daemon.log_path, "keeping the running configuration: "
                               "cannot load the TLS certificate", daemon.proc)
            again = await node.connect(url, transports=["polling"], force_new=True,
                                       ca=ca2.cert_pem.bytes().decode())
            assert again.sid


async def test_unusable_certificate_stops_the_daemon_with_a_clear_message(pki):
    from daemon_proc import roomd

    _, ca_file, cert_file, _ = pki
    with short_dir() as d:
        config = d / "roomd.toml"
        config.write_text(f'[server]\ntls_certfile = "{cert_file}"\n')  # no key anywhere
        r = await roomd("config", "check", str(config))
        assert r.returncode == 1
        assert "cannot load the TLS certificate and key" in r.stderr
        r = await roomd("serve", "--config", str(config), "--port", "0",
                        "--socket", str(d / "admin.sock"))
        assert r.returncode == 78, str(r)
        assert "cannot load the TLS certificate and key" in r.stderr
        assert "Traceback" not in r.stderr


async def test_tls_handshakes_count_as_half_open(nursery, pki):
    """A connection in its TLS handshake is half-open: over the cap, new connections wait
    their turn (their handshake does not start); handshakes that fail or finish give their
    place back."""
    _, ca_file, cert_file, key_file = pki
    io = roomd.Server(max_half_open=2, exempt_addresses=())
    port = await serve_tls(nursery, io, server_context(cert_file, key_file))
    admission = io.engine.admission
    idle = [await trio.open_tcp_stream(HOST, port) for _ in range(2)]
    for stream in idle:  # the start of a TLS record, and nothing more
        await stream.send_all(b"\x16\x03\x01")
    got: list[bytes] = []
    try:
        with trio.fail_after(10):
            while admission.half_open < 2:
                await trio.sleep(0.01)

        async def third() -> None:
            got.append(await tls_get(port, ssl.create_default_context(cafile=ca_file)))

        async with trio.open_nursery() as waiting:
            waiting.start_soon(third)
            with trio.fail_after(10):
                while io.engine.turns.waiting < 1:
                    await trio.sleep(0.01)
            assert got == [] and admission.half_open == 2
            for stream in idle:  # the idle ones go: the third's handshake is served
                await stream.aclose()
    finally:
        for stream in idle:
            await stream.aclose()
    assert b'"sid"' in got[0]
    with trio.fail_after(10):
        while admission.half_open:
            await trio.sleep(0.01)
    assert b'"sid"' in await tls_get(port, ssl.create_default_context(cafile=ca_file))
    with trio.fail_after(10):
        while admission.half_open:
            await trio.sleep(0.01)
