"""The Socket.IO Admin UI's own page (the npm package's ui/dist) in headless Chromium.

The page is served by a small static server of this test, on another port than roomd, so
the login goes through CORS as it does from admin.socket.io; roomd is the real `roomd serve`
with `[admin_ui]` in its configuration. Playwright (playwright-core,
with Debian's /usr/bin/chromium) logs in, finds the server, its namespaces, a stock
client's socket and its room, makes the socket join a room with the UI's own form, and
sends the UI's "emit" action to that room, which the stock client receives. A screenshot
of the socket's page is saved (in the test's tmp_path, and in $ROOMD_SCREENSHOT_DIR if set).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import bcrypt
import harness
import pytest
import trio
from daemon_proc import running_daemon, short_dir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
UI_DIST = harness.NODE_DIR / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
SIO_BUNDLE = harness.NODE_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
DRIVER = harness.NODE_DIR / "admin_ui_browser.js"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM}: `make install` installs Debian's chromium when run as "
           "root (apt-get install -y chromium)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def static_server(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.deadline(200)
async def test_admin_ui_page(node, tmp_path):
    assert (UI_DIST / "index.html").exists(), "run `make install` (npm ci in tests/node)"
    pages = static_server(UI_DIST)
    try:
        ui_origin = f"http://127.0.0.1:{pages.server_address[1]}"
        password_hash = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        config = f"""
[admin_ui]
enabled = true
password_hash = "{password_hash}"
server_id = "roomd-under-test"
origins = ["{ui_origin}"]
[[namespaces]]
name = "/"
[[namespaces]]
name = "/chat"
"""
        with short_dir() as d:
            async with running_daemon(d, config) as daemon:
                await drive_the_page(node, daemon, ui_origin, tmp_path)
    finally:
        pages.shutdown()
        pages.server_close()


async def drive_the_page(node, daemon, ui_origin: str, tmp_path: Path) -> None:
    client = await node.connect(daemon.url, "/", transports=["websocket"])
    assert await client.emit_with_ack("join", "lobby")
    await node.connect(daemon.url, "/chat", force_new=True)

    screenshot = tmp_path / "admin-ui.png"
    options = {
        "chromium": CHROMIUM, "uiUrl": f"{ui_origin}/index.html", "serverUrl": daemon.url,
        "username": "admin", "password": "s3cret", "userDataDir": str(tmp_path / "profile"),
        "screenshot": str(screenshot), "namespace": "/", "namespaces": ["/", "/chat"],
        "socketId": client.sid, "room": "lobby", "joinRoom": "from-the-ui",
        "emitEvent": "announcement", "emitArgs": [{"text": "hello from the Admin UI"}],
        "serverId": "roomd-under-test", "socketIoBundle": str(SIO_BUNDLE),
    }
    with trio.fail_after(180):
        done = await trio.run_process(["node", str(DRIVER), json.dumps(options)],
                                      capture_stdout=True, capture_stderr=True, check=False)
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line]
    report = f"driver exited {done.returncode}: {lines}\n{done.stderr.decode()[-3000:]}"
    print(report)
    assert done.returncode == 0 and lines[-1] == {"done": True}, report
    steps = [line.get("step") for line in lines]
    for expected in ("logged in", "server shown", "namespaces shown", "socket shown",
                     "room shown", "joined from the UI", "emitted from the page"):
        assert expected in steps, report

    # the Rooms view counts the one socket in lobby (its row: name, type, count)
    row = next(line for line in lines if line.get("step") == "room shown")["row"]
    assert row.split()[:3] == ["lobby", "PUBLIC", "1"], row

    # what the UI did reached roomd and the stock client
    sockets = (await daemon.admin("sockets", namespace="/", room="from-the-ui"))["sockets"]
    assert [s["id"] for s in sockets] == [client.sid]
    got = await client.next_event("announcement", timeout=10)
    assert got.args == [{"text": "hello from the Admin UI"}]
    assert screenshot.stat().st_size > 10_000
    keep = os.environ.get("ROOMD_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / "admin-ui.png")
