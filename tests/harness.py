"""Test harness: drive real Socket.IO clients against a server running in the test's trio loop.

- :class:`NodeClient` drives the JavaScript ``socket.io-client`` through ``tests/node/client.js``
  (a child process spoken to in JSON lines).
- :class:`PyClient` drives python-socketio's ``AsyncClient`` on its own asyncio loop in a thread.
- :func:`raw_http`, :func:`open_raw_ws`, :func:`raw_ws_upgrade` and :func:`ws_frame` send bytes
  that no well-behaved client would, for malformed-input tests.

Every wait is bounded (``trio.fail_after``); nothing here blocks the trio loop, in which the
server under test runs. Only loopback addresses are used. Binary values are ``bytes`` on the
Python side (``{"$bytes": base64}`` on the wire to client.js).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from children import read_lines, stop

TESTS_DIR = Path(__file__).resolve().parent
NODE_DIR = TESTS_DIR / "node"
CLIENT_JS = NODE_DIR / "client.js"
HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------

async def serve(io: Any, nursery: trio.Nursery, host: str = HOST) -> int:
    """Start ``io.serve`` in ``nursery`` on ``host``:0 and return the bound port."""
    return await nursery.start(io.serve, host, 0)


def url_for(port: int, host: str = HOST) -> str:
    return f"http://{host}:{port}"


# ---------------------------------------------------------------------------------------------
# Shared bits
# ---------------------------------------------------------------------------------------------

class HarnessError(Exception):
    """A client command failed. ``info`` holds the whole reply (error, data, ...)."""

    def __init__(self, message: str, info: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.info = info or {}
        self.data = self.info.get("data")


class ConnectError(HarnessError):
    """The connection was refused: CONNECT_ERROR (``message``/``data``) or a transport error."""


class AckTimeout(HarnessError):
    """No ack arrived in time."""


@dataclass
class Received:
    """Something a client saw: an event from the server, or a lifecycle event.

    ``name`` is the event name; lifecycle events are named ``connect`` (args ``[sid, recovered]``),
    ``disconnect`` (args ``[reason]``), ``connect_error`` (args ``[message, data]`` for node,
    ``[data...]`` for python) and ``upgrade`` (args ``[transport]``, node only).
    ``sock`` is the NodeClient socket handle, ``namespace`` the PyClient namespace.
    """

    name: str
    args: list
    sock: str | None = None
    namespace: str | None = None
    with_ack: bool = False
    raw: dict = field(default_factory=dict, repr=False)


def to_wire(value: Any) -> Any:
    """bytes -> {"$bytes": base64}, recursively (tuples become lists)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


def from_wire(value: Any) -> Any:
    """{"$bytes": base64} -> bytes, recursively."""
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            return base64.b64decode(value["$bytes"])
        return {k: from_wire(v) for k, v in value.items()}
    return value


class Inbox:
    """Events seen by a client, consumed in order by ``next_event`` (trio side only)."""

    def __init__(self) -> None:
        self.pending: list[Received] = []
        self.all: list[Received] = []  # everything ever received, for post-mortems
        self._changed = trio.Event()

    def push(self, ev: Received) -> None:
        self.pending.append(ev)
        self.all.append(ev)
        self._changed.set()
        self._changed = trio.Event()

    def _take(self, match: Callable[[Received], bool]) -> Received | None:
        for i, ev in enumerate(self.pending):
            if match(ev):
                return self.pending.pop(i)
        return None

    async def next(self, match: Callable[[Received], bool], timeout: float, what: str) -> Received:
        try:
            with trio.fail_after(timeout):
                while True:
                    ev = self._take(match)
                    if ev is not None:
                        return ev
                    await self._changed.wait()
        except trio.TooSlowError:
            seen = ", ".join(f"{e.name}{e.args!r}"[:80] for e in self.pending[-10:]) or "nothing"
            raise trio.TooSlowError(f"no {what} within {timeout} s (pending: {seen})") from None

    async def no_event(self, match: Callable[[Received], bool], wait: float) -> None:
        """Assert that nothing matching arrives within ``wait`` seconds."""
        with trio.move_on_after(wait):
            while True:
                for ev in self.pending:
                    if match(ev):
                        raise AssertionError(f"unexpected event {ev!r}")
                await self._changed.wait()


def _matcher(name: str | None, **attrs: Any) -> Callable[[Received], bool]:
    def match(ev: Received) -> bool:
        if name is not None and ev.name != name:
            return False
        return all(v is None or getattr(ev, k) == v for k, v in attrs.items())

    return match


# ---------------------------------------------------------------------------------------------
# A Node.js driver in a child process, spoken to in JSON lines (tests/node/lines.js)
# ---------------------------------------------------------------------------------------------

class JsonLinesChild(abc.ABC):
    """The Python side of tests/node/lines.js: commands with an id on the child's stdin, each
    answered by the stdout line with that id; every other line is an event, handed to
    :meth:`_on_event` (a line that is not JSON is recorded as ``__garbage__``). Subclasses
    start :attr:`proc` and run :meth:`_reader` beside it."""

    name = "child"  # the script, in messages

    def __init__(self, command_timeout: float) -> None:
        self.command_timeout = command_timeout
        self.inbox = Inbox()
        self.proc: trio.Process | None = None
        self._next_id = 0
        self._waiting: dict[int, trio.MemorySendChannel] = {}
        self._send_lock = trio.Lock()
        self._dead: str | None = None

    @abc.abstractmethod
    def _on_event(self, msg: dict) -> None:
        """A line that is not a reply: an event of the child's."""

    @abc.abstractmethod
    def _on_exit(self) -> None:
        """The child's stdout ended (it exited): no command will be answered."""

    async def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            await read_lines(self.proc.stdout, self._on_line)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        self._dead = f"{self.name} exited (code {self.proc.poll()})"
        for ch in list(self._waiting.values()):
            ch.close()
        self._waiting.clear()
        self._on_exit()

    def _on_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self.inbox.push(Received("__garbage__", [line.decode("utf-8", "replace")]))
            return
        if msg.get("id") is not None:
            ch = self._waiting.pop(msg["id"], None)
            if ch is not None:
                ch.send_nowait(msg)
                ch.close()
            return
        self._on_event(msg)

    async def _exchange(self, cmd: str, fields: dict, deadline: float | None = None) -> dict:
        """Send one command and return its reply, ``ok`` or not."""
        if self._dead:
            raise HarnessError(self._dead)
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        cid = self._next_id
        send, recv = trio.open_memory_channel[dict](1)
        self._waiting[cid] = send
        line = json.dumps({"id": cid, "cmd": cmd, **fields}).encode() + b"\n"
        try:
            with trio.fail_after(deadline if deadline is not None else self.command_timeout):
                async with self._send_lock:
                    await self.proc.stdin.send_all(line)
                try:
                    return await recv.receive()
                except trio.EndOfChannel:
                    raise HarnessError(f"{cmd}: {self._dead or f'{self.name} went away'}"
                                       ) from None
        except trio.TooSlowError:
            raise trio.TooSlowError(f"{self.name} did not answer {cmd!r} in time") from None
        finally:
            self._waiting.pop(cid, None)


# ---------------------------------------------------------------------------------------------
# NodeClient: socket.io-client (JavaScript) in a child process
# ---------------------------------------------------------------------------------------------

@dataclass
class NodeSocket:
    """A socket of a :class:`NodeClient`; methods forward to the client with this handle."""

    client: NodeClient
    handle: str
    sid: str
    namespace: str
    transport: str

    async def emit(self, event: str, *args: Any) -> None:
        await self.client.emit(self, event, *args)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float = 5) -> list:
        return await self.client.emit_with_ack(self, event, *args, timeout=timeout)

    async def on(self, event: str, **kw: Any) -> None:
        await self.client.on(self, event, **kw)

    async def off(self, event: str) -> None:
        await self.client.off(self, event)

    async def disconnect(self) -> None:
        await self.client.disconnect(self)

    async def next_event(self, name: str | None = None, timeout: float = 5) -> Received:
        return await self.client.next_event(name, sock=self, timeout=timeout)

    async def no_event(self, name: str | None = None, wait: float = 0.3) -> None:
        await self.client.no_event(name, sock=self, wait=wait)

    async def current_transport(self) -> str | None:
        return await self.client.transport(self)

    async def wait_upgrade(self, timeout: float = 5) -> str:
        return await self.client.wait_upgrade(self, timeout=timeout)

    async def is_connected(self) -> bool:
        return (await self.client.command("connected", sock=self.handle))["connected"]

    async def state(self) -> dict:
        """``{connected, sid, recovered, pid, offset}`` as socket.io-client has them."""
        return await self.client.command("state", sock=self.handle)

    async def reconnect(self) -> None:
        """``socket.connect()`` again after a disconnect (with its pid and offset)."""
        await self.client.command("reconnect", sock=self.handle)

    async def retarget(self, url: str) -> None:
        """Make the client's next reconnection go to ``url`` (another node)."""
        await self.client.command("retarget", sock=self.handle, url=url)

    async def cut(self, silent: bool = False) -> None:
        """Cut the transport as a network failure would (see ``cut`` in client.js)."""
        await self.client.command("cut", sock=self.handle, silent=silent)


def _handle(sock: NodeSocket | str) -> str:
    return sock.handle if isinstance(sock, NodeSocket) else sock


class NodeClient(JsonLinesChild):
    """``async with NodeClient() as c:`` one node process, any number of sockets.

    ``await c.connect(url, namespace, transports=[...], auth=..., force_new=..., multiplex=...,
    query=..., listen=("*",), ack=..., auto_ack=True, **more_io_options)`` returns a
    :class:`NodeSocket`; by default every event the socket receives is recorded (``listen``)
    and acks asked for by the server are answered with ``{"echo": args}``.
    ``join_on_connect={"event": "join", "args": [room]}`` emits that on every connect
    (reconnections too) and records the ack as a "joined" event (``raw["args"]``).
    """

    name = "client.js"

    def __init__(self, *, watchdog: float = 120, command_timeout: float = 10) -> None:
        super().__init__(command_timeout)
        self.watchdog = watchdog
        self._nursery: trio.Nursery | None = None
        self._cm = None

    async def __aenter__(self) -> NodeClient:
        self._cm = self._run()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        cm, self._cm = self._cm, None
        return await cm.__aexit__(*exc)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[NodeClient]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
            raise RuntimeError(f"{NODE_DIR}/node_modules is missing: run `make install`")
        env = dict(os.environ, ROOMD_CLIENT_WATCHDOG_MS=str(int(self.watchdog * 1000)))
        proc = await trio.lowlevel.open_process(
            [node, str(CLIENT_JS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=str(NODE_DIR), env=env,
        )
        self.proc = proc
        body_exc: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                try:
                    yield self
                except BaseException as e:  # re-raised below, not wrapped in a group
                    body_exc = e
                finally:
                    await self._stop()
                    nursery.cancel_scope.cancel()
            if body_exc is not None:
                raise body_exc
        finally:
            await stop(proc, signal.SIGKILL)  # only the process we started, by its PID

    async def _stop(self) -> None:
        proc = self.proc
        assert proc is not None
        with trio.CancelScope(shield=True):
            try:
                await proc.stdin.aclose()  # client.js exits when stdin closes
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            with trio.move_on_after(5):
                await proc.wait()
        await stop(proc, signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _on_exit(self) -> None:
        self.inbox.push(Received("__exit__", [self._dead]))

    def _on_event(self, msg: dict) -> None:
        kind = msg.get("event")
        sock = msg.get("sock")
        if kind == "recv":
            ev = Received(msg["name"], from_wire(msg.get("args", [])), sock=sock,
                          with_ack=bool(msg.get("withAck")), raw=msg)
        elif kind == "disconnect":
            ev = Received("disconnect", [msg.get("reason")], sock=sock, raw=msg)
        elif kind == "connect":
            ev = Received("connect", [msg.get("sid"), bool(msg.get("recovered"))], sock=sock,
                          raw=msg)
        elif kind == "connect_error":
            ev = Received("connect_error", [msg.get("message"), from_wire(msg.get("data"))],
                          sock=sock, raw=msg)
        elif kind == "upgrade":
            ev = Received("upgrade", [msg.get("transport")], sock=sock, raw=msg)
        else:
            ev = Received(str(kind), [], sock=sock, raw=msg)
        self.inbox.push(ev)

    async def command(self, cmd: str, *, deadline: float | None = None, **fields: Any) -> dict:
        """Send one command to client.js and return its reply; raise HarnessError on ok:false.

        ``deadline``: seconds to wait for the reply (default ``command_timeout``).
        """
        reply = await self._exchange(cmd, fields, deadline)
        if not reply.get("ok"):
            err = str(reply.get("error"))
            if cmd == "connect":
                raise ConnectError(err, reply)
            if reply.get("timeout"):
                raise AckTimeout(err, reply)
            raise HarnessError(f"{cmd}: {err}", reply)
        return reply

    async def connect(
        self,
        url: str,
        namespace: str = "/",
        *,
        transports: list[str] | None = None,
        auth: Any = None,
        force_new: bool | None = None,
        multiplex: bool | None = None,
        query: dict | None = None,
        listen: tuple[str, ...] | list[str] = ("*",),
        ack: Any = ...,
        ack_args: list | None = None,
        auto_ack: bool = True,
        keep_on_error: bool = False,
        join_on_connect: dict | None = None,
        timeout: float = 10,
        **io_opts: Any,
    ) -> NodeSocket:
        opts: dict[str, Any] = dict(io_opts)
        for key, val in (("transports", transports), ("auth", auth), ("forceNew", force_new),
                         ("multiplex", multiplex), ("query", query)):
            if val is not None:
                opts[key] = val
        opts.setdefault("timeout", int(timeout * 1000))  # the manager's connect timeout
        reply = await self.command(
            "connect", deadline=timeout + 2, url=url, namespace=namespace, opts=to_wire(opts),
            listen=list(listen), listenOpts=self._ack_fields(ack, ack_args, auto_ack),
            keepOnError=keep_on_error, joinOnConnect=to_wire(join_on_connect),
        )
        return NodeSocket(self, reply["sock"], reply["sid"], namespace, reply.get("transport"))

    @staticmethod
    def _ack_fields(ack: Any, ack_args: list | None, auto_ack: bool) -> dict:
        fields: dict[str, Any] = {"autoAck": auto_ack}
        if ack is not ...:
            fields["ack"] = to_wire(ack)
        if ack_args is not None:
            fields["ackArgs"] = to_wire(list(ack_args))
        return fields

    async def emit(self, sock: NodeSocket | str, event: str, *args: Any) -> None:
        await self.command("emit", sock=_handle(sock), event=event, args=to_wire(list(args)))

    async def emit_with_ack(self, sock: NodeSocket | str, event: str, *args: Any,
                            timeout: float = 5) -> list:
        """Emit with an ack callback; return the list of ack arguments (AckTimeout if none)."""
        reply = await self.command("emitWithAck", deadline=timeout + 2, sock=_handle(sock),
                                   event=event, args=to_wire(list(args)),
                                   timeout=int(timeout * 1000))
        return from_wire(reply["args"])

    async def on(self, sock: NodeSocket | str, event: str, *, ack: Any = ...,
                 ack_args: list | None = None, auto_ack: bool = True) -> None:
        """Record ``event`` ("*" = every event without its own listener)."""
        await self.command("on", sock=_handle(sock), event=event,
                           **self._ack_fields(ack, ack_args, auto_ack))

    async def off(self, sock: NodeSocket | str, event: str) -> None:
        await self.command("off", sock=_handle(sock), event=event)

    async def disconnect(self, sock: NodeSocket | str) -> None:
        await self.command("disconnect", sock=_handle(sock))

    async def transport(self, sock: NodeSocket | str) -> str | None:
        return (await self.command("transport", sock=_handle(sock)))["transport"]

    async def wait_upgrade(self, sock: NodeSocket | str, timeout: float = 5) -> str:
        reply = await self.command("waitUpgrade", deadline=timeout + 2, sock=_handle(sock),
                                   timeout=int(timeout * 1000))
        return reply["transport"]

    async def next_event(self, name: str | None = None, sock: NodeSocket | str | None = None,
                         timeout: float = 5) -> Received:
        """The oldest not yet consumed event matching ``name`` / ``sock``; waits ``timeout`` s."""
        handle = _handle(sock) if sock is not None else None
        return await self.inbox.next(_matcher(name, sock=handle), timeout,
                                     f"event {name or '*'} on {handle or 'any socket'}")

    async def no_event(self, name: str | None = None, sock: NodeSocket | str | None = None,
                       wait: float = 0.3) -> None:
        handle = _handle(sock) if sock is not None else None
        await self.inbox.no_event(_matcher(name, sock=handle), wait)

    async def close(self) -> None:
        """Ask client.js to exit (also done by leaving the ``async with``)."""
        try:
            await self.command("close", deadline=5)
        except HarnessError:
            pass


# ---------------------------------------------------------------------------------------------
# PyClient: python-socketio's AsyncClient on its own asyncio loop, in its own thread
# ---------------------------------------------------------------------------------------------

def _tls_session(ca_file: str) -> Any:
    """An aiohttp session trusting only ``ca_file`` (called in the asyncio thread)."""
    import ssl

    import aiohttp

    context = ssl.create_default_context(cafile=ca_file)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def _echo_ack(event: str, namespace: str, args: list) -> Any:
    return {"echo": list(args)}


class PyClient:
    """``async with PyClient() as c:`` one ``socketio.AsyncClient`` (one Engine.IO connection).

    Every event on every namespace is recorded (``on('*', namespace='*')``), as are the
    ``connect`` / ``disconnect`` / ``connect_error`` lifecycle events; read them with
    ``next_event``. When the server asks for an ack, the client answers with
    ``ack(event, namespace, args)`` (default ``{"echo": args}``; return a tuple for several
    ack arguments, None for none). ``ack`` runs in the asyncio thread: keep it trivial.
    ``ssl_ca``: a PEM file of the CA the client trusts for https/wss (and nothing else).
    """

    def __init__(self, *, ack: Callable[[str, str, list], Any] = _echo_ack,
                 reconnection: bool = False, ssl_ca: str | None = None,
                 **client_kwargs: Any) -> None:
        self._ack = ack
        self._client_kwargs = dict(reconnection=reconnection, **client_kwargs)
        if ssl_ca is not None:
            self._client_kwargs["http_session"] = functools.partial(_tls_session, ssl_ca)
        self.inbox = Inbox()
        self.sio: Any = None  # socketio.AsyncClient, lives in the asyncio thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> PyClient:
        self._token = trio.lowlevel.current_trio_token()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._thread_main, name="PyClient-asyncio",
                                        daemon=True)
        self._thread.start()
        self.sio = await self._call(self._make_client(), 10)
        return self

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self._loop)
                for t in pending:
                    t.cancel()
                if pending:
                    self._loop.run_until_complete(
                        asyncio.wait(pending, timeout=2))
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()

    async def __aexit__(self, *exc: Any) -> None:
        with trio.CancelScope(shield=True):
            try:
                if self.sio is not None and self.sio.eio.state == "connected":
                    await self._call(self.sio.disconnect(), 5)
            except Exception:
                pass
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                thread = self._thread
                await trio.to_thread.run_sync(thread.join, 10, abandon_on_cancel=True)
                if thread.is_alive():
                    raise RuntimeError("PyClient's asyncio thread did not stop")

    async def _make_client(self) -> Any:
        import socketio  # python-socketio, a test extra

        sio = socketio.AsyncClient(**self._client_kwargs)

        def catch_all(event: str, namespace: str, *args: Any) -> Any:
            self._record(Received(event, list(args), namespace=namespace))
            return self._ack(event, namespace, list(args))

        def on_connect(namespace: str) -> None:
            self._record(Received("connect", [sio.get_sid(namespace)], namespace=namespace))

        def on_disconnect(namespace: str, reason: Any = None) -> None:
            self._record(Received("disconnect", [reason], namespace=namespace))

        def on_connect_error(namespace: str, *data: Any) -> None:
            self._record(Received("connect_error", list(data), namespace=namespace))

        sio.on("*", catch_all, namespace="*")
        sio.on("connect", on_connect, namespace="*")
        sio.on("disconnect", on_disconnect, namespace="*")
        sio.on("connect_error", on_connect_error, namespace="*")
        return sio

    def _record(self, ev: Received) -> None:  # asyncio thread -> trio thread, in order
        try:
            self._token.run_sync_soon(self.inbox.push, ev)
        except trio.RunFinishedError:
            pass

    async def _call(self, coro: Any, timeout: float) -> Any:
        """Run ``coro`` on the asyncio loop; wait for it without blocking trio, at most
        ``timeout`` s (then it is cancelled and trio.TooSlowError raised)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_f: Any) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        try:
            with trio.fail_after(timeout):
                await done.wait()
        except BaseException:
            fut.cancel()
            raise
        return fut.result()

    # -- API -----------------------------------------------------------------------------------
    async def connect(self, url: str, namespaces: list[str] | str | None = None, *,
                      transports: list[str] | None = None, auth: Any = None,
                      headers: dict | None = None, socketio_path: str = "socket.io",
                      timeout: float = 5) -> None:
        """Connect and wait until every namespace is connected; a refused namespace raises
        :class:`ConnectError` (its CONNECT_ERROR data is in the ``connect_error`` event)."""
        import socketio

        if namespaces is None:
            namespaces = ["/"]
        try:
            await self._call(self.sio.connect(
                url, headers=headers or {}, auth=auth, transports=transports,
                namespaces=namespaces, socketio_path=socketio_path, wait_timeout=timeout,
            ), timeout + 2)
        except socketio.exceptions.ConnectionError as e:
            raise ConnectError(str(e)) from e

    async def emit(self, event: str, *args: Any, namespace: str | None = None) -> None:
        await self._call(self.sio.emit(event, data=tuple(args), namespace=namespace), 5)

    async def call(self, event: str, *args: Any, namespace: str | None = None,
                   timeout: float = 5) -> list:
        """Emit with an ack; return the list of ack arguments (AckTimeout if none)."""
        got: asyncio.Future | None = None

        async def go() -> list:
            nonlocal got
            got = asyncio.get_running_loop().create_future()

            def cb(*ack_args: Any) -> None:
                if not got.done():
                    got.set_result(list(ack_args))

            await self.sio.emit(event, data=tuple(args), namespace=namespace, callback=cb)
            try:
                return await asyncio.wait_for(got, timeout)
            except TimeoutError:
                raise AckTimeout(f"no ack for {event!r} within {timeout} s") from None

        return await self._call(go(), timeout + 2)

    async def next_event(self, name: str | None = None, namespace: str | None = None,
                         timeout: float = 5) -> Received:
        """The oldest not yet consumed event matching ``name`` / ``namespace``."""
        return await self.inbox.next(_matcher(name, namespace=namespace), timeout,
                                     f"event {name or '*'} on {namespace or 'any namespace'}")

    async def no_event(self, name: str | None = None, namespace: str | None = None,
                       wait: float = 0.3) -> None:
        await self.inbox.no_event(_matcher(name, namespace=namespace), wait)

    async def disconnect(self, timeout: float = 5) -> None:
        await self._call(self.sio.disconnect(), timeout)

    @property
    def sid(self) -> str | None:
        """The socket id in the "/" namespace."""
        return self.sio.get_sid("/")

    def get_sid(self, namespace: str = "/") -> str | None:
        return self.sio.get_sid(namespace)

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    def transport(self) -> str | None:
        return self.sio.transport()


# ---------------------------------------------------------------------------------------------
# Raw HTTP and WebSocket, for malformed-input tests
# ---------------------------------------------------------------------------------------------

class NoResponse(Exception):
    """The server closed the connection without a (complete) HTTP response."""

    def __init__(self, message: str, received: bytes = b"") -> None:
        super().__init__(message)
        self.received = received


def build_request(method: str, target: str, *, headers: dict | list | None = None,
                  body: bytes = b"", host: str = HOST, close: bool = True) -> bytes:
    """An HTTP/1.1 request; adds Host, Content-Length (when there is a body) and
    ``Connection: close`` unless given."""
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if "host" not in names:
        hdrs.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    if close and "connection" not in names:
        hdrs.append(("Connection", "close"))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
    return head.encode("latin-1") + b"\r\n" + body


async def raw_http(port: int, request_bytes: bytes, timeout: float = 5,
                   host: str = HOST) -> tuple[int, dict[str, str], bytes]:
    """Send ``request_bytes`` as they are; return ``(status, headers, body)`` of the first
    response (header names lower-cased, repeated headers joined with ", ").
    Raises :class:`NoResponse` if the server closes without a complete response."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    # the request bytes are ours, possibly invalid: tell h11 a request went out
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", host)]))
    conn.send(h11.EndOfMessage())
    received = b""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            try:
                await stream.send_all(request_bytes)
            except trio.BrokenResourceError:
                pass  # the server may answer and close before reading everything
            status, headers, body = None, {}, bytearray()
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise NoResponse(f"invalid HTTP response: {e}", received) from e
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    received += data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    for k, v in event.headers:
                        k, v = k.decode("latin-1"), v.decode("latin-1")
                        headers[k] = f"{headers[k]}, {v}" if k in headers else v
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return status, headers, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise NoResponse("connection closed without a complete response", received)


async def http_request(port: int, method: str, target: str, *, headers: dict | None = None,
                       body: bytes = b"", timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """``raw_http`` with a well-formed request built by :func:`build_request`."""
    return await raw_http(port, build_request(method, target, headers=headers, body=body),
                          timeout)


class RawWS:
    """A trio-websocket connection to the Engine.IO endpoint, sending messages as given."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    async def recv(self, timeout: float = 5) -> str | bytes:
        """The next message; raises trio_websocket.ConnectionClosed when the server closed."""
        with trio.fail_after(timeout):
            return await self.ws.get_message()

    async def recv_skip_pings(self, timeout: float = 5) -> str | bytes:
        """The next message that is not an Engine.IO ping (pings are answered with pong)."""
        with trio.fail_after(timeout):
            while True:
                msg = await self.ws.get_message()
                if msg == "2":
                    await self.ws.send_message("3")
                    continue
                return msg

    async def handshake(self, timeout: float = 5) -> dict:
        """Read the Engine.IO open packet ("0{...}") and return its JSON."""
        msg = await self.recv(timeout)
        assert isinstance(msg, str) and msg.startswith("0"), f"not an open packet: {msg!r}"
        return json.loads(msg[1:])

    async def wait_closed(self, timeout: float = 5) -> Any:
        """Read (and drop) messages until the server closes; return the CloseReason."""
        import trio_websocket

        with trio.fail_after(timeout):
            try:
                while True:
                    await self.ws.get_message()
            except trio_websocket.ConnectionClosed as e:
                return e.reason

    @property
    def closed(self) -> Any:
        return self.ws.closed


@asynccontextmanager
async def open_raw_ws(port: int, path: str = "/socket.io/",
                      query: str = "EIO=4&transport=websocket", *, timeout: float = 5,
                      host: str = HOST) -> AsyncIterator[RawWS]:
    """``async with open_raw_ws(port) as ws:`` — ``await ws.handshake()``, ``ws.send("40")``…"""
    import trio_websocket

    url = f"ws://{host}:{port}{path}" + (f"?{query}" if query else "")
    # connect_timeout bounds the handshake; a fail_after around __aenter__ alone would
    # misnest trio-websocket's internal nursery.
    async with trio_websocket.open_websocket_url(
        url, connect_timeout=timeout, disconnect_timeout=timeout
    ) as ws:
        yield RawWS(ws)


async def raw_ws_upgrade(port: int, target: str = "/socket.io/?EIO=4&transport=websocket", *,
                         extra_headers: dict | None = None, timeout: float = 5,
                         host: str = HOST) -> tuple[trio.SocketStream, int, bytes]:
    """Do the WebSocket upgrade by hand; return ``(stream, status, leftover)`` where leftover
    is whatever followed the response head. Send anything with ``stream.send_all(ws_frame(...))``.
    The caller closes the stream (``async with stream``)."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
               "Sec-WebSocket-Version": "13", **(extra_headers or {})}
    req = build_request("GET", target, headers=headers, host=f"{host}:{port}", close=False)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        try:
            await stream.send_all(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    raise NoResponse("closed during the WebSocket upgrade", buf)
                buf += data
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    head, _, leftover = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return stream, status, leftover


def ws_frame(payload: bytes | str, opcode: int | None = None, *, fin: bool = True,
             mask: bool = True, rsv: int = 0, length: int | None = None) -> bytes:
    """One raw WebSocket frame (client frames are masked). ``length`` overrides the declared
    payload length, ``rsv`` sets the RSV bits (0-7), for deliberately broken frames."""
    if isinstance(payload, str):
        payload = payload.encode()
        opcode = 1 if opcode is None else opcode
    opcode = 2 if opcode is None else opcode
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


async def read_ws_frame(stream: trio.abc.ReceiveStream, buf: bytearray,
                        timeout: float = 5) -> tuple[int, bytes] | None:
    """Read one (unmasked, server) frame: ``(opcode, payload)``, or None at EOF. ``buf`` holds
    bytes already received (e.g. the leftover of :func:`raw_ws_upgrade`) and is consumed."""

    async def need(n: int) -> bool:
        while len(buf) < n:
            data = await stream.receive_some(65536)
            if not data:
                return False
            buf.extend(data)
        return True

    with trio.fail_after(timeout):
        if not await need(2):
            return None
        opcode, n, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
        masked = bool(buf[1] & 0x80)
        if n == 126:
            if not await need(4):
                return None
            n, pos = struct.unpack("!H", bytes(buf[2:4]))[0], 4
        elif n == 127:
            if not await need(10):
                return None
            n, pos = struct.unpack("!Q", bytes(buf[2:10]))[0], 10
        if masked:
            pos += 4
        if not await need(pos + n):
            return None
        payload = bytes(buf[pos:pos + n])
        if masked:
            key = buf[pos - 4:pos]
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        del buf[:pos + n]
        return opcode, payload
