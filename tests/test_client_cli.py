"""``roomd client`` as a subprocess, against the real ``roomd`` daemon and a Node.js
Socket.IO server (tests/node/sio_server.js, the socket.io npm package).

The same scenarios run against both (the ``server`` fixture): join and receive, emit
with ack, binary arguments, a refused token, an unknown namespace, ``--json`` output,
exit codes, both transports. TLS runs against the Node.js server over HTTPS with a test
CA made by trustme. Listeners are synchronized by their printed join ack: once it is on
stdout, the server has the socket in the room.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from client_proc import client_running, node_server, tls_files, tls_proxy
from daemon_proc import roomd, running_daemon, short_dir

pytestmark = pytest.mark.deadline(120)

TESTS = Path(__file__).resolve().parent


@dataclass
class Target:
    kind: str
    url: str  # base URL, no namespace


@pytest.fixture(params=["roomd", "node"])
async def server(request) -> AsyncIterator[Target]:
    if request.param == "roomd":
        with short_dir() as directory:
            args = ("--app", "client_app:io", "--app-dir", str(TESTS))
            async with running_daemon(directory, args=args) as daemon:
                yield Target("roomd", daemon.url)
    else:
        async with node_server() as node:
            yield Target("node", node.url)


async def client(*args: str, timeout: float = 30):
    """Run ``roomd client ARGS`` to completion."""
    return await roomd("client", *args, timeout=timeout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_join_and_receive_json(server, transport):
    async with client_running(server.url + "/", "--join", "lobby", "--json", "--count", "2",
                              "--timeout", "60", "--transport", transport) as listener:
        joined = json.loads(await listener.line_with('"ack":"join"', timeout=30))
        assert joined["namespace"] == "/"
        assert "lobby" in joined["args"][0]["rooms"]
        result = await client(server.url, "--emit", "publish", '"lobby"', '"chat"',
                              '{"text":"hi"}', "42", "--emit", "publish", '["lobby"]', '"bye"',
                              "--ack", "--once", "--json")
        assert result.returncode == 0, result
        acks = json_lines(result.stdout)
        assert [a["ack"] for a in acks] == ["publish", "publish"]
        assert [a["args"] for a in acks] == [[{"recipients": 1}], [{"recipients": 1}]]
        assert await listener.wait_exit(30) == 0, listener.describe()
    events = [json.loads(line) for line in listener.lines if '"event"' in line]
    assert [(e["namespace"], e["event"], e["args"]) for e in events] == [
        ("/", "chat", [{"text": "hi"}, 42]), ("/", "bye", [])]
    assert all(isinstance(e["time"], float) for e in events)


async def test_human_output(server):
    async with client_running(server.url, "--join", "r1", "--count", "1") as listener:
        line = await listener.line_with("ack join", timeout=30)
        assert line.split(" ")[1:4] == ["/", "ack", "join"]
        result = await client(server.url, "--emit", "publish", '"r1"', '"note"', '"a b"',
                              '{"k":[1,null]}', "--ack", "--once")
        assert result.returncode == 0, result
        assert result.stdout.split(" ", 1)[1] == '/ ack publish {"recipients":1}\n'
        assert await listener.wait_exit(30) == 0
    assert listener.lines[-1].split(" ", 1)[1] == '/ note "a b" {"k":[1,null]}'
    assert b"roomd: connected to" in listener.stderr


async def test_binary_arguments(server):
    async with client_running(server.url, "--join", "bin", "--count", "1", "--json") as listener:
        await listener.line_with('"ack":"join"', timeout=30)
        result = await client(server.url, "--emit", "publish", '"bin"', '"blob"',
                              '{"$binary":"AAEC/w=="}', '{"nested":[{"$binary":""}]}', "--ack",
                              "--once")
        assert result.returncode == 0, result
        assert await listener.wait_exit(30) == 0
    event = json.loads(listener.lines[-1])
    assert event["event"] == "blob"
    assert event["args"] == [{"$binary": "AAEC/w=="}, {"nested": [{"$binary": ""}]}]
    # and an ack carrying bytes back
    result = await client(server.url, "--emit", "echo", '{"$binary":"aGk="}', "7", "--ack",
                          "--once", "--json")
    assert result.returncode == 0, result
    assert json_lines(result.stdout)[0]["args"] == [{"$binary": "aGk="}, 7]


async def test_server_asks_for_an_ack(server):
    """An event that wants an ack is shown so; the command sends none (the server times out)."""
    result = await client(server.url, "--emit", "ask_back", "7", "--ack", "--count", "1",
                          "--timeout", "30", "--json")
    assert result.returncode == 0, result
    lines = json_lines(result.stdout)
    question = next(line for line in lines if line.get("event") == "question")
    assert question["args"] == [7] and question["wants_ack"] is True
    assert {"ack": "ask_back", "args": ["no answer"]}.items() <= \
        next(line for line in lines if "ack" in line).items()
    result = await client(server.url, "--emit", "ask_back", "--ack", "--count", "1",
                          "--timeout", "30")
    assert result.returncode == 0, result
    assert " / question (ack requested)\n" in result.stdout


async def test_custom_path():
    with short_dir() as directory:
        async with running_daemon(directory, args=("--path", "/rt/")) as daemon:
            result = await client(daemon.url, "--path", "/rt", "--emit", "join", '"x"', "--ack",
                                  "--once")
            assert result.returncode == 0, result
            result = await client(daemon.url, "--once")  # the default /socket.io/ is not there
            assert result.returncode == 1, result
            assert f"cannot connect to {daemon.url}: HTTP" in result.stderr


async def test_auth_headers_query(server):
    ws_url = server.url.replace("http://", "ws://")
    result = await client(ws_url + "/secure", "--token", "sekret", "--auth", '{"n":1}',
                          "--header", "X-Test: yes", "--query", "q=1", "--emit", "whoami",
                          "--ack", "--once", "--json")
    assert result.returncode == 0, result
    info = json_lines(result.stdout)[0]["args"][0]
    assert info["auth"] == {"n": 1, "token": "sekret"}
    assert info["header"] == "yes"
    assert info["query"]["q"] == "1"
    assert info["query"]["EIO"] == "4"


async def test_refused_token(server):
    result = await client(server.url + "/secure", "--token", "wrong", "--once")
    assert result.returncode == 1, result
    assert 'connect_error: not authorized {"code":401}' in result.stderr
    result = await client(server.url + "/secure", "--once")  # no auth at all
    assert result.returncode == 1, result
    assert "not authorized" in result.stderr
    result = await client(server.url + "/secure", "--token", "sekret", "--once")
    assert result.returncode == 0, result


async def test_unknown_namespace(server):
    for transport in ("websocket", "polling"):
        result = await client(server.url + "/nope", "--transport", transport)
        assert result.returncode == 1, result
        assert "connect_error: Invalid namespace" in result.stderr
        assert result.stdout == ""


async def test_ack_timeout_exit_3(server):
    result = await client(server.url, "--emit", "nobody-answers", "--ack", "--ack-timeout",
                          "0.5", "--once")
    assert result.returncode == 3, result
    assert "no acknowledgement of 'nobody-answers' within 0.5 s" in result.stderr


async def test_count_not_reached_exit_3(server):
    result = await client(server.url, "--count", "1", "--timeout", "0.5")
    assert result.returncode == 3, result
    assert "0 of 1 events within 0.5 s" in result.stderr
    result = await client(server.url, "--timeout", "0.3")  # no --count: a bounded watch
    assert result.returncode == 0, result


async def test_server_disconnect_exit_4(server):
    # the watcher asks to be kicked: its own emit, then the server disconnects it
    result = await client(server.url, "--emit", "kick", "--timeout", "60")
    assert result.returncode == 4, result
    assert "disconnected: io server disconnect" in result.stderr


async def test_ctrl_c_ends_a_watch_with_0(server):
    async with client_running(server.url, "--join", "quiet") as watcher:
        await watcher.line_with("ack join", timeout=30)
        watcher.proc.send_signal(signal.SIGINT)
        assert await watcher.wait_exit(30) == 0, watcher.describe()
    assert b"Traceback" not in watcher.stderr


async def test_join_refused_exit_1():
    with short_dir() as directory:
        config = '[[namespaces]]\nname = "/"\nrooms = ["ok-*"]\n'
        async with running_daemon(directory, config) as daemon:
            result = await client(daemon.url, "--join", "ok-1", "--join", "secret", "--once")
            assert result.returncode == 1, result
            assert "join 'secret' refused: room 'secret' is not allowed in /" in result.stderr
            assert "ack join" in result.stdout


async def test_connection_refused_exit_1():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    result = await client(f"http://127.0.0.1:{port}/", "--once")
    assert result.returncode == 1, result
    assert f"cannot connect to http://127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["ftp://example.com/"], "the scheme must be http, https, ws or wss"),
    (["http://127.0.0.1:1/", "--emit", "ev", "not-json"], "'not-json' is not valid JSON"),
    (["http://127.0.0.1:1/", "--emit", "connect"], "'connect' is a reserved event name"),
    (["http://127.0.0.1:1/", "--auth", "[1]"], "must be a JSON object"),
    (["http://127.0.0.1:1/", "--auth", "{"], "is not valid JSON"),
    (["http://127.0.0.1:1/", "--header", "no-colon"], "is not 'Name: value'"),
    (["http://127.0.0.1:1/", "--query", "novalue"], "is not KEY=VALUE"),
    (["http://127.0.0.1:1/", "--once", "--count", "1"], "--once prints no events"),
    (["http://127.0.0.1:1/", "--count", "0"], "--count"),
    (["http://127.0.0.1:1/", "--timeout", "-1"], "--timeout"),
    (["http://127.0.0.1:1/", "--emit"], "--emit"),
    (["http://127.0.0.1:1/", "--emit", "x", '{"$binary":"!!"}'], "is not valid base64"),
    (["http://127.0.0.1:1/", "--transport", "carrier-pigeon"], "--transport"),
    (["http://127.0.0.1:1/", "--cafile", "/nonexistent.pem"], "--cafile"),
    (["http://127.0.0.1:1/", "--path", "socket.io"], "must start with '/'"),
])
async def test_usage_errors_exit_2(args, message):
    result = await client(*args)
    assert result.returncode == 2, result
    assert message in result.stderr, result
    assert "Traceback" not in result.stderr


async def test_tls_with_test_ca(tmp_path):
    ca, cert, key = tls_files(tmp_path)
    async with node_server(tls=(cert, key)) as node:
        assert node.url.startswith("https://")
        # untrusted: the system CAs do not know the test CA
        result = await client(node.url, "--once")
        assert result.returncode == 1, result
        assert "certificate verify failed" in result.stderr
        for scheme_url in (node.url, node.url.replace("https://", "wss://")):
            for transport in ("websocket", "polling"):
                async with client_running(scheme_url + "/orders", "--cafile", str(ca),
                                          "--join", "tls", "--count", "1", "--json",
                                          "--transport", transport) as watcher:
                    await watcher.line_with('"ack":"join"', timeout=30)
                    result = await client(node.url + "/orders", "--cafile", str(ca), "--emit",
                                          "publish", '"tls"', '"secret"', '{"$binary":"AQ=="}',
                                          "--ack", "--once")
                    assert result.returncode == 0, result
                    assert await watcher.wait_exit(30) == 0, watcher.describe()
                event = json.loads(watcher.lines[-1])
                assert (event["namespace"], event["event"], event["args"]) == (
                    "/orders", "secret", [{"$binary": "AQ=="}])
        result = await client(node.url, "--insecure", "--emit", "echo", "1", "--ack", "--once")
        assert result.returncode == 0, result


async def test_tls_proxy_in_front_of_roomd():
    """roomd behind a TLS-terminating proxy: trusted CA, unknown CA, wrong host name."""
    ca = trustme.CA()
    with short_dir() as directory:
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        cafile = str(directory / "ca.pem")
        async with running_daemon(directory) as daemon, \
                tls_proxy(daemon.port, ca.issue_cert("127.0.0.1")) as port:
            url = f"https://127.0.0.1:{port}"
            for transport in ("websocket", "polling"):
                async with client_running(url + "/", "--cafile", cafile, "--join", "t",
                                          "--count", "1", "--json",
                                          "--transport", transport) as watcher:
                    await watcher.line_with('"ack":"join"', timeout=30)
                    result = await client(url.replace("https", "wss"), "--cafile", cafile,
                                          "--emit", "publish", '"t"', '"through"', "1",
                                          "--ack", "--once")
                    assert result.returncode == 0, result
                    assert await watcher.wait_exit(30) == 0, watcher.describe()
                assert json.loads(watcher.lines[-1])["args"] == [1]
            result = await client(url, "--once", "--transport", "polling")
            assert result.returncode == 1, result
            assert "certificate verify failed" in result.stderr
        async with running_daemon(directory) as daemon, \
                tls_proxy(daemon.port, ca.issue_cert("rooms.example.test")) as port:
            result = await client(f"https://127.0.0.1:{port}/", "--cafile", cafile, "--once")
            assert result.returncode == 1, result
            assert "certificate verify failed: IP address mismatch" in result.stderr
            result = await client(f"https://127.0.0.1:{port}/", "--insecure", "--once")
            assert result.returncode == 0, result
