"""docs/api.md covers the public surface, and its worked example runs.

The chat app of docs/examples/chat.py is served by the real ``roomd serve
--app`` and driven by socket.io-client, as the documentation tells a user to.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
from daemon_proc import running_daemon, short_dir
from harness import ConnectError

import roomd

ROOT = Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
WS = ["websocket"]


def test_every_public_name_is_documented():
    text = API_DOC.read_text()
    documented = set(re.findall(r"`(?:roomd\.)?([A-Za-z_][A-Za-z0-9_]*)", text))
    missing = sorted(name for name in roomd.__all__ if name not in documented)
    assert missing == [], f"docs/api.md does not document {missing}"


def test_every_public_method_is_documented():
    text = API_DOC.read_text()
    missing = []
    for cls in (roomd.Server, roomd.Namespace, roomd.Socket, roomd.BroadcastOperator,
                roomd.RemoteSocket, roomd.Client, roomd.ReceivedEvent):
        for name in dir(cls):
            if not name.startswith("_") and f"{name}" not in text:
                missing.append(f"{cls.__name__}.{name}")
    assert missing == [], f"docs/api.md does not mention {missing}"


async def test_the_chat_example_runs(node):
    config = f'[app]\nmodule = "chat:io"\ndir = "{ROOT / "docs" / "examples"}"\n'
    with short_dir() as directory:
        await _chat(directory, config, node)


async def _chat(directory, config, node):
    async with running_daemon(directory, config) as d:
        with trio.fail_after(30):
            try:
                await node.connect(d.url, "/chat", transports=WS, reconnection=False)
            except ConnectError as refused:
                assert "name required" in str(refused)
            else:
                raise AssertionError("a nameless client got in")
            ann = await node.connect(d.url, "/chat", transports=WS, auth={"name": "ann"})
            assert (await ann.next_event("welcome")).args == ["ann", []]
            bob = await node.connect(d.url, "/chat", transports=WS, auth={"name": "bob"},
                                     force_new=True)
            await bob.next_event("welcome")
            assert await ann.emit_with_ack("enter", "room-1") == [
                {"room": "room-1", "history": []}]
            assert await bob.emit_with_ack("enter", "room-1") == [
                {"room": "room-1", "history": []}]
            assert (await ann.next_event("entered")).args == ["room-1", "bob"]
            assert await ann.emit_with_ack("say", "room-1", "hello") == [{"ok": True}]
            said = await bob.next_event("said")
            assert said.args[0] == "room-1"
            assert said.args[1]["from"] == "ann" and said.args[1]["text"] == "hello"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", said.args[1]["at"])
            assert await bob.emit_with_ack("say", "room-9", "x") == [{"error": "not in room-9"}]
            carl = await node.connect(d.url, "/chat", transports=WS, auth={"name": "carl"},
                                      force_new=True)
            await carl.next_event("welcome")
            entered = await carl.emit_with_ack("enter", "room-1")
            assert [line["text"] for line in entered[0]["history"]] == ["hello"]
            await bob.disconnect()
            left = [(await ann.next_event("left")).args for _ in range(2)]
            assert sorted(left) == [["lobby", "bob"], ["room-1", "bob"]]
