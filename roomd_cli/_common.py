"""What the commands share: the state in ctx.obj, error handling, --socket/--json."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from roomd._errors import RoomdError
from roomd.ops.admin_proto import AdminClient, resolve_admin_socket
from roomd.ops.config import load_config

INSTANCE_HELP = ("The daemon instance (by default named by its port, e.g. 3001; roomd@NAME "
                 "under systemd) when several run. [env: ROOMD_INSTANCE]")


@dataclass
class State:
    """ctx.obj: options given to the ``roomd`` group itself (or to a command, for these)."""

    socket: str | None = None
    instance: str | None = None


class DashArgsCommand(click.Command):
    """A command whose arguments may start with "-" (socket ids are base64url, JSON numbers
    may be negative): any token that is not one of its own options is an argument.

    click would read ``-St5...`` as a cluster of short options (``-h`` among them);
    ``ignore_unknown_options`` does not help with that. ``--`` still ends the options.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags: set[str] = set()
        valued: set[str] = set()
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                names = [*param.opts, *param.secondary_opts]
                (flags if param.is_flag or param.count else valued).update(names)
        options: list[str] = []
        arguments: list[str] = []
        tokens = iter(args)
        for token in tokens:
            if token == "--":
                arguments.extend(tokens)
                break
            if token in flags or (token.split("=", 1)[0] in valued and "=" in token):
                options.append(token)
            elif token in valued:
                options.append(token)
                value = next(tokens, None)  # missing: click says the option needs a value
                if value is not None:
                    options.append(value)
            else:
                arguments.append(token)
        return super().parse_args(ctx, [*options, "--", *arguments])


def _set_instance(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        ctx.ensure_object(State).instance = value
    return value


class RoomdGroup(click.Group):
    """A group whose RoomdErrors become ``roomd: <message>`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RoomdError as e:
            click.echo(f"roomd: {e}", err=True)
            ctx.exit(getattr(e, "exit_code", 1))


def instance_option(fn: Callable, help: str = INSTANCE_HELP) -> Callable:
    """--instance NAME, stored in the State (not passed to the command)."""
    return click.option("--instance", metavar="NAME", expose_value=False, callback=_set_instance,
                        is_eager=True, help=help)(fn)


def admin_options(fn: Callable) -> Callable:
    """Add --socket, --instance and --json to an admin command (``socket_path``, ``as_json``)."""
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print JSON for scripts instead of a table.")(fn)
    fn = instance_option(fn)
    fn = click.option(
        "--socket",
        "socket_path",
        metavar="PATH",
        help="The daemon's admin socket (overrides the one given to roomd).",
    )(fn)
    return fn


def client(ctx: click.Context, socket_path: str | None) -> AdminClient:
    """An AdminClient for --socket (the command's, else the group's, else ROOMD_SOCKET), else
    --instance/ROOMD_INSTANCE, else $ROOMD_CONFIG's admin.socket or admin.instance, else the
    only running daemon (see :func:`~roomd.ops.admin_proto.resolve_admin_socket`)."""
    state: State = ctx.ensure_object(State)
    path = socket_path or state.socket
    instance = state.instance
    configured = None
    if not path and instance is None and os.environ.get("ROOMD_CONFIG"):
        admin = load_config(None, {}).admin
        configured, instance = admin.socket, admin.instance
    return AdminClient(resolve_admin_socket(path, instance, configured))


def namespace_arg(value: str | None) -> str | None:
    """Namespaces may be typed without their leading slash: "orders" is "/orders"."""
    if value is None or value.startswith("/"):
        return value
    return "/" + value

