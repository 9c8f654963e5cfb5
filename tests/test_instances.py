"""Several roomd instances on one host, with the real executable: each gets its own default
admin socket (named by its port, or by --instance), and the CLI finds the only running one
without flags, or says which are running and takes --instance / ROOMD_INSTANCE to choose.

The daemons' default socket directory is ``$XDG_RUNTIME_DIR/roomd`` with XDG_RUNTIME_DIR
pointing into the test's own directory; RUNTIME_DIRECTORY (systemd's) keeps ``roomd.sock``."""

from __future__ import annotations

import json
import os
import re

import pytest
import trio
from daemon_proc import roomd, running_daemon, short_dir

from roomd.ops.admin_proto import default_admin_socket, running_instances


@pytest.fixture
def home():
    with short_dir("roomd-inst-") as path:
        env = {k: v for k, v in os.environ.items()
               if k not in ("ROOMD_SOCKET", "ROOMD_INSTANCE", "ROOMD_CONFIG", "RUNTIME_DIRECTORY")}
        env["XDG_RUNTIME_DIR"] = str(path)
        if running_instances(env):
            pytest.skip("a roomd daemon answers on this host's default admin sockets")
        yield path, env


async def cli(env: dict, *args: str, **more: str):
    return await roomd(*args, env=dict(env, **more))


def test_default_admin_socket_order():
    # systemd gives each unit its own RuntimeDirectory: the name stays roomd.sock there
    both = {"RUNTIME_DIRECTORY": "/run/roomd", "XDG_RUNTIME_DIR": "/run/user/1"}
    assert default_admin_socket("3000", both) == "/run/roomd/roomd.sock"
    several = {"RUNTIME_DIRECTORY": "/run/a:/run/b"}
    assert default_admin_socket("eu1", several) == "/run/a/roomd.sock"
    # elsewhere one socket per instance (by default named by its port)
    assert default_admin_socket("3000", {"XDG_RUNTIME_DIR": "/run/user/1"}) == (
        "/run/user/1/roomd/3000.sock")
    assert default_admin_socket("3001", {}) == f"/tmp/roomd-{os.geteuid()}/3001.sock"


async def test_two_instances_each_their_own_socket(home):
    path, env = home
    async with running_daemon(path, admin_socket=False, env=env, log_name="a.log") as a:
        # the only one running: found without flags
        r = await cli(env, "status", "--json")
        assert r.json()["pid"] == a.pid and r.json()["instance"] == str(a.port), str(r)
        assert a.socket == str(path / "roomd" / f"{a.port}.sock")

        async with running_daemon(path, admin_socket=False, env=env, log_name="b.log") as b:
            assert b.socket == str(path / "roomd" / f"{b.port}.sock")
            # two: a usage error naming both, and how to choose
            r = await cli(env, "status")
            assert r.returncode == 2 and r.stdout == "", str(r)
            assert r.stderr == (
                f"roomd: 2 roomd instances are running: {a.port} ({a.socket}), {b.port} "
                f"({b.socket}); choose one with --instance NAME or --socket PATH\n"
            ) or r.stderr == (
                f"roomd: 2 roomd instances are running: {b.port} ({b.socket}), {a.port} "
                f"({a.socket}); choose one with --instance NAME or --socket PATH\n"), str(r)
            for args, extra in (
                (("--instance", str(a.port), "status", "--json"), {}),
                (("status", "--json", "--instance", str(a.port)), {}),
                (("status", "--json"), {"ROOMD_INSTANCE": str(a.port)}),
                (("status", "--json", "--socket", a.socket), {}),
            ):
                r = await cli(env, *args, **extra)
                assert r.json()["pid"] == a.pid, str(r)
            r = await cli(env, "--instance", str(b.port), "rooms", "list", "--json")
            assert (r.returncode, r.json()) == (0, []), str(r)
            r = await cli(env, "emit", "/", "hello", "--instance", str(b.port))
            assert (r.returncode, r.stdout) == (0, "delivered to 0 sockets\n"), str(r)

            r = await cli(env, "instances", "list", "--json")
            listed = {i["instance"]: (i["socket"], i["pid"], i["listen"]) for i in r.json()}
            assert listed == {str(a.port): (a.socket, a.pid, [f"127.0.0.1:{a.port}"]),
                              str(b.port): (b.socket, b.pid, [f"127.0.0.1:{b.port}"])}, str(r)
            r = await cli(env, "instances", "list")
            assert r.stdout.splitlines()[0].split() == ["INSTANCE", "SOCKET", "PID", "LISTEN"]

            r = await cli(env, "--instance", "nosuch", "status")
            assert r.returncode == 1 and r.stderr.startswith(
                "roomd: no roomd instance 'nosuch' is running (running: "), str(r)
        # b stopped: a is the only one again
        r = await cli(env, "status", "--json")
        assert r.json()["pid"] == a.pid, str(r)
    r = await cli(env, "status")
    assert r.returncode == 1, str(r)
    assert r.stderr.startswith(
        f"roomd: no roomd daemon answering (looked for {path}/roomd/*.sock, "), str(r)
    r = await cli(env, "instances", "list")
    assert (r.returncode, r.stdout) == (0, "no roomd instances running\n"), str(r)


async def test_named_instance_and_a_stale_socket(home):
    path, env = home
    (path / "roomd").mkdir(mode=0o700)
    stale = trio.socket.socket(trio.socket.AF_UNIX)  # a crashed daemon's leftover file
    await stale.bind(str(path / "roomd" / "old.sock"))
    stale.close()
    async with running_daemon(path, admin_socket=False, env=env, args=["--instance", "eu1"]) as d:
        assert d.socket == str(path / "roomd" / "eu1.sock")
        r = await cli(env, "status", "--json")  # the stale file does not count
        assert r.json()["instance"] == "eu1" and r.json()["admin_socket"] == d.socket, str(r)
        r = await cli(env, "status", "--instance", "eu1")
        assert re.search(r"^instance: +eu1$", r.stdout, re.M), str(r)
        r = await cli(env, "--instance", "old", "status")
        assert r.returncode == 1 and "no roomd instance 'old' is running" in r.stderr, str(r)
    bad = await cli(env, "serve", "--instance", "../x", "--port", "0")
    assert bad.returncode == 78 and "admin.instance must be" in bad.stderr, str(bad)


async def test_systemd_runtime_directory_keeps_roomd_sock(home):
    """Under systemd each unit has its own RuntimeDirectory; the socket there is roomd.sock,
    whatever the instance (roomd.service: /run/roomd/roomd.sock)."""
    path, env = home
    run = path / "run"
    run.mkdir()
    async with running_daemon(path, admin_socket=False, args=["--instance", "eu1"],
                              env=dict(env, RUNTIME_DIRECTORY=str(run))) as d:
        assert d.socket == str(run / "roomd.sock")
        r = await cli(env, "--socket", d.socket, "status", "--json")
        assert json.loads(r.stdout)["instance"] == "eu1", str(r)
