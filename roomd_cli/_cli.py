"""The ``roomd`` group: serve, config check, unit-file, and the admin commands."""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

import click

from roomd._errors import ConfigError, RoomdError
from roomd.ops.config import LOG_LEVELS, config_to_toml, load_config

from ._admin_cmds import COMMANDS
from ._client_cmd import client_command
from ._common import INSTANCE_HELP, RoomdGroup, State, instance_option
from ._token import token

EX_CONFIG = 78  # sysexits.h; the shipped unit does not restart on it
UNIT_EXEC_PATH = "/usr/local/bin/roomd"


def _version() -> str:
    try:
        return importlib.metadata.version("roomd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@click.group(cls=RoomdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    envvar="ROOMD_SOCKET",
    help="The admin socket: where the admin commands connect, where serve listens. "
         "[env: ROOMD_SOCKET]",
)
@click.option("--instance", metavar="NAME", envvar="ROOMD_INSTANCE", help=INSTANCE_HELP)
@click.version_option(_version(), prog_name="roomd")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, instance: str | None) -> None:
    """roomd: a Socket.IO v5 message-room daemon, and the tool to operate it."""
    ctx.obj = State(socket=socket_path, instance=instance)


@cli.command()
@click.option("--config", "config_path", metavar="PATH",
              help="TOML config file. [env: ROOMD_CONFIG]")
@click.option("--host", metavar="HOST", help="Listen on this address (server.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Listen on this port (server.port).")
@click.option("--path", "sio_path", metavar="PATH", help="The Socket.IO path (server.path).")
@click.option("--app", "app_module", metavar="MODULE:ATTR",
              help="Run this application instead of the relay app (app.module).")
@click.option("--app-dir", metavar="DIR", help="Look for the --app module in DIR first (app.dir).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Log level (log.level).")
@click.option("--socket", "socket_path", metavar="PATH",
              help="The admin socket to create (admin.socket).")
@functools.partial(instance_option, help=(
    "This daemon's instance name (admin.instance; default: its port): names its admin "
    "socket, <dir>/NAME.sock, unless under systemd or --socket."))
@click.pass_context
def serve(
    ctx: click.Context,
    config_path: str | None,
    host: str | None,
    port: int | None,
    sio_path: str | None,
    app_module: str | None,
    app_dir: str | None,
    log_level: str | None,
    socket_path: str | None,
) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C.

    Flags override the config file; without a file the defaults apply.
    A bad configuration exits with status 78.
    """
    state: State = ctx.ensure_object(State)
    overrides = {
        "server.host": host,
        "server.port": port,
        "server.path": sio_path,
        "app.module": app_module,
        "app.dir": app_dir,
        "log.level": log_level.lower() if log_level else None,
        "admin.socket": socket_path or state.socket,
        "admin.instance": state.instance,
    }
    try:
        config = load_config(config_path, overrides)
    except ConfigError as e:
        click.echo(f"roomd: {e}", err=True)
        ctx.exit(EX_CONFIG)
    from roomd import run_daemon  # the server and trio: imported only for serve

    try:
        status = run_daemon(config, overrides)
    except ConfigError as e:
        click.echo(f"roomd: {e}", err=True)
        ctx.exit(EX_CONFIG)
    except KeyboardInterrupt:
        ctx.exit(130)
    except RoomdError:
        raise
    ctx.exit(status if isinstance(status, int) else 0)


@cli.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@click.argument("path", required=False, metavar="[PATH]")
def config_check(path: str | None) -> None:
    """Validate PATH (default: $ROOMD_CONFIG, else none) and print the effective config.

    Exits 1 with a message naming the key on an unknown key, a wrong type or
    a bad value, or naming the file of a token key or TLS certificate that
    cannot be used.
    """
    cfg = load_config(path, {})
    if cfg.admin.group is not None:
        from roomd.ops.admin import resolve_group

        resolve_group(cfg.admin.group)
    if cfg.auth or cfg.server.tls_certfile:
        from roomd.ops.daemon import tls_context, verifiers_for

        verifiers_for(cfg)  # the key files: readable, and keys of a usable kind
        tls_context(cfg)
    click.echo(config_to_toml(cfg), nl=False)


UNITS = ("roomd.service", "roomd@.service", "roomd.socket")


def unit_file_text(name: str = "roomd.service") -> str:
    """A systemd unit shipped in the roomd package."""
    try:
        import importlib.resources

        return importlib.resources.files("roomd.ops").joinpath(name).read_text()
    except (FileNotFoundError, ModuleNotFoundError, TypeError):
        import roomd.ops.config

        return Path(roomd.ops.config.__file__).with_name(name).read_text()


@cli.command("unit-file", short_help="Print a shipped systemd unit.")
@click.argument("unit", type=click.Choice(UNITS), default=UNITS[0], required=False)
@click.option("--exec-path", metavar="PATH",
              help=f"The roomd executable in ExecStart= (default {UNIT_EXEC_PATH}).")
def unit_file(unit: str, exec_path: str | None) -> None:
    """Print UNIT: the hardened service (default, save as /etc/systemd/system/roomd.service),
    the template for several instances (roomd@.service) or the socket-activation unit."""
    text = unit_file_text(unit)
    if exec_path:
        text = text.replace(UNIT_EXEC_PATH, exec_path)
    click.echo(text, nl=False)


@cli.command("hash-password", short_help="Print a bcrypt hash for admin_ui.password_hash.")
@click.option("--rounds", type=click.IntRange(4, 31), default=12, show_default=True,
              help="bcrypt cost factor.")
def hash_password(rounds: int) -> None:
    """Read a password (prompted twice on a terminal, else the first line of standard
    input) and print its bcrypt hash, for admin_ui.password_hash."""
    import sys

    import bcrypt

    stdin = sys.stdin
    if stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("the password must not be empty")
    if len(password.encode()) > 72:
        raise click.ClickException("bcrypt uses at most 72 bytes of a password; use a shorter one")
    click.echo(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode())


cli.add_command(token)
for _command in COMMANDS:
    cli.add_command(_command)
cli.add_command(client_command)
