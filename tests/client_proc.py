"""Child processes for the ``roomd client`` tests: the command itself, and a Node.js server.

- :func:`client_running` starts ``roomd client ARGS`` with its stdout read line by line
  (a :class:`children.LineReader`: ``await c.line()``, ``await c.line_with("ack join")``,
  ``await c.wait_exit()``); it is stopped by its PID at the end.
- :func:`node_server` starts ``node tests/node/sio_server.js [--tls CERT KEY]`` (the
  socket.io npm server, with relay-like join/publish events; see the script's header),
  reads its ``{"port": N}`` line and yields its base URL; stdin is closed and the process
  stopped by its PID at the end.
- :func:`tls_files` makes a test CA and a certificate for 127.0.0.1 with trustme.
- :func:`tls_proxy` terminates TLS on 127.0.0.1:0 (trio's SSLStream, a trustme
  certificate) and forwards the bytes to a plain TCP port: roomd behind TLS.

Every wait is bounded.
"""

from __future__ import annotations

import functools
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
import trustme
from children import LineReader, reading
from daemon_proc import ROOMD

NODE_DIR = Path(__file__).resolve().parent / "node"


@asynccontextmanager
async def client_running(*args: str) -> AsyncIterator[LineReader]:
    """``roomd client ARGS`` as a child process."""
    async with reading([ROOMD, "client", *args], f"roomd client {' '.join(args)}",
                       stdin=subprocess.DEVNULL) as reader:
        yield reader


@dataclass
class NodeServer:
    url: str
    reader: LineReader


@asynccontextmanager
async def node_server(tls: tuple[Path, Path] | None = None) -> AsyncIterator[NodeServer]:
    """``node sio_server.js [--tls CERT KEY]``; yields its base URL (http or https)."""
    argv = ["node", str(NODE_DIR / "sio_server.js")]
    if tls is not None:
        argv += ["--tls", str(tls[0]), str(tls[1])]
    async with reading(argv, "sio_server.js", stdin=subprocess.PIPE, cwd=str(NODE_DIR)) as reader:
        port = json.loads(await reader.line(timeout=30))["port"]
        scheme = "https" if tls is not None else "http"
        try:
            yield NodeServer(f"{scheme}://127.0.0.1:{port}", reader)
        finally:
            with trio.CancelScope(shield=True):
                await reader.proc.stdin.aclose()


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """(CA cert, server cert chain, server key) PEM files; the server cert is for 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca_path, cert_path, key_path


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await sink.aclose()


@asynccontextmanager
async def tls_proxy(upstream_port: int, cert: trustme.LeafCert) -> AsyncIterator[int]:
    """TLS on 127.0.0.1:<port yielded> in front of 127.0.0.1:``upstream_port``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handler(stream: trio.SSLStream) -> None:
        try:
            await stream.do_handshake()
            upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
        except (trio.BrokenResourceError, OSError):
            return  # a client that did not trust us, or no upstream
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, stream, upstream)
            nursery.start_soon(_pipe, upstream, stream)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_ssl_over_tcp, handler, 0, context,
                                  host="127.0.0.1", https_compatible=True)
        listeners = await nursery.start(serve)
        try:
            yield listeners[0].transport_listener.socket.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()
