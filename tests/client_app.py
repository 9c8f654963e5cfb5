"""The app ``roomd serve --app client_app:io`` runs for the ``roomd client`` tests.

The relay app's ``join`` / ``leave`` / ``publish`` in "/" and "/secure", plus:

- "/secure" refuses a handshake whose ``auth.token`` is not "sekret" (CONNECT_ERROR
  "not authorized" with data ``{"code": 401}``), like tests/node/sio_server.js;
- ``echo`` answers with its arguments; ``whoami`` with the socket's sid, auth, query and
  ``x-test`` header; ``kick`` makes the server disconnect the socket; ``ask_back`` makes
  the server emit ``question`` (with the same arguments) asking for an ack, and answers
  with the client's answer, or ``"no answer"`` after 2 s.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import roomd
from roomd.apps.relay import RelayApp

io = roomd.Server()


def _policy(name: str) -> Any:
    return SimpleNamespace(name=name, client_join=True, client_leave=True, client_publish=True,
                           rooms=("*",))


RelayApp(io, [_policy("/"), _policy("/secure")])


@io.of("/secure").use
async def token_required(socket: Any) -> None:
    auth = socket.handshake.auth
    if not isinstance(auth, dict) or auth.get("token") != "sekret":
        raise roomd.ConnectRefused("not authorized", {"code": 401})


def _extras(namespace: Any) -> None:
    @namespace.on("echo")
    async def echo(socket: Any, *args: Any) -> tuple:
        return args

    @namespace.on("whoami")
    async def whoami(socket: Any, *args: Any) -> dict:
        hs = socket.handshake
        return {"sid": socket.id, "auth": hs.auth, "query": hs.query,
                "header": hs.headers.get("x-test")}

    @namespace.on("ask_back")
    async def ask_back(socket: Any, *args: Any) -> Any:
        try:
            return await socket.emit_with_ack("question", *args, timeout=2)
        except roomd.AckTimeout:
            return "no answer"

    @namespace.on("kick")
    async def kick(socket: Any, *args: Any) -> None:
        await socket.disconnect()


_extras(io.of("/"))
_extras(io.of("/secure"))
