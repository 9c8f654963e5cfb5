"""Signed tokens (JWT): who may connect to a namespace, and with which rights.

A client connects with ``auth: {token: "<JWT>"}`` (socket.io-client's
``auth`` option, python-socketio's ``auth=``). :class:`TokenVerifier` checks
the token with PyJWT against one key, once per connection (never per event):
its signature (HS256 with a shared secret; RS256, ES256 or EdDSA with a
public key or a JWKS file), ``exp``, ``nbf``, ``iss`` and ``aud``, with a
small leeway for clock skew. Only the algorithm of the configured key is
accepted, so an ``alg: none`` token, or an HS256 token forged with a public
key as its secret, is refused.

A refused token raises :class:`~roomd.ConnectRefused` with a short message
the client sees as its CONNECT_ERROR: "token required", "token expired",
"token not yet valid", "invalid signature", "invalid audience", "invalid
issuer", "algorithm not allowed", "malformed token", "unknown key",
"invalid claims", "token lacks a required claim" (``aud`` when an audience
is configured, ``exp`` with ``require_exp``). Nothing more detailed reaches
the client.

The claims that grant rights (a :class:`Grant`):

``sub``      a string, copied to ``socket.data["sub"]``
``rooms``    patterns (shell-style, ``order-*``) of rooms the socket may join
``publish``  patterns of rooms the socket may publish to
``join``     rooms the socket joins automatically on connect
``exp``      when the connection ends unless the client refreshes its token

Each list claim is a string or a list of at most :data:`MAX_CLAIM_ITEMS`
strings; a missing one grants nothing. The relay app intersects these rights
with the namespace's configuration.

:class:`~roomd.apps.jwtauth.JWTAuth`, the namespace middleware
(``roomd.auth.jwt(io, ...)``), uses a :class:`TokenVerifier` per connection.

Key files are read by :func:`load_secret`, :func:`load_public_key`,
:func:`load_jwks` and :func:`load_private_key`; each raises
:class:`~roomd.ConfigError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import Sequence
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .._errors import ConfigError, ConnectRefused

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
# RFC 7518 3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_BYTES = 32
# A token is one HTTP-header-sized string; anything larger is not a token.
MAX_TOKEN_BYTES = 8192
MAX_CLAIM_ITEMS = 100
MAX_ROOM_NAME = 256
DEFAULT_LEEWAY = 5.0

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1_000_000)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_secret(path: str) -> bytes:
    """The HS256 secret in ``path`` (surrounding whitespace removed)."""
    secret = _read(path, "JWT secret file").strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the JWT secret in {path} must be at least {MIN_SECRET_BYTES} bytes"
                          f" (has {len(secret)})")
    return secret


def load_public_key(path: str) -> PublicKey:
    """The RSA, EC (P-256) or Ed25519 public key in a PEM file."""
    data = _read(path, "JWT public key file")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"{path} does not hold a PEM public key") from None
    _algorithm_of(key, path)
    return key  # type: ignore[return-value]


def load_private_key(path: str) -> PrivateKey:
    """The RSA, EC (P-256) or Ed25519 private key (PEM, unencrypted) that signs tokens."""
    data = _read(path, "JWT private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} does not hold an unencrypted PEM private key") from None
    _algorithm_of(key.public_key(), path)
    return key  # type: ignore[return-value]


def load_jwks(path: str) -> pyjwt.PyJWKSet:
    """The keys of a JWKS file (``{"keys": [...]}``), selected by the token's ``kid``."""
    data = _read(path, "JWKS file")
    try:
        keys = pyjwt.PyJWKSet.from_json(data.decode("utf-8"))
    except (ValueError, pyjwt.PyJWKSetError, pyjwt.PyJWKError) as exc:
        raise ConfigError(f"{path} is not a usable JWKS file: {exc}") from None
    for key in keys.keys:
        if key.algorithm_name not in ALGORITHMS:
            raise ConfigError(f"{path}: key {key.key_id!r} uses {key.algorithm_name}; "
                              f"roomd accepts {', '.join(ALGORITHMS)}")
        if key.algorithm_name == "HS256" and len(key.key) < MIN_SECRET_BYTES:
            raise ConfigError(f"{path}: key {key.key_id!r} must be at least "
                              f"{MIN_SECRET_BYTES} bytes")
        if key.algorithm_name == "RS256" and key.key.key_size < 2048:
            raise ConfigError(f"{path}: key {key.key_id!r}: RSA keys must have at least "
                              f"2048 bits")
    return keys


def _algorithm_of(key: Any, where: str) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError(f"{where}: RSA keys must have at least 2048 bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"{where}: EC keys must be on P-256 (ES256)")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ConfigError(f"{where}: unsupported key type (use RSA, EC P-256 or Ed25519)")


# ---------------------------------------------------------------------------
# Grants
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a verified token allows; ``exp`` is a Unix time or None."""

    sub: str | None
    exp: float | None
    rooms: tuple[str, ...]
    publish: tuple[str, ...]
    join: tuple[str, ...]
    claims: dict[str, Any] = dataclasses.field(compare=False, repr=False)

    def may_join(self, room: str) -> bool:
        return any(fnmatch.fnmatchcase(room, p) for p in self.rooms)

    def may_publish(self, room: str) -> bool:
        return any(fnmatch.fnmatchcase(room, p) for p in self.publish)


def _claim_list(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or len(items) > MAX_CLAIM_ITEMS
            or not all(isinstance(i, str) and 0 < len(i) <= MAX_ROOM_NAME for i in items)):
        raise ConnectRefused("invalid claims")
    return tuple(items)


def grant_from_claims(claims: dict[str, Any]) -> Grant:
    """The rights a verified token's claims give; ConnectRefused for bad shapes."""
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise ConnectRefused("invalid claims")
    exp = claims.get("exp")
    return Grant(sub=sub, exp=float(exp) if exp is not None else None,
                 rooms=_claim_list(claims, "rooms"), publish=_claim_list(claims, "publish"),
                 join=_claim_list(claims, "join"), claims=claims)


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------

# PyJWT's errors, most specific first, and what the client is told.
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (pyjwt.ExpiredSignatureError, "token expired"),
    (pyjwt.ImmatureSignatureError, "token not yet valid"),
    (pyjwt.InvalidAudienceError, "invalid audience"),
    (pyjwt.InvalidIssuerError, "invalid issuer"),
    (pyjwt.InvalidSignatureError, "invalid signature"),
    (pyjwt.InvalidAlgorithmError, "algorithm not allowed"),
    (pyjwt.MissingRequiredClaimError, "token lacks a required claim"),
    (pyjwt.InvalidIssuedAtError, "invalid claims"),
    (pyjwt.DecodeError, "malformed token"),
)


class TokenVerifier:
    """Checks tokens against one key (exactly one of ``secret``, ``public_key``, ``jwks``).

    ``algorithm`` defaults to the key's own (HS256 for a secret, RS256 /
    ES256 / EdDSA by the public key's type); a JWKS key's algorithm comes
    from the JWKS. ``issuer`` and ``audience``, when given, must match the
    token's ``iss`` and ``aud``; ``leeway`` (seconds) allows for clock skew;
    ``require_exp`` refuses tokens without ``exp``.
    """

    def __init__(self, *, secret: bytes | str | None = None, public_key: PublicKey | None = None,
                 jwks: pyjwt.PyJWKSet | None = None, algorithm: str | None = None,
                 issuer: str | None = None, audience: str | None = None,
                 leeway: float = DEFAULT_LEEWAY, require_exp: bool = False) -> None:
        if sum(k is not None for k in (secret, public_key, jwks)) != 1:
            raise ConfigError("give exactly one of a secret, a public key or a JWKS")
        if leeway < 0:
            raise ConfigError("the leeway must not be negative")
        if algorithm is not None and algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}; "
                              f"got {algorithm!r}")
        self._jwks = jwks
        self._key: Any = None
        if secret is not None:
            self._key = secret.encode() if isinstance(secret, str) else secret
            if len(self._key) < MIN_SECRET_BYTES:
                raise ConfigError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
            natural = "HS256"
        elif public_key is not None:
            self._key = public_key
            natural = _algorithm_of(public_key, "the public key")
        else:
            natural = ""
        if algorithm is not None and natural and algorithm != natural:
            raise ConfigError(f"algorithm {algorithm} does not fit the key (it is {natural})")
        self.algorithm = algorithm or natural or None
        self.issuer = issuer
        self.audience = audience
        self.leeway = float(leeway)
        self._options: dict[str, Any] = {"require": ["exp"] if require_exp else []}

    @classmethod
    def from_files(cls, *, secret_file: str | None = None, public_key_file: str | None = None,
                   jwks_file: str | None = None, **options: Any) -> TokenVerifier:
        """A verifier whose key is read from exactly one of the files."""
        if sum(f is not None for f in (secret_file, public_key_file, jwks_file)) != 1:
            raise ConfigError("give exactly one of secret_file, public_key_file, jwks_file")
        if secret_file is not None:
            return cls(secret=load_secret(secret_file), **options)
        if public_key_file is not None:
            return cls(public_key=load_public_key(public_key_file), **options)
        assert jwks_file is not None
        return cls(jwks=load_jwks(jwks_file), **options)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            assert self.algorithm is not None
            return self._key, [self.algorithm]
        header = pyjwt.get_unverified_header(token)
        kid = header.get("kid")
        keys = self._jwks.keys
        if kid is None:
            if len(keys) != 1:
                raise ConnectRefused("unknown key")
            jwk = keys[0]
        else:
            found = [k for k in keys if k.key_id == kid]
            if not found:
                raise ConnectRefused("unknown key")
            jwk = found[0]
        if self.algorithm is not None and jwk.algorithm_name != self.algorithm:
            raise ConnectRefused("algorithm not allowed")
        return jwk.key, [jwk.algorithm_name]

    def claims(self, token: Any) -> dict[str, Any]:
        """The verified claims of ``token``; raises ConnectRefused (see the module doc)."""
        if not isinstance(token, str) or not token:
            raise ConnectRefused("token required")
        if len(token) > MAX_TOKEN_BYTES:
            raise ConnectRefused("malformed token")
        try:
            key, algorithms = self._key_for(token)
            claims = pyjwt.decode(token, key, algorithms=algorithms, audience=self.audience,
                                  issuer=self.issuer, leeway=self.leeway,
                                  options=self._options)  # type: ignore[arg-type]
        except pyjwt.PyJWTError as exc:
            for kind, message in _MESSAGES:
                if isinstance(exc, kind):
                    raise ConnectRefused(message) from None
            raise ConnectRefused("invalid token") from None
        return claims

    def verify(self, token: Any) -> Grant:
        """The :class:`Grant` of a valid token; raises ConnectRefused otherwise."""
        return grant_from_claims(self.claims(token))


def mint(key: bytes | str | PrivateKey, *, algorithm: str | None = None, sub: str | None = None,
         rooms: Sequence[str] = (), publish: Sequence[str] = (), join: Sequence[str] = (),
         ttl: float | None = 3600, issuer: str | None = None, audience: str | None = None,
         kid: str | None = None, now: float | None = None, extra: dict | None = None) -> str:
    """A signed token with these claims (``roomd token``; tests; simple backends).

    ``key`` is the HS256 secret or a private key; ``ttl`` None or 0 means no
    ``exp``. ``extra`` claims are added as they are.
    """
    if isinstance(key, (bytes, str)):
        natural = "HS256"
    else:
        natural = _algorithm_of(key.public_key(), "the private key")
    algorithm = algorithm or natural
    if algorithm != natural:
        raise ConfigError(f"algorithm {algorithm} does not fit the key (it is {natural})")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iat": issued}
    if ttl:
        claims["exp"] = issued + int(ttl)
    for name, value in (("sub", sub), ("iss", issuer), ("aud", audience)):
        if value is not None:
            claims[name] = value
    for name, items in (("rooms", rooms), ("publish", publish), ("join", join)):
        if items:
            claims[name] = list(items)
    for name, items in (("rooms", rooms), ("publish", publish), ("join", join)):
        if len(items) > MAX_CLAIM_ITEMS or not all(
                isinstance(i, str) and 0 < len(i) <= MAX_ROOM_NAME for i in items):
            raise ConfigError(f"{name}: at most {MAX_CLAIM_ITEMS} room names or patterns of "
                              f"1 to {MAX_ROOM_NAME} characters")
    claims.update(extra or {})
    headers = {"kid": kid} if kid else None
    return pyjwt.encode(claims, key, algorithm=algorithm, headers=headers)


__all__ = ["ALGORITHMS", "Grant", "TokenVerifier", "grant_from_claims", "load_jwks",
           "load_private_key", "load_public_key", "load_secret", "mint"]
