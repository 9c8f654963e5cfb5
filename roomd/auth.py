"""Token authentication for roomd apps: ``nsp.use(roomd.auth.jwt(io, ...))``.

The same verification the relay app does for ``auth = "NAME"`` namespaces,
for apps written with the Python API::

    import roomd
    import roomd.auth

    io = roomd.Server()
    orders = io.of("/orders")
    orders.use(roomd.auth.jwt(io, secret_file="/etc/roomd/jwt.secret", audience="roomd"))

    @orders.on("connection")
    async def on_connection(socket):
        grant = socket.data["auth"]          # a roomd.auth.Grant
        await socket.join(list(grant.join))  # socket.data["sub"] is the token's subject

Clients connect with ``auth: {token}``; a bad token is refused with a short
CONNECT_ERROR message ("token expired", "invalid signature", ...). The socket
answers ``refresh`` (a new token; acked ``{"exp": N}``) and is disconnected
after a ``token_expired`` event when its token runs out. See
docs/security.md, ``roomd.apps.tokens`` (keys, verification, grants) and
``roomd.apps.jwtauth`` (the middleware), where all of it lives.
"""

from __future__ import annotations

from .apps.jwtauth import JWTAuth, jwt
from .apps.tokens import (
    ALGORITHMS,
    Grant,
    TokenVerifier,
    load_jwks,
    load_private_key,
    load_public_key,
    load_secret,
    mint,
)

__all__ = ["ALGORITHMS", "Grant", "JWTAuth", "TokenVerifier", "jwt", "load_jwks",
           "load_private_key", "load_public_key", "load_secret", "mint"]
