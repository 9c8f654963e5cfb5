"""Child processes of the tests: read line by line, and ended by their PID.

- :func:`stop` signals one child (SIGTERM by default) and waits for it, bounded; SIGKILL
  when it does not exit. Only processes the tests started are signalled, each by its PID.
- :func:`read_lines` calls a function with each line of a child's output until it ends.
- :class:`LineReader` collects a child's stdout lines and stderr bytes as they come
  (``await r.line()``, ``await r.line_with("ack join")``, ``await r.wait_exit()``);
  :func:`reading` starts a child with such a reader and stops it at the end.

Every wait is bounded.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

READ_SIZE = 65536


async def stop(proc: trio.Process, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
    """Signal our child by PID and wait (bounded) for it; SIGKILL if it does not exit."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.send_signal(sig)
            with trio.move_on_after(timeout):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()
    return proc.returncode


async def read_lines(stream: trio.abc.ReceiveStream, on_line: Callable[[bytes], None]) -> None:
    """``on_line(line)`` for each line of ``stream`` (without its newline) until it ends."""
    buf = b""
    while True:
        chunk = await stream.receive_some(READ_SIZE)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            on_line(line)


class LineReader:
    """A child process whose stdout lines (and stderr bytes) are collected as they come."""

    def __init__(self, proc: trio.Process, what: str) -> None:
        self.proc = proc
        self.what = what
        self.lines: list[str] = []  # every stdout line, taken or not
        self.stderr = b""
        self.eof = False  # stdout ended
        self.stderr_eof = False
        self._taken = 0
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Wait until a line or stderr bytes come, or the output ends."""
        await self._changed.wait()

    def _on_line(self, line: bytes) -> None:
        self.lines.append(line.decode(errors="replace"))
        self._wake()

    async def _read_stdout(self) -> None:
        await read_lines(self.proc.stdout, self._on_line)
        self.eof = True
        self._wake()

    async def _read_stderr(self) -> None:
        while chunk := await self.proc.stderr.receive_some(READ_SIZE):
            self.stderr += chunk
            self._wake()
        self.stderr_eof = True
        self._wake()

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._read_stdout)
        nursery.start_soon(self._read_stderr)

    def describe(self) -> str:
        stderr = self.stderr.decode(errors="replace")
        return f"{self.what}: stdout {self.lines!r}, stderr {stderr!r}, exit {self.proc.returncode}"

    @property
    def untaken(self) -> list[str]:
        """The stdout lines that no :meth:`line` took yet."""
        return self.lines[self._taken:]

    async def line(self, timeout: float = 10) -> str:
        """The next stdout line not taken yet."""
        return await self._next_line(timeout)

    async def _next_line(self, timeout: float) -> str:
        with trio.fail_after(timeout):
            while self._taken >= len(self.lines):
                if self.eof:
                    raise AssertionError(f"no more lines: {self.describe()}")
                await self.changed()
        self._taken += 1
        return self.lines[self._taken - 1]

    async def line_where(self, match: Callable[[str], bool], timeout: float = 10) -> str:
        """The next stdout line that ``match`` accepts (lines before it are taken too)."""
        with trio.fail_after(timeout):
            while True:
                line = await self._next_line(timeout)
                if match(line):
                    return line

    async def line_with(self, text: str, timeout: float = 10) -> str:
        """The next stdout line containing ``text`` (lines before it are taken too)."""
        return await self.line_where(lambda line: text in line, timeout)

    async def stderr_with(self, text: str, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while text.encode() not in self.stderr:
                if self.eof and self.proc.returncode is not None:
                    raise AssertionError(f"{text!r} never came: {self.describe()}")
                await self.changed()

    async def wait_exit(self, timeout: float = 15) -> int:
        """The exit status, once the child exited and all its output was read."""
        with trio.fail_after(timeout):
            code = await self.proc.wait()
            while not (self.eof and self.stderr_eof):
                await self.changed()
        return code


@asynccontextmanager
async def reading(argv: Sequence[str], what: str, reader: type[LineReader] = LineReader,
                  **popen) -> AsyncIterator[LineReader]:
    """Start ``argv`` with its stdout and stderr read by ``reader``; stopped by its PID at
    the end, and what it printed shown (by pytest, when the test fails)."""
    proc = await trio.lowlevel.open_process(list(argv), stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, **popen)
    lines = reader(proc, what)
    try:
        async with trio.open_nursery() as nursery:
            lines.start(nursery)
            try:
                yield lines
            finally:
                await stop(proc)
    finally:
        await stop(proc)
        print(f"--- {lines.describe()}")
