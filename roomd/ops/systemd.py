"""systemd integration: sd_notify, the watchdog, socket activation, logging.

Every function here is a no-op (or returns "nothing") when the environment
variable it reads is absent, so the daemon calls them unconditionally.

- ``notify(...)`` and the ``notify_*`` helpers send a datagram to
  ``$NOTIFY_SOCKET`` (a path, or an abstract name starting with "@").
  A failure to send is logged at debug level and reported by returning
  False; it never raises, as with sd_notify(3).
- ``watchdog_interval()`` reads ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``);
  ``run_watchdog()`` pings at half that interval until cancelled.
- ``listen_fds()`` takes the sockets passed by socket activation
  (``LISTEN_FDS``/``LISTEN_PID``, descriptors from 3).
- ``setup_logging(level)`` sends the "roomd" logger to stderr, with
  timestamps unless ``JOURNAL_STREAM`` shows the journal reads stderr (then
  with ``<N>`` priority prefixes instead, which journald understands).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

import trio

from .._errors import ConfigError

__all__ = [
    "journal_stream_connected",
    "listen_fds",
    "notify",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "notify_watchdog",
    "run_watchdog",
    "setup_logging",
    "watchdog_interval",
]

logger = logging.getLogger("roomd.systemd")

SD_LISTEN_FDS_START = 3


# ---------------------------------------------------------------------------
# sd_notify
# ---------------------------------------------------------------------------


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` lines to the service manager.

    Returns True when a datagram was sent, False when there is no
    ``$NOTIFY_SOCKET`` or sending failed (logged at debug level; never raises).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not assignments:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        logger.debug("NOTIFY_SOCKET %r is neither a path nor an abstract name", address)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as e:
        logger.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    return True


def _status(text: str) -> str:
    return "STATUS=" + text.replace("\n", " ")


def notify_ready(status: str | None = None) -> bool:
    """READY=1 (and STATUS=): the listener is bound and clients are served."""
    lines = ["READY=1"]
    if status:
        lines.append(_status(status))
    return notify(*lines)


def notify_status(status: str) -> bool:
    """STATUS=...: one line shown by ``systemctl status``."""
    return notify(_status(status))


def notify_stopping(status: str | None = None) -> bool:
    """STOPPING=1: the daemon has begun a graceful shutdown."""
    lines = ["STOPPING=1"]
    if status:
        lines.append(_status(status))
    return notify(*lines)


def notify_reloading(status: str | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC: a SIGHUP reload began; send READY=1 after."""
    lines = ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
    if status:
        lines.append(_status(status))
    return notify(*lines)


def notify_watchdog() -> bool:
    """WATCHDOG=1: the keep-alive ping."""
    return notify("WATCHDOG=1")


# ---------------------------------------------------------------------------
# Watchdog
# ---------------------------------------------------------------------------


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds, or None when no watchdog is wanted.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``WATCHDOG_PID`` is set to a pid other than ours.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000


async def run_watchdog(
        *, task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping the watchdog at half its interval until cancelled.

    Reports the interval (or None) through ``task_status`` after the first
    ping. Without a watchdog it reports None and returns at once.
    Cancellation simply stops the pings.
    """
    interval = watchdog_interval()
    if interval is None:
        task_status.started(None)
        return
    notify_watchdog()
    task_status.started(interval)
    while True:
        await trio.sleep(interval / 2)
        notify_watchdog()


# ---------------------------------------------------------------------------
# Socket activation
# ---------------------------------------------------------------------------


def listen_fds(*, unset_environment: bool = True) -> list[socket.socket]:
    """The sockets passed by socket activation, in order (fds 3, 4, ...).

    Empty when ``LISTEN_FDS`` is unset or ``LISTEN_PID`` is not our pid.
    The descriptors are made close-on-exec; with ``unset_environment`` the
    LISTEN_* variables are removed so children do not inherit them. A
    descriptor that is not a socket raises ConfigError.
    """
    fds = os.environ.get("LISTEN_FDS")
    pid = os.environ.get("LISTEN_PID")
    if unset_environment:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not fds or not pid:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        count = int(fds)
    except ValueError:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(count, 0)):
        os.set_inheritable(fd, False)
        try:
            sockets.append(socket.socket(fileno=fd))
        except OSError as e:
            raise ConfigError(
                f"LISTEN_FDS: descriptor {fd} is not a socket ({e.strerror})") from None
    return sockets


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------


def journal_stream_connected() -> bool:
    """True when stderr is the stream systemd's journal reads (JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    """``<N>message``: sd-daemon(3) priority prefixes, no timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = max((lv for lv in _SYSLOG_PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{_SYSLOG_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class _RoomdHandler(logging.StreamHandler):
    """Marks the handler setup_logging installed, so calling it again replaces it."""


def setup_logging(level: str | int = "info") -> logging.Logger:
    """Send the "roomd" logger to stderr at ``level`` and return it.

    Timestamps are included unless the journal reads stderr. Calling it again
    replaces the handler it installed. An unknown level name raises ConfigError.
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ConfigError("log.level must be one of debug, info, warning, error, critical; "
                              f"got {level!r}")
        level = number
    package_logger = logging.getLogger("roomd")
    for handler in list(package_logger.handlers):
        if isinstance(handler, _RoomdHandler):
            package_logger.removeHandler(handler)
    handler = _RoomdHandler(sys.stderr)
    if journal_stream_connected():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    package_logger.propagate = False
    return package_logger
