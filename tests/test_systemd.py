"""systemd integration, played by the test: a notify socket, LISTEN_FDS, the journal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import trio

from roomd._errors import ConfigError
from roomd.ops import systemd as _systemd


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def messages(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return out


def test_notify_without_socket_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert _systemd.notify_ready("x") is False
    assert _systemd.notify_stopping() is False
    assert _systemd.notify_watchdog() is False


def test_notify_messages(notify_socket):
    assert _systemd.notify_ready("listening on 127.0.0.1:3000")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:3000"
    assert _systemd.notify_status("5 connections\nand more")
    assert notify_socket.recv(4096) == b"STATUS=5 connections and more"
    assert _systemd.notify_stopping("draining")
    assert notify_socket.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    assert _systemd.notify_watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert _systemd.notify_reloading()
    lines = notify_socket.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")


def test_notify_abstract_socket(monkeypatch):
    name = f"roomd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert _systemd.notify_ready()
        assert sock.recv(4096) == b"READY=1"


def test_notify_failure_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-here.sock"))
    assert _systemd.notify_ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert _systemd.notify_ready() is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert _systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert _systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert _systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert _systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert _systemd.watchdog_interval() is None


async def test_run_watchdog_pings_at_half_the_interval(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    async with trio.open_nursery() as nursery:
        interval = await nursery.start(_systemd.run_watchdog)
        assert interval == 0.2
        await trio.sleep(0.55)
        nursery.cancel_scope.cancel()
    pings = messages(notify_socket)
    assert set(pings) == {"WATCHDOG=1"}
    assert 4 <= len(pings) <= 7  # one at start, then every 0.1 s


async def test_run_watchdog_without_watchdog_returns(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(_systemd.run_watchdog) is None


def test_listen_fds_absent(monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert _systemd.listen_fds() == []
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))  # meant for another process
    assert _systemd.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ  # consumed


def test_listen_fds_takes_the_passed_socket():
    """A child gets our bound listener at fd 3 with LISTEN_PID/LISTEN_FDS, as systemd does it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = textwrap.dedent(
        f"""
        import os, sys
        os.dup2({listener.fileno()}, 3)
        os.close({listener.fileno()})
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        from roomd.ops.systemd import listen_fds
        socks = listen_fds()
        assert "LISTEN_FDS" not in os.environ
        assert len(socks) == 1
        s = socks[0]
        assert s.fileno() == 3 and not os.get_inheritable(3)
        print(s.family.name, s.type.name, s.getsockname()[1])
        conn, _ = s.accept()
        conn.sendall(b"hello from the activated socket")
        conn.close()
        """
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    child = subprocess.Popen(
        [sys.executable, "-c", code], pass_fds=[listener.fileno()], stdout=subprocess.PIPE,
        text=True, env=env,
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.settimeout(10)
            assert client.recv(100) == b"hello from the activated socket"
        out, _ = child.communicate(timeout=10)
    finally:
        listener.close()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0
    assert out.split() == ["AF_INET", "SOCK_STREAM", str(port)]


def test_listen_fds_rejects_a_non_socket():
    code = textwrap.dedent(
        """
        import os
        r, w = os.pipe()
        os.dup2(r, 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        from roomd.ops.systemd import listen_fds
        from roomd._errors import ConfigError
        try:
            listen_fds()
        except ConfigError as e:
            print(e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=10
    ).stdout
    assert "descriptor 3 is not a socket" in out


def test_journal_stream(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not _systemd.journal_stream_connected()
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert _systemd.journal_stream_connected()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not _systemd.journal_stream_connected()
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not _systemd.journal_stream_connected()


def _log_in_child(env_extra: dict[str, str], journal: bool) -> str:
    code = textwrap.dedent(
        f"""
        import os, sys
        if {journal!r}:
            st = os.fstat(2)
            os.environ["JOURNAL_STREAM"] = f"{{st.st_dev}}:{{st.st_ino}}"
        from roomd.ops.systemd import setup_logging
        log = setup_logging("info")
        setup_logging("info")  # again: still one handler
        log.debug("hidden")
        log.info("hello")
        log.getChild("admin").error("bad")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd(), **env_extra)
    env.pop("JOURNAL_STREAM", None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=10
    ).stderr


def test_setup_logging_with_timestamps():
    lines = _log_in_child({}, journal=False).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO roomd: hello") and lines[0][:4].isdigit()
    assert lines[1].endswith("ERROR roomd.admin: bad")


def test_setup_logging_for_the_journal():
    lines = _log_in_child({}, journal=True).splitlines()
    assert lines == ["<6>roomd: hello", "<3>roomd.admin: bad"]


def test_setup_logging_bad_level():
    with pytest.raises(ConfigError, match="log.level"):
        _systemd.setup_logging("loud")
