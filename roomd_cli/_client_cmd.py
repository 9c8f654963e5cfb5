"""``roomd client URL``: a Socket.IO client for the shell, on :func:`roomd.client.connect`.

It connects, then in order joins rooms (``--join``, the relay's ``join``), emits
events (``--emit EVENT [JSON]...``, with ``--ack`` waiting for each ack) and,
unless ``--once``, prints every event received until Ctrl-C, ``--count N`` or
``--timeout S``: one line each, or one JSON object per line with ``--json``.
Binary values are ``{"$binary": "<base64>"}`` in both directions.

Exit status: 0 ok; 1 could not connect (network, TLS, HTTP refusal, the
server's CONNECT_ERROR message) or a join was refused; 2 usage error (click);
3 timeout (an ack within ``--ack-timeout``, or ``--count`` events within
``--timeout``); 4 disconnected by the server or the network before the end.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import click

from ._format import clock

EXIT_OK = 0
EXIT_CONNECT = 1
EXIT_USAGE = 2  # click's own
EXIT_TIMEOUT = 3
EXIT_DISCONNECTED = 4
BINARY_KEY = "$binary"


# ---- JSON arguments and binary values


def from_json_arg(text: str, param: str) -> Any:
    """A command-line JSON value; ``{"$binary": "<base64>"}`` anywhere becomes bytes."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{text!r} is not valid JSON ({exc.msg}); quote strings, e.g. '\"hello\"'",
            param_hint=param) from None
    return _decode_binary(value, param)


def _decode_binary(value: Any, param: str) -> Any:
    if isinstance(value, list):
        return [_decode_binary(item, param) for item in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BINARY_KEY), str):
            try:
                return base64.b64decode(value[BINARY_KEY], validate=True)
            except (binascii.Error, ValueError):
                raise click.BadParameter(f"{value[BINARY_KEY]!r} is not valid base64",
                                         param_hint=param) from None
        return {key: _decode_binary(item, param) for key, item in value.items()}
    return value


def to_display(value: Any) -> Any:
    """What JSON can show: bytes become ``{"$binary": "<base64>"}``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BINARY_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_display(item) for item in value]
    if isinstance(value, dict):
        return {key: to_display(item) for key, item in value.items()}
    return value


def _compact(value: Any) -> str:
    return json.dumps(to_display(value), ensure_ascii=False, separators=(",", ":"))


# ---- --emit EVENT [JSON]... : an option with a variable number of values


class ClientCommand(click.Command):
    """Gathers ``--emit EVENT JSON JSON`` into one option value before click parses.

    Every token after ``--emit EVENT`` up to the next one starting with ``--``
    (a JSON value never does) is one of its arguments. The gathered value is a
    JSON list ``[EVENT, JSON-text, ...]``, unpacked by :func:`_emits`.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                out.extend(args[i:])
                break
            if token == "--emit" or token.startswith("--emit="):
                if token == "--emit":
                    if i + 1 >= len(args):
                        out.append(token)  # click says "requires an argument"
                        break
                    event, i = args[i + 1], i + 2
                else:
                    event, i = token.split("=", 1)[1], i + 1
                values = [event]
                while i < len(args) and not args[i].startswith("--"):
                    values.append(args[i])
                    i += 1
                out += ["--emit", json.dumps(values)]
                continue
            out.append(token)
            i += 1
        return super().parse_args(ctx, out)


@dataclass
class Plan:
    url: str
    auth: dict | None
    headers: dict[str, str]
    query: dict[str, str]
    path: str
    transport: str
    cafile: str | None
    insecure: bool
    rooms: list[str]
    emits: list[tuple[str, list]]
    ack: bool
    ack_timeout: float
    once: bool
    count: int | None
    timeout: float | None
    connect_timeout: float
    as_json: bool
    received: int = field(default=0)


def _emits(values: tuple[str, ...]) -> list[tuple[str, list]]:
    from roomd.protocol.client import RESERVED_EVENTS  # not at import: admin commands skip it

    out = []
    for value in values:
        event, *texts = json.loads(value)
        if not event:
            raise click.BadParameter("the event name must not be empty", param_hint="--emit")
        if event in RESERVED_EVENTS:
            raise click.BadParameter(f"{event!r} is a reserved event name", param_hint="--emit")
        out.append((event, [from_json_arg(text, f"--emit {event}") for text in texts]))
    return out


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not 'Name: value'", param_hint="--header")
        out[name.strip()] = content.strip()
    return out


def _query(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, content = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--query")
        out[key] = content
    return out


def _auth(auth: str | None, token: str | None) -> dict | None:
    value = from_json_arg(auth, "--auth") if auth is not None else None
    if value is not None and not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"token\": \"abc\"}'",
                                 param_hint="--auth")
    if token is not None:
        value = dict(value or {}, token=token)
    return value


# ---- output


def _echo_ack(plan: Plan, namespace: str, event: str, args: list) -> None:
    now = time.time()
    if plan.as_json:
        click.echo(_compact({"time": now, "namespace": namespace, "ack": event, "args": args}))
    else:
        shown = " ".join(_compact(a) for a in args)
        click.echo(f"{clock(now)} {namespace} ack {event} {shown}".rstrip())


def _echo_event(plan: Plan, event: Any) -> None:
    if plan.as_json:
        line: dict[str, Any] = {"time": event.time, "namespace": event.namespace,
                                "event": event.name, "args": event.args}
        if event.wants_ack:
            line["wants_ack"] = True
        click.echo(_compact(line))
    else:
        shown = " ".join(_compact(a) for a in event.args)
        mark = " (ack requested)" if event.wants_ack else ""
        click.echo(f"{clock(event.time)} {event.namespace} {event.name} {shown}".rstrip() + mark)


def _fail(message: str, code: int) -> int:
    click.echo(f"roomd: {message}", err=True)
    return code


# ---- the run


async def _join_and_emit(plan: Plan, client: Any) -> int | None:
    """The --join and --emit steps, in order; an exit status when one fails."""
    from roomd.client import AckTimeout, Disconnected

    try:
        for room in plan.rooms:
            args = await client.call("join", room, timeout=plan.ack_timeout)
            _echo_ack(plan, client.namespace, "join", args)
            if args and isinstance(args[0], dict) and "error" in args[0]:
                return _fail(f"join {room!r} refused: {args[0]['error']}", EXIT_CONNECT)
        for event, args in plan.emits:
            if plan.ack:
                reply = await client.call(event, *args, timeout=plan.ack_timeout)
                _echo_ack(plan, client.namespace, event, reply)
            else:
                await client.emit(event, *args)
    except AckTimeout as exc:
        return _fail(str(exc), EXIT_TIMEOUT)
    except Disconnected as exc:
        return _fail(f"disconnected: {exc}", EXIT_DISCONNECTED)
    except (TypeError, ValueError) as exc:  # e.g. a reserved event name
        return _fail(str(exc), EXIT_USAGE)
    return None


async def _print_events(plan: Plan, client: Any, enough: Any) -> None:
    """Print events from the moment of connecting (so that a full inbox never holds up
    an ack the joins and emits wait for), until --count or the end of the connection."""
    async for event in client:
        _echo_event(plan, event)
        plan.received += 1
        if plan.count is not None and plan.received >= plan.count:
            break
    enough.set()


async def _listen(plan: Plan, client: Any, enough: Any) -> int:
    import trio

    with trio.move_on_after(plan.timeout if plan.timeout is not None else math.inf):
        await enough.wait()
    if plan.count is not None and plan.received >= plan.count:
        return EXIT_OK
    if not client.connected:
        return _fail(f"disconnected: {client.disconnect_reason}", EXIT_DISCONNECTED)
    if plan.count is not None:
        return _fail(f"{plan.received} of {plan.count} events within {plan.timeout:g} s",
                     EXIT_TIMEOUT)
    return EXIT_OK


async def run(plan: Plan) -> int:
    import trio

    from roomd.client import ConnectError, connect

    try:
        async with connect(plan.url, auth=plan.auth, headers=plan.headers, query=plan.query,
                           path=plan.path, transport=plan.transport, cafile=plan.cafile,
                           insecure=plan.insecure, connect_timeout=plan.connect_timeout,
                           inbox_size=0 if plan.once else 256) as client:
            click.echo(f"roomd: connected to {client.target.origin}{client.namespace} "
                       f"(sid {client.sid}, {client.transport})", err=True)
            enough = trio.Event()
            async with trio.open_nursery() as nursery:
                if not plan.once:
                    nursery.start_soon(_print_events, plan, client, enough)
                code = await _join_and_emit(plan, client)
                if code is None:
                    code = EXIT_OK if plan.once else await _listen(plan, client, enough)
                nursery.cancel_scope.cancel()
            return code
    except ConnectError as exc:
        if exc.refused:
            detail = f" {_compact(exc.data)}" if exc.data is not None else ""
            return _fail(f"connect_error: {exc.message}{detail}", EXIT_CONNECT)
        return _fail(str(exc), EXIT_CONNECT)


def _seconds() -> click.FloatRange:
    """A positive number of seconds (at most a year: trio's deadlines stay finite)."""
    return click.FloatRange(min=0, min_open=True, max=86400 * 366)


@click.command("client", cls=ClientCommand, short_help="Connect to a Socket.IO server: join, "
               "emit, print events.")
@click.argument("url")
@click.option("--auth", metavar="JSON", help="The CONNECT payload, a JSON object.")
@click.option("--token", metavar="TOKEN",
              help='Shorthand: auth {"token": TOKEN} (merged with --auth).')
@click.option("--header", "headers", metavar="'NAME: VALUE'", multiple=True,
              help="An HTTP header for the handshake (repeatable).")
@click.option("--path", "sio_path", metavar="PATH", default="/socket.io/", show_default=True,
              help="The server's Socket.IO path.")
@click.option("--query", "queries", metavar="KEY=VALUE", multiple=True,
              help="A query parameter for the handshake (repeatable).")
@click.option("--transport", type=click.Choice(["websocket", "polling"]), default="websocket",
              show_default=True, help="WebSocket at once, or HTTP long-polling only.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
              help="Trust the CA certificates in this file (https/wss).")
@click.option("--insecure", is_flag=True, help="Do not verify the server's TLS certificate.")
@click.option("--join", "rooms", metavar="ROOM", multiple=True,
              help="Join this room (the relay's join event); prints the ack (repeatable).")
@click.option("--emit", "emit_values", metavar="EVENT [JSON]...", multiple=True,
              help="Emit EVENT with these JSON arguments (repeatable; after the URL).")
@click.option("--ack", is_flag=True, help="Wait for each --emit's ack and print it.")
@click.option("--ack-timeout", type=_seconds(), default=10, show_default=True,
              metavar="SECONDS", help="How long to wait for each ack (exit 3 after).")
@click.option("--once", is_flag=True, help="Exit after the joins and emits; print no events.")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="Exit after printing N events.")
@click.option("--timeout", type=_seconds(), metavar="SECONDS",
              help="Stop listening after this long (exit 3 if --count was not reached).")
@click.option("--connect-timeout", type=_seconds(), default=20, show_default=True,
              metavar="SECONDS", help="How long the connection may take (exit 1 after).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
def client_command(url: str, auth: str | None, token: str | None, headers: tuple[str, ...],
                   sio_path: str, queries: tuple[str, ...], transport: str, cafile: str | None,
                   insecure: bool, rooms: tuple[str, ...], emit_values: tuple[str, ...],
                   ack: bool, ack_timeout: float, once: bool, count: int | None,
                   timeout: float | None, connect_timeout: float, as_json: bool) -> None:
    """Connect to the Socket.IO server at URL (http, https, ws or wss; its path is the
    namespace), join rooms, emit events, and print the events received.

    \b
    Exit status: 0 ok, 1 could not connect (the CONNECT_ERROR message is printed)
    or a join was refused, 2 usage error, 3 timeout (an ack, or --count events
    within --timeout), 4 disconnected by the server or the network.
    """
    from roomd.client import parse_url

    if once and (count is not None or timeout is not None):
        raise click.UsageError("--once prints no events: it takes no --count or --timeout")
    if cafile and insecure:
        raise click.UsageError("--cafile and --insecure contradict each other")
    header_map, query_map = _headers(headers), _query(queries)
    try:
        parse_url(url, path=sio_path, query=query_map, headers=header_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    plan = Plan(
        url=url, auth=_auth(auth, token), headers=header_map, query=query_map, path=sio_path,
        transport=transport, cafile=cafile, insecure=insecure, rooms=list(rooms),
        emits=_emits(emit_values), ack=ack, ack_timeout=ack_timeout, once=once, count=count,
        timeout=timeout, connect_timeout=connect_timeout, as_json=as_json)
    import trio

    code = EXIT_OK
    broken_pipe = False
    try:
        code = trio.run(run, plan)
    except* KeyboardInterrupt:
        code = EXIT_OK  # Ctrl-C is how a watch ends
    except* BrokenPipeError:
        broken_pipe = True
    if broken_pipe:
        raise BrokenPipeError  # roomd_cli.main: the reader of stdout went away, exit 0
    raise click.exceptions.Exit(code)
