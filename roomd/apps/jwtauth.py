"""The JWT namespace middleware: ``nsp.use(roomd.auth.jwt(io, ...))``.

:class:`JWTAuth` verifies each connecting socket's token once, with a
:class:`~roomd.apps.tokens.TokenVerifier` (whose refusals it passes on as the
CONNECT_ERROR), stores the grant in ``socket.data["auth"]``, answers the
``refresh`` event (a fresh token for the same subject; acked with
``{"exp": N}`` or ``{"error": "..."}``), and when the token expires
unrefreshed, emits ``token_expired`` to the socket and disconnects it. One
task per middleware watches every socket's expiry. :func:`jwt` makes one from
a key.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

import jwt as pyjwt
import trio

from .._errors import ConfigError, ConnectRefused
from .tokens import DEFAULT_LEEWAY, Grant, PublicKey, TokenVerifier

if TYPE_CHECKING:
    from ..api.server import Server
    from ..api.socket import Socket

logger = logging.getLogger("roomd.auth")

REFRESH_EVENT = "refresh"
# How soon the expiry of a socket that was verified but is not connected yet is
# looked at again: its connection completes (or it is dropped) within moments.
PENDING_RECHECK = 0.2
# Below this many pending expiries the heap is never compacted.
COMPACT_MIN = 1024
EXPIRED_EVENT = "token_expired"


class JWTAuth:
    """Namespace middleware: verify the token of each connecting socket.

    Use as ``nsp.use(roomd.auth.jwt(io, ...))``; ``server`` (``io``) runs the
    expiry watch and keeps the counters ``auth_refused`` and ``auth_expired``
    that ``roomd status`` shows. A valid token leaves its
    :class:`Grant` in ``socket.data["auth"]`` and its subject in
    ``socket.data["sub"]``; an invalid one refuses the connection with a
    short CONNECT_ERROR message. The socket answers the ``refresh`` event
    (one argument, the new token, for the same subject) and is disconnected
    at its token's ``exp`` (plus the leeway) after a ``token_expired``
    event, unless refreshed. ``verifier`` may be replaced at any time (a
    reloaded key); sockets already connected keep their grants.
    """

    def __init__(self, verifier: TokenVerifier, server: Server) -> None:
        self.verifier = verifier
        self._server = server
        # (due, tie-breaker, socket, grant): weak references, so that an entry of a
        # socket gone long before its token's exp holds on to nothing but itself.
        self._heap: list[tuple[float, int, weakref.ref[Socket], weakref.ref[Grant]]] = []
        self._compact_at = COMPACT_MIN
        self._seq = itertools.count()
        self._sleep: trio.CancelScope | None = None
        self._watching = False
        self._gone: weakref.WeakSet[Socket] = weakref.WeakSet()

    async def __call__(self, socket: Socket) -> None:
        auth = socket.handshake.auth
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            grant = self.verifier.verify(token)
        except ConnectRefused as refusal:
            _count(self._server, "auth_refused")
            logger.info("%s: token refused for %s: %s", socket.handshake.address,
                        socket.namespace.name, refusal.message)
            raise
        socket.data["auth"] = grant
        socket.data["sub"] = grant.sub
        socket.on(REFRESH_EVENT, self._refresh_handler(socket))
        socket.on("disconnect", self._disconnect_handler(socket))
        self._watch(socket, grant)

    def _disconnect_handler(self, socket: Socket) -> Any:
        socket_ref = weakref.ref(socket)

        def gone(*_: Any) -> None:
            sock = socket_ref()
            if sock is not None:
                self._gone.add(sock)
        return gone

    def _refresh_handler(self, socket: Socket) -> Any:
        socket_ref = weakref.ref(socket)

        async def refresh(token: Any = None, *_: Any) -> dict:
            sock = socket_ref()
            if sock is None:
                return {"error": "disconnected"}
            try:
                grant = self.verifier.verify(token)
            except ConnectRefused as refusal:
                return {"error": refusal.message}
            old = sock.data.get("auth")
            if isinstance(old, Grant) and old.sub != grant.sub:
                return {"error": "the token is for another subject"}
            sock.data["auth"] = grant
            self._watch(sock, grant)
            return {"exp": grant.exp}
        return refresh

    # -- expiry ---------------------------------------------------------
    def _current(self, socket_ref: weakref.ref[Socket], grant_ref: weakref.ref[Grant]
                 ) -> Socket | None:
        """The entry's socket while the entry still applies, else None.

        Refused sockets are gone (dead weak references); disconnected ones are
        in ``_gone``; a refreshed one holds a newer grant.
        """
        socket = socket_ref()
        grant = grant_ref()
        if socket is None or grant is None or socket in self._gone:
            return None
        return socket if socket.data.get("auth") is grant else None

    def _watch(self, socket: Socket, grant: Grant) -> None:
        if grant.exp is None:
            return
        delay = grant.exp + self.verifier.leeway - time.time()
        due = trio.current_time() + max(0.0, delay)
        heap = self._heap
        if len(heap) >= self._compact_at:
            # Entries of sockets that left long before their exp: drop them in place (the
            # watch task holds this list), at most once per doubling of the live ones.
            heap[:] = [e for e in heap if self._current(e[2], e[3]) is not None]
            heapq.heapify(heap)
            self._compact_at = max(COMPACT_MIN, 2 * len(heap))
        heapq.heappush(heap, (due, next(self._seq), weakref.ref(socket), weakref.ref(grant)))
        if not self._watching:
            self._watching = True
            self._server.start_background_task(self._run)
        elif self._sleep is not None and due < self._sleep.deadline:
            self._sleep.deadline = due

    async def _run(self) -> None:
        heap = self._heap
        try:
            while heap:
                with trio.CancelScope(deadline=heap[0][0]) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)
                    socket = self._current(entry[2], entry[3])
                    if socket is None:
                        continue
                    if not socket.connected:
                        # Verified but not connected yet (a token expiring within the
                        # leeway, other middlewares still running): look again soon.
                        heapq.heappush(heap, (now + PENDING_RECHECK, *entry[1:]))
                        continue
                    await self._expire(socket)
        finally:
            self._watching = False
            self._sleep = None

    async def _expire(self, socket: Socket) -> None:
        logger.info("socket %s: token expired; disconnecting", socket.id)
        _count(self._server, "auth_expired")
        try:
            await socket.emit(EXPIRED_EVENT, {"message": "token expired"})
            await socket.disconnect()
        except Exception:
            logger.exception("socket %s: disconnecting on expiry failed", socket.id)


def _count(server: Server, name: str) -> None:
    server.counters[name] = server.counters.get(name, 0) + 1


def jwt(server: Server, *, secret: bytes | str | None = None, secret_file: str | None = None,
        public_key: PublicKey | None = None, public_key_file: str | None = None,
        jwks: pyjwt.PyJWKSet | dict | None = None, jwks_file: str | None = None,
        algorithm: str | None = None, issuer: str | None = None, audience: str | None = None,
        leeway: float = DEFAULT_LEEWAY, require_exp: bool = False) -> JWTAuth:
    """The JWT middleware for a namespace: ``nsp.use(roomd.auth.jwt(io, secret_file=...))``.

    ``server`` is the Server the namespace belongs to. Give exactly one key:
    ``secret``/``secret_file`` (HS256), ``public_key``/``public_key_file``
    (RS256, ES256 or EdDSA, PEM) or ``jwks``/``jwks_file``. Raises
    ConfigError for a missing or unusable key.
    """
    given = {name: value for name, value in (
        ("secret", secret), ("secret_file", secret_file), ("public_key", public_key),
        ("public_key_file", public_key_file), ("jwks", jwks), ("jwks_file", jwks_file))
        if value is not None}
    if len(given) != 1:
        raise ConfigError("give exactly one key: secret, secret_file, public_key, "
                          "public_key_file, jwks or jwks_file")
    options: dict[str, Any] = dict(algorithm=algorithm, issuer=issuer, audience=audience,
                                   leeway=leeway, require_exp=require_exp)
    if isinstance(jwks, dict):
        try:
            jwks = pyjwt.PyJWKSet.from_dict(jwks)
        except (pyjwt.PyJWKSetError, pyjwt.PyJWKError) as exc:
            raise ConfigError(f"not a usable JWKS: {exc}") from None
    if secret_file is not None or public_key_file is not None or jwks_file is not None:
        verifier = TokenVerifier.from_files(secret_file=secret_file,
                                            public_key_file=public_key_file,
                                            jwks_file=jwks_file, **options)
    else:
        verifier = TokenVerifier(secret=secret, public_key=public_key, jwks=jwks, **options)
    return JWTAuth(verifier, server)


__all__ = ["JWTAuth", "jwt"]
