"""What the commands share: the state in ctx.obj, error handling, --socket/--json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from roomd._errors import RoomdError
from roomd.ops.admin_proto import AdminClient, client_socket_path
from roomd.ops.config import load_config


@dataclass
class State:
    """ctx.obj: options given to the ``roomd`` group itself."""

    socket: str | None = None


class RoomdGroup(click.Group):
    """A group whose RoomdErrors become ``roomd: <message>`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RoomdError as e:
            click.echo(f"roomd: {e}", err=True)
            ctx.exit(getattr(e, "exit_code", 1))


def admin_options(fn: Callable) -> Callable:
    """Add --socket and --json to an admin command (as ``socket_path`` and ``as_json``)."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")(fn)
    fn = click.option(
        "--socket",
        "socket_path",
        metavar="PATH",
        help="The daemon's admin socket (overrides the one given to roomd).",
    )(fn)
    return fn


def client(ctx: click.Context, socket_path: str | None) -> AdminClient:
    """An AdminClient for --socket, else the group's --socket/ROOMD_SOCKET, else the config's."""
    state: State = ctx.ensure_object(State)
    path = socket_path or state.socket
    if not path:
        path = client_socket_path(load_config(None, {}).admin.socket)
    return AdminClient(path)


def namespace_arg(value: str | None) -> str | None:
    """Namespaces may be typed without their leading slash: "orders" is "/orders"."""
    if value is None or value.startswith("/"):
        return value
    return "/" + value

