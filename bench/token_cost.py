"""The cost of verifying one connection's token, per algorithm, and of the rate limit's
per-event check (docs/performance.md).

    .venv/bin/python -m bench.token_cost [--number N]

Each figure is the best of 5 repetitions of N calls of ``TokenVerifier.verify`` (signature,
exp/nbf/iss/aud and the rights claims), on a token like the ones a backend issues. roomd
verifies once per connection (and once per ``refresh``), never per event. The rate limit
figure is one ``TokenBucket.check`` (an event let through), awaited in a trio loop.
"""

from __future__ import annotations

import argparse
import time
import timeit

import trio
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from roomd.apps.ratelimit import Limits, TokenBucket
from roomd.apps.tokens import TokenVerifier, mint

SECRET = b"0123456789abcdef0123456789abcdef-bench"
CLAIMS = dict(sub="user-12345", rooms=["chat-*", "lobby"], publish=["chat-12345"],
              join=["lobby"], ttl=3600, issuer="backend", audience="roomd")


def cases() -> list[tuple[str, TokenVerifier, str]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    out = [("HS256", TokenVerifier(secret=SECRET, issuer="backend", audience="roomd"),
            mint(SECRET, **CLAIMS))]
    for name, key in (("RS256 (2048)", rsa_key), ("ES256", ec_key), ("EdDSA", ed_key)):
        verifier = TokenVerifier(public_key=key.public_key(), issuer="backend",
                                 audience="roomd")
        out.append((name, verifier, mint(key, **CLAIMS)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000)
    number = parser.parse_args().number
    print(f"{'algorithm':<14}{'µs per verify':>14}")
    for name, verifier, token in cases():
        verifier.verify(token)  # warm up, and fail loudly if the token is not valid
        best = min(timeit.repeat(lambda v=verifier, t=token: v.verify(t), number=number,
                                 repeat=5))
        print(f"{name:<14}{best / number * 1e6:>14.1f}")
    print(f"rate limit check per event: {trio.run(_bucket_cost, number * 50) * 1e6:.2f} µs")


class _Socket:  # what TokenBucket needs of a socket to let an event through: nothing
    pass


async def _bucket_cost(number: int) -> float:
    limits = Limits(1e12, 1_000_000_000, 0)
    bucket = TokenBucket(_Socket(), lambda: limits, {})  # type: ignore[arg-type]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            await bucket.check("event", [])
        best = min(best, time.perf_counter() - start)
    return best / number


if __name__ == "__main__":
    main()
