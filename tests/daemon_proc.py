"""Drive the real ``roomd`` executable in subprocesses: the daemon, the CLI commands, ``tail``.

- :func:`short_dir` makes a short directory under /tmp (unix socket paths must stay under
  108 bytes, which pytest's tmp_path does not promise) and removes it afterwards.
- :func:`roomd` runs one CLI command to completion (bounded) and returns a :class:`CliResult`.
- :func:`running_daemon` starts ``roomd serve --port 0 --socket PATH`` (plus a config file when
  given), waits for its "listening on HOST:PORT" and admin-socket log lines, and stops it on
  exit with SIGTERM (SIGKILL after 5 s), by its PID.
- :class:`Tail` runs ``roomd tail ...`` and reads its stdout lines with bounded waits;
  :meth:`Tail.sync` makes sure its event tap is open before the test emits anything.

Only processes started here are signalled, each by its PID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from children import LineReader, reading, stop

ROOMD = str(Path(sys.executable).with_name("roomd"))
LISTENING_RE = re.compile(r"listening on (\S+):(\d+)")
PROBE = "__tail_probe__"


@contextmanager
def short_dir(prefix: str = "roomd-e2e-") -> Iterator[Path]:
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # what an assertion message shows
        return (f"roomd {' '.join(self.args)} -> {self.returncode}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}")

    def json(self):
        assert self.returncode == 0, str(self)
        return json.loads(self.stdout)


async def roomd(*args: str, timeout: float = 15, env: dict | None = None,
                command: Sequence[str] = (ROOMD,), cwd: str | None = None) -> CliResult:
    """Run ``roomd ARGS`` (``command`` replaces the executable) and return its outcome."""
    with trio.fail_after(timeout):  # run_process kills the child when cancelled
        done = await trio.run_process([*command, *args], capture_stdout=True,
                                      capture_stderr=True, check=False, env=env, cwd=cwd,
                                      stdin=subprocess.DEVNULL)
    return CliResult(list(args), done.returncode, done.stdout.decode(), done.stderr.decode())


async def admin_request(path: str, cmd: str, timeout: float = 5, **args) -> dict:
    """One request over the admin socket's line-JSON protocol (no CLI start-up cost)."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError(f"admin socket {path} closed without answering")
                buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


@dataclass
class Daemon:
    proc: trio.Process
    socket: str
    log_path: Path
    host: str
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def cli(self, *args: str, **kw) -> CliResult:
        """``roomd --socket SOCKET ARGS``."""
        return await roomd("--socket", self.socket, *args, **kw)

    async def admin(self, cmd: str, **args) -> dict:
        return await admin_request(self.socket, cmd, **args)


async def wait_for_log(log_path: Path, pattern: str | re.Pattern, proc: trio.Process,
                       timeout: float = 10) -> re.Match:
    """Poll the log file until ``pattern`` appears; fail early if the process exits."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    with trio.fail_after(timeout):
        while True:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            match = regex.search(text)
            if match:
                return match
            if proc.poll() is not None:
                raise AssertionError(f"roomd exited with {proc.returncode} before "
                                     f"{regex.pattern!r}:\n{text}")
            await trio.sleep(0.02)


@asynccontextmanager
async def running_daemon(directory: Path, config: str | None = None, *,
                         args: Sequence[str] = (), env: dict | None = None,
                         command: Sequence[str] | None = None, admin_socket: bool = True,
                         log_name: str = "roomd.log", **popen) -> AsyncIterator[Daemon]:
    """``roomd serve --port 0 --socket DIR/admin.sock [--config DIR/roomd.toml] ARGS``.

    ``command`` replaces the ``[ROOMD]`` prefix (a wrapper that execs roomd); extra keyword
    arguments go to trio.open_process (``pass_fds``...). stderr (the log) goes to
    DIR/``log_name``. ``admin_socket=False`` leaves out ``--socket``: the daemon picks its
    default admin socket, read back from its log.
    """
    sock = str(directory / "admin.sock")
    argv = [*(command or [ROOMD]), "serve"] + (["--socket", sock] if admin_socket else [])
    if "--port" not in args:
        argv += ["--port", "0"]
    if config is not None:
        (directory / "roomd.toml").write_text(config)
        argv += ["--config", str(directory / "roomd.toml")]
    argv += list(args)
    log_path = directory / log_name
    full_env = dict(os.environ, **(env or {}))
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                 "JOURNAL_STREAM", "ROOMD_CONFIG", "ROOMD_SOCKET", "ROOMD_INSTANCE",
                 "RUNTIME_DIRECTORY"):
        if env is None or name not in env:
            full_env.pop(name, None)
    with open(log_path, "wb") as log_file:
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL,
                                                stdout=log_file, stderr=log_file,
                                                env=full_env, **popen)
    try:
        match = await wait_for_log(log_path, LISTENING_RE, proc)
        admin = await wait_for_log(log_path, r"admin socket listening on (\S+)", proc)
        yield Daemon(proc, admin.group(1), log_path, match.group(1), int(match.group(2)))
    finally:
        await stop(proc)
        # shown by pytest when the test fails
        log_text = log_path.read_text(errors="replace")
        print(f"--- roomd serve log (exit status {proc.returncode}):\n{log_text}")


class Tail(LineReader):
    """``roomd tail ARGS`` as a child process, its stdout read line by line; the probe lines
    of :meth:`sync` are in :attr:`lines` but never returned by :meth:`line`."""

    async def line(self, timeout: float = 5) -> str:
        """The next stdout line that is not a probe."""
        return await self.line_where(lambda text: PROBE not in text, timeout)

    async def no_line(self, wait: float = 0.3) -> None:
        with trio.move_on_after(wait):
            while True:
                extra = [t for t in self.untaken if PROBE not in t]
                assert not extra, f"{self.what} printed {extra}"
                if self.eof:
                    return
                await self.changed()

    async def sync(self, socket: str, namespace: str = "/", room: str | None = None,
                   event: str | None = None, timeout: float = 10) -> None:
        """Emit probe events that match this tail's filters but reach no socket, until one
        is printed: from then on the tail's event tap is open."""
        rooms = [room] if room else [PROBE]
        with trio.fail_after(timeout):
            while True:
                answer = await admin_request(socket, "emit", namespace=namespace,
                                             event=event or PROBE, args=[PROBE], rooms=rooms,
                                             **{"except": rooms})
                assert answer == {"ok": True, "recipients": 0}, answer
                with trio.move_on_after(0.25):
                    while not any(PROBE in t for t in self.lines):
                        if self.eof:
                            raise AssertionError(f"roomd tail ended: {self.stderr!r}")
                        await self.changed()
                    return


@asynccontextmanager
async def tailing(socket: str, *args: str) -> AsyncIterator[Tail]:
    """``async with tailing(sock, "/orders", "--room", "eu") as t:`` — stopped by PID on exit."""
    async with reading([ROOMD, "tail", *args, "--socket", socket], f"roomd tail {list(args)}",
                       reader=Tail, stdin=subprocess.DEVNULL) as tail:
        assert isinstance(tail, Tail)
        yield tail
