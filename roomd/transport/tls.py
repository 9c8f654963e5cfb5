"""TLS: roomd serving https and wss itself, without a proxy in front.

:func:`server_context` builds the SSLContext from PEM files (TLS 1.2 or
newer, the ``ssl`` module's server defaults otherwise; with a client CA,
every client must present a certificate it signed). Loading a file that is
missing or does not hold what it should raises :class:`~roomd.ConfigError`
naming the file.

:func:`start_tls` wraps one accepted TCP stream in a ``trio.SSLStream``
(``http.handle_connection`` calls it after its admission checks, and then
serves the TLS stream like a plain one). The handshake is bounded by
:data:`HANDSHAKE_TIMEOUT`. A client that speaks plain HTTP to the TLS port
(its first byte is an ASCII letter, never a TLS record) gets a plain
``400`` saying so instead of a bare reset; any other failed handshake just
closes that connection. Above the TLS layer nothing changes except that the
WebSocket outbox and read loop go through the stream instead of the socket
descriptor (see ``outbox.WebSocketOutbox``).
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio

from .._errors import ConfigError
from .tcp import TCPStream

logger = logging.getLogger("roomd.tls")

# Long enough for a slow mobile link, short enough that idle half-open
# connections do not pile up before they have cost a handshake.
HANDSHAKE_TIMEOUT = 10.0
# The close_notify is a courtesy: never wait long for it.
CLOSE_TIMEOUT = 1.0
# The first byte of every TLS record that may open a connection (handshake).
_TLS_HANDSHAKE_RECORD = 0x16
_PLAIN_HTTP_BODY = b"this port speaks TLS: use https or wss\n"
_PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY))


def server_context(certfile: str, keyfile: str | None = None,
                   client_ca: str | None = None) -> ssl.SSLContext:
    """An SSLContext serving ``certfile`` (PEM chain) with ``keyfile``.

    ``keyfile`` None means the key is in ``certfile``. With ``client_ca``
    (PEM), clients must present a certificate signed by it, and by nothing
    else: the server-side default context trusts no system CA. Raises
    ConfigError naming the file that could not be used.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = certfile if keyfile is None else f"{certfile} / {keyfile}"
        raise ConfigError(f"cannot load the TLS certificate and key ({files}): "
                          f"{_reason(exc)}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS client CA {client_ca}: "
                              f"{_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        if "PEM" in str(exc):
            return "not PEM, or not the right kind of PEM block"
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            return "the private key does not match the certificate"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(getattr(exc, "reason", None) or exc)


async def _looks_like_plain_http(stream: TCPStream) -> bool:
    """Peek at the first byte: a letter is an HTTP method, not a TLS record."""
    while True:
        try:
            first = stream.socket.recv(1, socket.MSG_PEEK)
            break
        except BlockingIOError:
            pass
        except OSError:
            return False
        await trio.lowlevel.wait_readable(stream.fd)
    return bool(first) and first[0] != _TLS_HANDSHAKE_RECORD and first[:1].isalpha()


async def start_tls(stream: TCPStream, context: ssl.SSLContext,
                    address: str) -> trio.SSLStream[TCPStream] | None:
    """The TLS stream over ``stream`` once its handshake is done; None when it failed.

    A client that sent plain HTTP gets the 400 first. Nothing a peer does
    raises; cancellation propagates.
    """
    tls = trio.SSLStream(stream, context, server_side=True)
    with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
        if await _looks_like_plain_http(stream):
            logger.info("%s: plain HTTP on the TLS port", address)
            try:
                await stream.send_all(_PLAIN_HTTP_ANSWER)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            return None
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("%s: TLS handshake failed: %s", address, exc.__cause__ or exc)
            return None
        except Exception:
            # Nothing a peer sends may take the server down.
            logger.exception("%s: TLS handshake failed", address)
            return None
    if scope.cancelled_caught:
        logger.info("%s: TLS handshake timed out", address)
        return None
    return tls


async def close_tls(tls: trio.SSLStream[TCPStream]) -> None:
    """Send close_notify when it can go at once; never wait long for it."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await tls.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
    # The accept loop closes the TCP stream when the handler returns.
