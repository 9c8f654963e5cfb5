"""The server-side CPU of one TLS handshake, per certificate key type (docs/performance.md).

    .venv/bin/python -m bench.tls_cost [--number N]

Client and server run in memory (``ssl.MemoryBIO``) with roomd's server context
(``roomd.transport.tls.server_context``); only the server's ``do_handshake`` calls are
timed, so the figure is what a connection costs roomd when it terminates TLS itself
(TLS 1.3, a full handshake: no session resumption). Certificates come from trustme.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import trustme

from roomd.transport.tls import server_context


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def handshake_seconds(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> float:
    """Server CPU seconds spent in one full handshake."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    spent = 0.0
    server_done = client_done = False
    while not (server_done and client_done):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        _pump(c_out, s_in)
        if not server_done:
            start = time.process_time()
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.process_time() - start
        _pump(s_out, c_in)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=300)
    number = parser.parse_args().number
    print(f"{'certificate key':<18}{'µs per handshake (median)':>26}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, key_type in (("ECDSA P-256", trustme.KeyType.ECDSA),
                               ("RSA 2048", trustme.KeyType.RSA)):
            ca = trustme.CA(key_type=key_type)
            cert = ca.issue_cert("127.0.0.1", key_type=key_type)
            pem = Path(tmp) / f"{key_type.name}.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
            server_ctx = server_context(str(pem))
            client_ctx = ssl.create_default_context()
            ca.configure_trust(client_ctx)
            samples = [handshake_seconds(server_ctx, client_ctx) for _ in range(number)]
            print(f"{name:<18}{statistics.median(samples) * 1e6:>26.0f}")


if __name__ == "__main__":
    main()
