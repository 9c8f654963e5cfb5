"""The roomd CLI without a real daemon: config check, argument errors, no daemon, and the
admin commands' output against the admin socket served with a fake backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
from children import stop
from click.testing import CliRunner
from test_admin import FakeBackend, running

from roomd_cli import cli

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict | None = None, input: str | None = None):
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def test_config_check_good(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text('[server]\nport = 4000\n[[namespaces]]\nname = "/orders"\n')
    result = run("config", "check", str(path))
    assert result.exit_code == 0, result.output
    assert "port = 4000" in result.output
    assert 'name = "/orders"' in result.output
    assert f"read from {path}" in result.output


def test_config_check_unknown_key(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text("[server]\nprot = 4000\n")
    result = run("config", "check", str(path))
    assert result.exit_code == 1
    assert result.output == f"roomd: unknown key 'server.prot' in {path}\n"


def test_config_check_wrong_type(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text('[server]\nport = "3000"\n')
    result = run("config", "check", str(path))
    assert result.exit_code == 1
    assert result.output == "roomd: server.port must be an integer, got string\n"


def test_config_check_bad_toml_and_missing_file(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text("[server\n")
    result = run("config", "check", str(path))
    assert result.exit_code == 1 and str(path) in result.output and "line 1" in result.output
    result = run("config", "check", str(tmp_path / "missing.toml"))
    assert result.exit_code == 1 and result.output.startswith("roomd: cannot read config file")


def test_config_check_unknown_group(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text('[admin]\ngroup = "no-such-group-here"\n')
    result = run("config", "check", str(path))
    assert result.exit_code == 1
    assert result.output == "roomd: admin.group: no such group 'no-such-group-here'\n"


def test_serve_bad_config_exits_78(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text("[limits]\nslow_consumer = 1\n")
    result = run("serve", "--config", str(path))
    assert result.exit_code == 78
    assert result.output == "roomd: limits.slow_consumer must be a string, got integer\n"


def test_emit_bad_json_arg_is_a_usage_error(tmp_path):
    result = run("--socket", str(tmp_path / "x.sock"), "emit", "/orders", "created", '{"id": 1}',
                 "hello")
    assert result.exit_code == 2
    assert "JSON-ARG" in result.output and "'hello' is not valid JSON" in result.output


@pytest.mark.parametrize("arg", ["NaN", "Infinity", "-Infinity", "1e999", '[1, NaN]',
                                 '{"a": -1e400}', "1" * 5000])
def test_emit_non_json_numbers_are_a_usage_error(tmp_path, arg):
    """Python's json reads these, but they are not JSON: refused before anything is sent."""
    result = run("--socket", str(tmp_path / "x.sock"), "emit", "/orders", "created", "--", arg)
    assert result.exit_code == 2, result.output
    assert "JSON-ARG" in result.output and "is not valid JSON" in result.output
    assert "no roomd daemon" not in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["namespaces", "list"],
        ["rooms", "list", "/orders", "--members"],
        ["sockets", "list", "--room", "r"],
        ["tail", "/orders"],
        ["emit", "/", "ev", "1"],
        ["disconnect", "abc"],
    ],
)
def test_no_daemon_answering(tmp_path, command):
    path = str(tmp_path / "nobody.sock")
    expected = f"roomd: no roomd daemon answering on {path}\n"
    # --socket on the command, on the group, and ROOMD_SOCKET.
    for args, env in (
        ([*command, "--socket", path], None),
        (["--socket", path, *command], None),
        (command, {"ROOMD_SOCKET": path}),
    ):
        result = run(*args, env=env)
        assert result.exit_code == 1, args
        assert result.output == expected


def test_no_daemon_uses_the_config_socket(tmp_path):
    sock = str(tmp_path / "from-config.sock")
    config = tmp_path / "roomd.toml"
    config.write_text(f'[admin]\nsocket = "{sock}"\n')
    result = run("status", env={"ROOMD_CONFIG": str(config), "ROOMD_SOCKET": None})
    assert result.exit_code == 1
    assert result.output == f"roomd: no roomd daemon answering on {sock}\n"


def test_unit_file():
    result = run("unit-file")
    assert result.exit_code == 0
    assert result.output == (ROOT / "dist" / "roomd.service").read_text()
    assert "Type=notify" in result.output
    assert "ExecStart=/usr/local/bin/roomd serve" in result.output
    result = run("unit-file", "--exec-path", "/opt/roomd/bin/roomd")
    assert "ExecStart=/opt/roomd/bin/roomd serve --config" in result.output


@pytest.mark.parametrize("unit", ["roomd.service", "roomd@.service", "roomd.socket"])
def test_shipped_unit_files_are_identical(unit):
    shipped = (ROOT / "dist" / unit).read_text()
    assert shipped == (ROOT / "roomd" / "ops" / unit).read_text()
    result = run("unit-file", unit)
    assert (result.exit_code, result.output) == (0, shipped)


def test_unit_file_unknown_unit():
    result = run("unit-file", "nosuch.service")
    assert result.exit_code == 2 and "nosuch.service" in result.output


async def cli_in_thread(*args: str):
    return await trio.to_thread.run_sync(lambda: run(*args))


async def test_admin_commands_output(tmp_path):
    path = str(tmp_path / "roomd.sock")
    backend = FakeBackend()
    async with running(backend, path):
        result = await cli_in_thread("--socket", path, "status")
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == "version:     0.1.0"
        assert "listen:      127.0.0.1:3000" in lines
        assert "events:      7 total, 0.5/s" in lines

        result = await cli_in_thread("--socket", path, "namespaces", "list")
        assert result.output.splitlines() == [
            "NAMESPACE  SOCKETS  ROOMS",
            "/          1        1",
            "/boom      0        0",
            "/orders    2        2",
        ]

        result = await cli_in_thread("--socket", path, "rooms", "list", "orders", "--members")
        assert result.output.splitlines() == [
            "NAMESPACE  ROOM  MEMBERS  SOCKETS",
            "/orders    eu    2        b1,b2",
            "/orders    us    1        b1",
        ]
        result = await cli_in_thread("rooms", "list", "--all", "--json", "--socket", path)
        rooms = json.loads(result.output)
        assert {"namespace": "/", "room": "a1", "count": 1, "private": True} in rooms

        result = await cli_in_thread("--socket", path, "sockets", "list", "/orders", "--room", "eu")
        header, *rows = result.output.splitlines()
        assert header.split() == ["ID", "NAMESPACE", "TRANSPORT", "ADDRESS", "CONNECTED", "ROOMS"]
        assert [r.split()[0] for r in rows] == ["b1", "b2"]
        assert rows[0].endswith("eu,us")

        result = await cli_in_thread("--socket", path, "emit", "/orders", "created",
                                     '{"id": 1}', '"x"', "--room", "eu", "--except", "us")
        assert result.exit_code == 0 and result.output == "delivered to 2 sockets\n"
        assert backend.emitted == [("/orders", "created", [{"id": 1}, "x"], ["eu"], ["us"])]

        result = await cli_in_thread("--socket", path, "emit", "/nope", "e", "--json")
        assert result.exit_code == 1 and result.output == "roomd: no namespace /nope\n"

        result = await cli_in_thread("--socket", path, "disconnect", "b1")
        assert result.exit_code == 0 and result.output == "disconnected b1\n"
        # socket ids are base64url: one may start with "-"; so may a JSON number
        for sid in ("-9Qx", "-St5s2xTm8FSEh4LwUP0", "--x"):  # -h inside: not --help
            backend.sockets[sid] = dict(backend.sockets["a1"], id=sid)
            result = await cli_in_thread("disconnect", sid, "--socket", path, "--json")
            assert (result.exit_code, json.loads(result.output)) == (
                0, {"disconnected": True, "id": sid}), result.output
        backend.sockets["-h"] = dict(backend.sockets["a1"], id="-h")
        result = await cli_in_thread("--socket", path, "disconnect", "--", "-h")
        assert (result.exit_code, result.output) == (0, "disconnected -h\n")
        result = await cli_in_thread("disconnect", "--help")
        assert result.exit_code == 0 and result.output.startswith("Usage: ")
        result = await cli_in_thread("--socket", path, "emit", "/orders", "n", "-1", "-2.5e3",
                                     "--room=eu", "--except", "-us")
        assert result.exit_code == 0, result.output
        assert backend.emitted[-1] == ("/orders", "n", [-1, -2500.0], ["eu"], ["-us"])
        result = await cli_in_thread("--socket", path, "emit", "/orders", "n", "--rom", "eu")
        assert result.exit_code == 2 and "'--rom' is not valid JSON" in result.output
        result = await cli_in_thread("--socket", path, "disconnect", "b1")
        assert result.exit_code == 1 and result.output == "roomd: no socket with id 'b1'\n"


async def test_tail_output_and_daemon_going_away(tmp_path):
    path = str(tmp_path / "roomd.sock")
    backend = FakeBackend()
    results = []
    async with trio.open_nursery() as outer:
        async with running(backend, path) as nursery:
            async def tail():
                results.append(await cli_in_thread("--socket", path, "tail", "orders",
                                                   "--event", "created"))

            outer.start_soon(tail)
            while not backend.taps:
                await trio.sleep(0.01)
            backend.publish(namespace="/orders", rooms=["eu"], event="created", args=[{"id": 1}],
                            recipients=3)
            backend.publish(namespace="/orders", rooms=["eu"], event="deleted", args=[])
            backend.publish(namespace="/orders", rooms=[], except_=[], event="created", args=[],
                            recipients=0)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    (result,) = results
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].split(" ", 1)[1] == '/orders eu created {"id":1} -> 3'
    assert lines[1].split(" ", 1)[1] == "/orders * created  -> 0"
    assert lines[2] == "roomd: daemon went away"


async def test_tail_ctrl_c_exits_quietly(tmp_path):
    """The real executable, interrupted like a terminal's Ctrl-C: status 0, nothing on stderr."""
    import signal
    import subprocess
    import sys

    # As from a terminal, even when the tests run with SIGINT ignored (a background job).
    CHILD = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "import roomd_cli; roomd_cli.main()")
    path = str(tmp_path / "roomd.sock")
    backend = FakeBackend()
    async with running(backend, path):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, "--socket", path, "tail"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        try:
            with trio.fail_after(10):
                while not backend.taps:
                    await trio.sleep(0.01)
                backend.publish(namespace="/x", event="hello", args=["world"])
                out = await proc.stdout.receive_some(4096)
                assert b'/x * hello "world" -> 1' in out
                proc.send_signal(signal.SIGINT)
                assert await proc.wait() == 0
                assert await proc.stderr.receive_some(4096) == b""
        finally:
            await stop(proc, signal.SIGKILL)


def test_hash_password():
    import bcrypt

    result = run("hash-password", "--rounds", "4", input="s3cret\n")
    assert result.exit_code == 0, result.output
    hashed = result.output.strip()
    assert bcrypt.checkpw(b"s3cret", hashed.encode())
    assert run("hash-password", input="\n").exit_code != 0
    too_long = run("hash-password", input="x" * 73 + "\n")
    assert too_long.exit_code != 0 and "72 bytes" in too_long.output
