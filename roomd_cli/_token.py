"""``roomd token``: mint a signed token (JWT) for testing and for simple backends.

The key is the configured one (an ``[auth.NAME]`` table of ``--config`` or
$ROOMD_CONFIG, chosen with ``--auth`` when there are several) or a file given
on the command line: ``--secret-file`` (HS256) or ``--key-file`` (an RSA, EC
P-256 or Ed25519 private key in PEM). A table with a public key or a JWKS
cannot sign: give ``--key-file`` with the private key that goes with it. The
issuer and audience default to the table's, so the token passes its checks.
"""

from __future__ import annotations

from typing import Any

import click

from roomd._errors import ConfigError
from roomd.ops.config import AuthConfig, load_config


def _table(config_path: str | None, name: str | None) -> AuthConfig | None:
    config = load_config(config_path, {})
    tables = {auth.name: auth for auth in config.auth}
    if name is not None:
        if name not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise ConfigError(f"no [auth.{name}] table in the configuration (have: {known})")
        return tables[name]
    if len(tables) > 1:
        raise ConfigError(f"several [auth] tables ({', '.join(sorted(tables))}): choose one "
                          f"with --auth")
    return next(iter(tables.values()), None)


@click.command("token", short_help="Mint a signed token (JWT) from the configured key.")
@click.option("--config", "config_path", metavar="PATH",
              help="TOML config whose [auth.NAME] key signs. [env: ROOMD_CONFIG]")
@click.option("--auth", "auth_name", metavar="NAME", help="Which [auth.NAME] table (when several).")
@click.option("--secret-file", metavar="PATH", help="Sign with this HS256 secret instead.")
@click.option("--key-file", metavar="PATH",
              help="Sign with this PEM private key (RS256, ES256 or EdDSA) instead.")
@click.option("--sub", metavar="SUBJECT", help="The subject (sub claim), e.g. a user id.")
@click.option("--room", "rooms", metavar="PATTERN", multiple=True,
              help="A room pattern the client may join (rooms claim); repeatable.")
@click.option("--publish", metavar="PATTERN", multiple=True,
              help="A room pattern the client may publish to (publish claim); repeatable.")
@click.option("--join", metavar="ROOM", multiple=True,
              help="A room joined automatically on connect (join claim); repeatable.")
@click.option("--ttl", type=click.IntRange(min=0), default=3600, show_default=True,
              help="Seconds until it expires (exp claim); 0 for no expiry.")
@click.option("--issuer", metavar="ISS", help="The iss claim (default: the table's issuer).")
@click.option("--audience", metavar="AUD", help="The aud claim (default: the table's audience).")
@click.option("--kid", metavar="KID", help="The key id header (for JWKS-verified keys).")
def token(config_path: str | None, auth_name: str | None, secret_file: str | None,
          key_file: str | None, sub: str | None, rooms: tuple[str, ...],
          publish: tuple[str, ...], join: tuple[str, ...], ttl: int, issuer: str | None,
          audience: str | None, kid: str | None) -> None:
    """Print a token signed with the configured key (or --secret-file / --key-file).

    Clients pass it as `auth: {token}`. Example:

        roomd token --config roomd.toml --sub alice --room 'chat-*' --publish chat-alice
    """
    from roomd.apps.tokens import load_private_key, load_secret, mint

    if secret_file is not None and key_file is not None:
        raise ConfigError("give --secret-file or --key-file, not both")
    table = None
    if (secret_file is None and key_file is None) or auth_name is not None:
        table = _table(config_path, auth_name)
    key: Any
    if secret_file is not None:
        key = load_secret(secret_file)
    elif key_file is not None:
        key = load_private_key(key_file)
    elif table is None:
        raise ConfigError("no key: the configuration has no [auth.NAME] table; "
                          "give --config, --secret-file or --key-file")
    elif table.secret_file is not None:
        key = load_secret(table.secret_file)
    else:
        raise ConfigError(f"[auth.{table.name}] verifies with a public key: give --key-file "
                          f"with the private key that signs")
    if table is not None:
        issuer = issuer if issuer is not None else table.issuer
        audience = audience if audience is not None else table.audience
    click.echo(mint(key, sub=sub, rooms=rooms, publish=publish, join=join, ttl=ttl,
                    issuer=issuer, audience=audience, kid=kid))
