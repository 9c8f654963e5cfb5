"""The commands that talk to a running daemon over its admin socket."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import click

from roomd._errors import AdminError
from roomd.ops.admin_proto import AdminClient, running_instances

from ._common import DashArgsCommand, admin_options, client, namespace_arg
from ._format import clock, duration, echo_json, table, when


def _closed(by_reason: dict) -> str:
    """{"transport close": 9, "ping timeout": 1} -> "10 (transport close 9, ping timeout 1)"."""
    if not by_reason:
        return "0"
    reasons = sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))
    return f"{sum(by_reason.values())} (" + ", ".join(f"{r} {n}" for r, n in reasons) + ")"


@click.command(short_help="Show the daemon's vital statistics.")
@admin_options
@click.pass_context
def status(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Version, instance, uptime, listen address, connections, namespaces, rooms, event rate,
    connections closed (by reason), requests refused (by HTTP status: 429 and 503 are roomd's
    admission limits); with connection state recovery on, what its stores hold.
    """
    s = client(ctx, socket_path).request("status")["status"]
    if as_json:
        echo_json(s)
        return
    listen = s.get("listen") or []
    rows = [
        ("version", s.get("version", "-")),
        ("instance", s.get("instance", "-")),
        ("pid", s.get("pid", "-")),
        ("started", when(s.get("started_at"))),
        ("uptime", duration(s.get("uptime"))),
        ("listen", ", ".join(listen) if isinstance(listen, list) else listen),
        ("connections", s.get("connections", "-")),
        ("namespaces", s.get("namespaces", "-")),
        ("rooms", s.get("rooms", "-")),
        ("events", f"{s.get('events_total', 0)} total, "
                   f"{float(s.get('events_per_second') or 0):.1f}/s"),
        ("closed", _closed(s.get("closed") or {})),
        ("refused", _closed(s.get("refused") or {})),
        ("cluster", cluster_line(s.get("cluster") or {})),
    ]
    held = s.get("recovery")
    if isinstance(held, dict):
        rows.append(("recovery", f"{held.get('sessions', 0)} sessions, {held.get('packets', 0)} "
                                 f"packets ({held.get('bytes', 0)} bytes) in "
                                 f"{held.get('namespaces', 0)} namespaces"))
    if "auth_refused" in s or "auth_expired" in s:
        rows.append(("tokens", f"{s.get('auth_refused', 0)} refused, "
                               f"{s.get('auth_expired', 0)} expired"))
    if "rate_limited_events" in s:
        rows.append(("rate limits", f"{s.get('rate_limited_events', 0)} events refused, "
                                    f"{s.get('rate_limit_disconnects', 0)} sockets disconnected"))
    for key, value in rows:
        click.echo(f"{key + ':':<13}{value}")


def cluster_line(c: dict) -> str:
    """``roomd status``'s cluster row: the adapter, the Redis state, the server count."""
    if c.get("adapter") != "redis":
        return c.get("adapter", "memory")
    servers = c.get("servers")
    count = f"{servers} server(s)" if servers is not None else "server count unknown"
    return f"redis {c.get('mode')} {c.get('url')}: {c.get('redis')}, {count}"


@click.group()
def namespaces() -> None:
    """The live namespaces."""


@namespaces.command("list")
@admin_options
@click.pass_context
def namespaces_list(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """List the namespaces with their socket and room counts."""
    items = client(ctx, socket_path).request("namespaces")["namespaces"]
    if as_json:
        echo_json(items)
        return
    rows = [(n["name"], n["sockets"], n["rooms"]) for n in items]
    click.echo(table(("NAMESPACE", "SOCKETS", "ROOMS"), rows))


@click.group()
def rooms() -> None:
    """The live rooms."""


@rooms.command("list")
@click.argument("namespace", required=False)
@click.option("--members", is_flag=True, help="Also list the socket ids in each room.")
@click.option("--all", "include_private", is_flag=True,
              help="Include each socket's private own-id room.")
@click.option("--cluster", "cluster_wide", is_flag=True,
              help="Every node's rooms, with the members on this node (needs a cluster adapter to "
                   "see other nodes).")
@admin_options
@click.pass_context
def rooms_list(
    ctx: click.Context,
    namespace: str | None,
    members: bool,
    include_private: bool,
    cluster_wide: bool,
    socket_path: str | None,
    as_json: bool,
) -> None:
    """List the rooms (of NAMESPACE, or of all namespaces) with their member counts."""
    if cluster_wide and members:
        raise click.UsageError("--members lists this node's sockets; it does not go with --cluster")
    items = client(ctx, socket_path).request(
        "rooms", namespace=namespace_arg(namespace), members=members or None,
        all=include_private or None, cluster=cluster_wide or None,
    )["rooms"]
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo("no rooms")
        return
    if cluster_wide:
        click.echo(table(["NAMESPACE", "ROOM", "LOCAL MEMBERS"], [
            [r["namespace"], r["room"] + (" (private)" if r.get("private") else ""), r["local"]]
            for r in items]))
        return
    headers = ["NAMESPACE", "ROOM", "MEMBERS"] + (["SOCKETS"] if members else [])
    rows = []
    for r in items:
        row = [r["namespace"], r["room"] + (" (private)" if r.get("private") else ""), r["count"]]
        if members:
            row.append(",".join(r.get("members", [])))
        rows.append(row)
    click.echo(table(headers, rows))


@click.group()
def sockets() -> None:
    """The connected sockets."""


@sockets.command("list")
@click.argument("namespace", required=False)
@click.option("--room", metavar="ROOM", help="Only the sockets in this room.")
@admin_options
@click.pass_context
def sockets_list(
    ctx: click.Context,
    namespace: str | None,
    room: str | None,
    socket_path: str | None,
    as_json: bool,
) -> None:
    """List the connected sockets (of NAMESPACE, or of all namespaces)."""
    response = client(ctx, socket_path).request(
        "sockets", namespace=namespace_arg(namespace), room=room)
    items = response["sockets"]
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo("no sockets")
        return
    now = time.time()
    rows = []
    for s in items:
        connected = s.get("connected_at")
        age = duration(now - connected) if isinstance(connected, (int, float)) else "-"
        own = [r for r in s.get("rooms", []) if r != s.get("id")]
        rows.append((s.get("id"), s.get("namespace"), s.get("transport", "-"),
                     s.get("address", "-"), age, ",".join(own)))
    click.echo(table(("ID", "NAMESPACE", "TRANSPORT", "ADDRESS", "CONNECTED", "ROOMS"), rows))


def _tail_line(item: dict) -> str:
    rooms = ",".join(item.get("rooms") or []) or "*"
    excepted = item.get("except") or []
    if excepted:
        rooms += " !" + ",!".join(excepted)
    recipients = item.get("recipients")
    return (
        f"{clock(item.get('time'))} {item.get('namespace')} {rooms} {item.get('event')} "
        f"{item.get('preview', '')} -> {recipients if recipients is not None else '?'}"
    )


@click.command(short_help="Print every emitted event, live, until Ctrl-C.")
@click.argument("namespace", required=False)
@click.option("--room", metavar="ROOM", help="Only events emitted to this room.")
@click.option("--event", metavar="EVENT", help="Only events with this name.")
@admin_options
@click.pass_context
def tail(
    ctx: click.Context,
    namespace: str | None,
    room: str | None,
    event: str | None,
    socket_path: str | None,
    as_json: bool,
) -> None:
    """Print every emitted event, live, one line each, until Ctrl-C.

    Each line: time, namespace, rooms (* for the whole namespace, !R for an
    excepted room), event, a preview of the arguments, -> recipients.
    """
    items = client(ctx, socket_path).stream(
        "tail", namespace=namespace_arg(namespace), room=room, event=event, args=as_json or None
    )
    try:
        for item in items:
            if as_json:
                click.echo(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
            else:
                click.echo(_tail_line(item))
    except KeyboardInterrupt:
        items.close()
        ctx.exit(0)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for JSON numbers")
    return value


def _json_args(values: tuple[str, ...]) -> list:
    """Each value parsed as strict JSON: NaN, Infinity and numbers that overflow to
    infinity (1e999) are refused, as any JSON encoder would refuse to send them."""
    out = []
    for value in values:
        try:
            out.append(json.loads(value, parse_constant=_no_constant, parse_float=_finite))
        except json.JSONDecodeError as e:
            raise click.BadParameter(
                f"{value!r} is not valid JSON ({e.msg}); quote strings, e.g. '\"hello\"'",
                param_hint="JSON-ARG") from None
        except ValueError as e:
            raise click.BadParameter(f"{value!r} is not valid JSON ({e})",
                                     param_hint="JSON-ARG") from None
    return out


@click.command(cls=DashArgsCommand, short_help="Emit an event from the command line.")
@click.argument("namespace")
@click.argument("event")
@click.argument("json_args", metavar="[JSON-ARG]...", nargs=-1)
@click.option("--room", "rooms", metavar="ROOM", multiple=True,
              help="Emit to this room (repeatable).")
@click.option("--except", "except_rooms", metavar="ROOM", multiple=True,
              help="Leave out this room's sockets (repeatable).")
@admin_options
@click.pass_context
def emit(
    ctx: click.Context,
    namespace: str,
    event: str,
    json_args: tuple[str, ...],
    rooms: tuple[str, ...],
    except_rooms: tuple[str, ...],
    socket_path: str | None,
    as_json: bool,
) -> None:
    """Emit EVENT with the JSON arguments to NAMESPACE (or to its --room rooms)."""
    args = _json_args(json_args)
    response = client(ctx, socket_path).request(
        "emit", namespace=namespace_arg(namespace), event=event, args=args,
        rooms=list(rooms), **{"except": list(except_rooms)},
    )
    recipients = response.get("recipients")
    if as_json:
        echo_json({"recipients": recipients})
    else:
        click.echo(f"delivered to {recipients} socket{'' if recipients == 1 else 's'}")


@click.command(cls=DashArgsCommand, short_help="Disconnect one socket.")
@click.argument("socket_id", metavar="SOCKET-ID")
@admin_options
@click.pass_context
def disconnect(ctx: click.Context, socket_id: str, socket_path: str | None, as_json: bool) -> None:
    """Disconnect the socket with this id (it receives a Socket.IO disconnect)."""
    client(ctx, socket_path).request("disconnect", sid=socket_id)
    if as_json:
        echo_json({"disconnected": True, "id": socket_id})
    else:
        click.echo(f"disconnected {socket_id}")


@click.group()
def instances() -> None:
    """The roomd daemons running on this host."""


@instances.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def instances_list(as_json: bool) -> None:
    """List the daemons answering on default admin sockets: instance name, socket, pid, listen.

    The name is what --instance takes. Daemons given an explicit admin socket
    (--socket, admin.socket) are not found here.
    """
    items = []
    for found in running_instances():
        item: dict[str, Any] = {"instance": found.name, "socket": found.path}
        try:
            s = AdminClient(found.path, timeout=5).request("status")["status"]
            item.update(pid=s.get("pid"), listen=s.get("listen") or [])
        except AdminError as e:
            item["error"] = str(e)
        items.append(item)
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo("no roomd instances running")
        return
    rows = [(i["instance"], i["socket"], i.get("pid", "-"),
             ", ".join(i.get("listen", [])) or i.get("error", "-")) for i in items]
    click.echo(table(("INSTANCE", "SOCKET", "PID", "LISTEN"), rows))


COMMANDS = [status, namespaces, rooms, sockets, tail, emit, disconnect, instances]
