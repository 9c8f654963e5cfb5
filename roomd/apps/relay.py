"""The relay app: what ``roomd serve`` runs when no application is given.

Per configured namespace, clients may join and leave rooms themselves and
publish events to rooms, within the room-name patterns the configuration
allows. Every client event of the relay is answered by ack when the client
asked for one; a refusal is always an ``{"error": "..."}`` ack, never silence.

Client events (namespace-level handlers):

``join``    (room | [rooms])            -> {"rooms": [...]} (the socket's rooms after)
``leave``   (room | [rooms])            -> {"rooms": [...]}
``publish`` (room | [rooms], event, *args) -> {"recipients": N}
``refresh`` (token)                      -> {"exp": N} (namespaces with ``auth``)

Another socket's own room (its id) can never be joined: that would let a client
read its private messages. Publishing to it (a direct message) is allowed only
where the namespace's ``publish_to_sockets`` policy says so (default: refused);
then the room-name patterns do not apply to socket ids.

Only the configured namespaces exist: the relay refuses connections to any
other (including "/" when the configuration leaves it out) with the CONNECT_ERROR
"Invalid namespace", as Socket.IO does for a namespace that does not exist.
:meth:`RelayApp.update` applies a new configuration (SIGHUP): a namespace that
is gone refuses new connections and disconnects its sockets.

A socket is in at most ``rooms_per_socket`` rooms besides its own (config
``limits.rooms_per_socket``, default 100), whatever the number of requests:
a join that would exceed it is refused whole. This bounds the work and the
ack size one socket can cause (the join ack lists the socket's rooms).

A namespace with ``auth`` (a :class:`~roomd.apps.tokens.TokenVerifier`)
admits only sockets with a valid token, and a socket's rights are the
intersection of its token's claims and the namespace's policy: it may join
a room when the policy lets clients join, the room matches the policy's
patterns and one of the token's ``rooms`` patterns; it may publish when the
policy lets clients publish, the room matches the policy's patterns (or is a
socket's room where ``publish_to_sockets`` allows it) and one of the token's
``publish`` patterns. The rooms in the token's ``join`` claim that match the
policy's patterns are joined on connect (the policy's ``client_join`` does
not apply: the token's issuer chose them). A namespace with a ``rate_limit``
gives each socket a token bucket (:mod:`roomd.apps.ratelimit`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .._errors import ConfigError, ConnectRefused
from ..api.broadcast import RESERVED_EVENTS
from ..api.namespace import NamespaceFamily
from ..api.server import Server
from ..api.socket import Socket
from .jwtauth import JWTAuth
from .ratelimit import DEFAULT_STRIKES, Limits, TokenBucket, default_burst
from .tokens import Grant, TokenVerifier

logger = logging.getLogger("roomd.relay")

MAX_ROOM_NAME = 256
MAX_ROOMS_PER_REQUEST = 100
ROOMS_PER_SOCKET = 100


class RelayPolicy(Protocol):
    """What the configuration says of one namespace (``[[namespaces]]``); read-only.

    A policy may also have ``auth`` (the name of a verifier, default None),
    ``rate_limit`` (events per second, default 0: none), ``rate_burst``
    (default 0: one second's worth) and ``rate_disconnect`` (default 20), as
    ``roomd.ops.config.NamespaceConfig`` has; they are read with those
    defaults when absent.
    """

    @property
    def name(self) -> str: ...

    @property
    def client_join(self) -> bool: ...

    @property
    def client_leave(self) -> bool: ...

    @property
    def client_publish(self) -> bool: ...

    @property
    def publish_to_sockets(self) -> bool: ...

    @property
    def rooms(self) -> Iterable[str]: ...


def _auth_of(policy: RelayPolicy) -> str | None:
    name = getattr(policy, "auth", None)
    return name if isinstance(name, str) else None


def _limits_of(policy: RelayPolicy) -> Limits:
    rate = float(getattr(policy, "rate_limit", 0.0))
    burst = int(getattr(policy, "rate_burst", 0)) or default_burst(rate)
    return Limits(rate, burst, int(getattr(policy, "rate_disconnect", DEFAULT_STRIKES)))


class _Refused(Exception):
    pass


def _room_list(value: Any) -> list[str]:
    rooms = [value] if isinstance(value, str) else value
    if not isinstance(rooms, list) or not rooms or not all(isinstance(r, str) for r in rooms):
        raise _Refused("rooms must be a room name or a non-empty list of room names")
    if len(rooms) > MAX_ROOMS_PER_REQUEST:
        raise _Refused(f"at most {MAX_ROOMS_PER_REQUEST} rooms per request")
    return rooms


class _RelayNamespace:
    def __init__(self, server: Server, policy: RelayPolicy,
                 verifiers: Mapping[str, TokenVerifier],
                 rooms_per_socket: int = ROOMS_PER_SOCKET) -> None:
        self.server = server
        self.closed = False
        self.rooms_per_socket = rooms_per_socket
        self.auth: JWTAuth | None = None
        self.set_policy(policy, verifiers)
        namespace = server.of(policy.name)
        assert not isinstance(namespace, NamespaceFamily)
        self.namespace = namespace
        namespace.use(self._admit)
        namespace.on("connection", self._connected)
        namespace.on("join", self._guard(self.join))
        namespace.on("leave", self._guard(self.leave))
        namespace.on("publish", self._guard(self.publish))

    def set_policy(self, policy: RelayPolicy, verifiers: Mapping[str, TokenVerifier]) -> None:
        self.policy = policy
        self.patterns = tuple(policy.rooms)
        self.closed = False
        self.limits = _limits_of(policy)
        name = _auth_of(policy)
        if name is None:
            self.verifier: TokenVerifier | None = None
            return
        verifier = verifiers.get(name)
        if verifier is None:
            raise ConfigError(f"namespace {policy.name}: no auth named {name!r}")
        self.verifier = verifier
        if self.auth is None:
            self.auth = JWTAuth(verifier, self.server)
        else:
            self.auth.verifier = verifier

    async def close(self) -> int:
        """The namespace is no longer configured: refuse new connections, disconnect the
        connected sockets (each gets a Socket.IO DISCONNECT). Returns how many there were."""
        self.policy = _Closed(self.policy.name)
        self.patterns = ()
        self.closed = True
        count = len(self.namespace.sockets)
        await self.namespace.disconnect_sockets()
        return count

    async def _admit(self, socket: Socket) -> None:
        """Middleware: the namespace exists; the token, when required; the rate limit,
        installed before any event can come."""
        if self.closed:
            raise ConnectRefused("Invalid namespace")
        if self.verifier is not None:
            assert self.auth is not None
            await self.auth(socket)
        if self.limits.rate > 0:
            # The bucket reads the limits live: a reload changes them for this socket too.
            socket.use(TokenBucket(socket, self._limits, self.server.counters).check)

    async def _connected(self, socket: Socket) -> None:
        # A connection admitted just before close() ran: it must not stay.
        if self.closed:
            await socket.disconnect()
            return
        grant = socket.data.get("auth")
        if self.verifier is not None and isinstance(grant, Grant) and grant.join:
            rooms = [r for r in grant.join if self._allowed(r) and not self._private(socket, r)]
            if rooms:
                await socket.join(rooms)

    def _limits(self) -> Limits:
        return self.limits

    def _allowed(self, room: str) -> bool:
        return 0 < len(room) <= MAX_ROOM_NAME and any(
            fnmatch.fnmatchcase(room, p) for p in self.patterns)

    def _private(self, socket: Socket, room: str) -> bool:
        return room != socket.id and self.namespace.adapter.is_socket_room(room)

    def _grant(self, socket: Socket) -> Grant | None:
        """The socket's token grant; None when the namespace needs no token."""
        if self.verifier is None:
            return None
        grant = socket.data.get("auth")
        if not isinstance(grant, Grant):
            # Connected before the namespace required tokens (a reload): no rights.
            raise _Refused(f"a token is required in {self.policy.name}")
        return grant

    def _guard(self, handler: Any) -> Any:
        async def guarded(socket: Socket, *args: Any) -> dict:
            try:
                return await handler(socket, *args)
            except _Refused as refusal:
                return {"error": str(refusal)}
        guarded.__name__ = handler.__name__
        return guarded

    def _check_rooms(self, socket: Socket, value: Any, *, joining: bool) -> list[str]:
        rooms = _room_list(value)
        grant = self._grant(socket)
        for room in rooms:
            if not room or len(room) > MAX_ROOM_NAME:
                raise _Refused(f"room names must be 1 to {MAX_ROOM_NAME} characters")
            if grant is not None and not (grant.may_join(room) if joining
                                          else grant.may_publish(room)):
                verb = "join" if joining else "publish to"
                raise _Refused(f"your token does not allow you to {verb} room {room!r}")
            # Another socket's own room (a disconnected one's too, while its session may
            # be recovered): joining it would let a client read its private messages;
            # publishing to it is a direct message, which the policy may allow (socket
            # ids are not room names: the patterns do not apply to them).
            private = self._private(socket, room)
            if private and not joining and self.policy.publish_to_sockets:
                continue
            if not any(fnmatch.fnmatchcase(room, p) for p in self.patterns):
                raise _Refused(f"room {room!r} is not allowed in {self.policy.name}")
            if private:
                why = "" if joining else (
                    f"; publishing to sockets is not allowed in {self.policy.name}")
                raise _Refused(f"room {room!r} is a socket's private room{why}")
        return rooms

    async def join(self, socket: Socket, rooms: Any = None, *_: Any) -> dict:
        if not self.policy.client_join:
            raise _Refused(f"joining rooms is not allowed in {self.policy.name}")
        names = self._check_rooms(socket, rooms, joining=True)
        current = socket.rooms
        after = len(current | set(names)) - (socket.id in current)
        if after > self.rooms_per_socket:
            raise _Refused(f"a socket may be in at most {self.rooms_per_socket} rooms")
        await socket.join(names)
        return {"rooms": sorted(socket.rooms)}

    async def leave(self, socket: Socket, rooms: Any = None, *_: Any) -> dict:
        if not self.policy.client_leave:
            raise _Refused(f"leaving rooms is not allowed in {self.policy.name}")
        names = _room_list(rooms)
        if socket.id in names:
            raise _Refused("a socket cannot leave its own room")
        await socket.leave(names)
        return {"rooms": sorted(socket.rooms)}

    async def publish(self, socket: Socket, rooms: Any = None, event: Any = None,
                      *args: Any) -> dict:
        if not self.policy.client_publish:
            raise _Refused(f"publishing is not allowed in {self.policy.name}")
        names = self._check_rooms(socket, rooms, joining=False)
        if not isinstance(event, str) or not event or event in RESERVED_EVENTS:
            raise _Refused("the event name must be a non-empty string and not reserved")
        recipients = await socket.to(names).emit_counted(event, *args, source="client")
        return {"recipients": recipients}


class RelayApp:
    """The relay's handlers on a Server, one policy per namespace.

    ``verifiers`` maps the names policies give in ``auth`` to token
    verifiers; a policy naming an unknown one raises ConfigError.
    """

    def __init__(self, server: Server, policies: Iterable[RelayPolicy],
                 verifiers: Mapping[str, TokenVerifier] | None = None, *,
                 rooms_per_socket: int = ROOMS_PER_SOCKET) -> None:
        self.server = server
        self.rooms_per_socket = rooms_per_socket
        self.namespaces: dict[str, _RelayNamespace] = {}
        verifiers = verifiers or {}
        for policy in policies:
            self.namespaces[policy.name] = _RelayNamespace(server, policy, verifiers,
                                                           rooms_per_socket)
        if "/" not in self.namespaces:  # the Server always has "/": refuse it
            main = self.namespaces["/"] = _RelayNamespace(server, _Closed("/"), verifiers,
                                                          rooms_per_socket)
            main.closed = True

    def serves(self, name: str) -> bool:
        """Is ``name`` a namespace of the current configuration?"""
        relay = self.namespaces.get(name)
        return relay is not None and not relay.closed

    async def update(self, policies: Iterable[RelayPolicy],
                     verifiers: Mapping[str, TokenVerifier] | None = None
                     ) -> tuple[list[str], list[str]]:
        """Apply new policies and token keys (on SIGHUP); returns the namespaces
        (added, removed).

        Changed policies apply to the next request; changed keys and rate
        limits apply at once, and connected sockets keep their tokens' grants.
        A policy naming an unknown verifier raises ConfigError before anything
        changes. A namespace that is new is served
        from now on. A namespace that disappeared from the configuration no longer
        exists: new connections get "Invalid namespace" and its connected sockets are
        disconnected (each gets a Socket.IO DISCONNECT).
        """
        verifiers = verifiers or {}
        policies = list(policies)
        for policy in policies:
            name = _auth_of(policy)
            if name is not None and name not in verifiers:
                raise ConfigError(f"namespace {policy.name}: no auth named {name!r}")
        seen = set()
        added: list[str] = []
        for policy in policies:
            seen.add(policy.name)
            relay = self.namespaces.get(policy.name)
            if relay is None:
                self.namespaces[policy.name] = _RelayNamespace(self.server, policy, verifiers,
                                                               self.rooms_per_socket)
                added.append(policy.name)
            else:
                if relay.closed:
                    added.append(policy.name)
                relay.set_policy(policy, verifiers)
        removed: list[str] = []
        for name, relay in list(self.namespaces.items()):
            if name not in seen and not relay.closed:
                count = await relay.close()
                logger.info("namespace %s removed from the configuration: %d socket%s "
                            "disconnected", name, count, "" if count == 1 else "s")
                removed.append(name)
        return added, removed


class _Closed:
    """The policy of a namespace that is not (or no longer) in the configuration."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client_join = self.client_leave = self.client_publish = False
        self.publish_to_sockets = False
        self.rooms: tuple[str, ...] = ()
