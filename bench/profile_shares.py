"""Where roomd's CPU goes under the yardstick's load, by stage (docs/performance.md).

    .venv/bin/pip install py-spy      # once; py-spy needs ptrace (root or ptrace_scope 0)
    .venv/bin/python -m bench.profile_shares rooms [--tree DIR] [--seconds 10]
    .venv/bin/python -m bench.profile_shares idle  [--tree DIR]

Starts ``roomd serve --app bench.app:io`` from ``--tree`` (default: this
checkout) pinned to core 0, drives it with the yardstick's load generator
(../shared/bench/loadgen.js, its npm packages from $SIO_BENCH_HOME) pinned to
core 1, and samples the server with ``py-spy record --gil`` (only while it
holds the GIL: Python and the C it calls, not the time in system calls) over
the load phase. Each sample is put in the stage of the deepest frame that
names one (table STAGES below); the rest is the trio scheduler. The server's
user and system CPU time over the phase (from /proc) say how much of the
whole the Python part is. Loopback only; every process is ended by PID.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
YARDSTICK = Path(os.environ.get("BENCH_DIR", ROOT.parent / "shared" / "bench"))
BENCH_HOME = Path(os.environ.get("SIO_BENCH_HOME", Path.home() / ".cache" / "sio-bench"))

# (stage, patterns): a sample belongs to the first stage, scanning from the
# innermost frame outwards, one of whose patterns occurs in a frame's name.
STAGES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "rooms": [
        ("writes (Python side of the sends)", ("put_bytes", "WebSocketOutbox.put ",
                                                "EngineSession.send ", "send_many")),
        ("RoomManager: targets and the broadcast loop", ("_targets", "_members_of",
                                                          "RoomManager.", "_broadcast")),
        ("the handler: emit, encode", ("encode_event", "_make_dumps", "_to_json", "Emission.",
                                       "BroadcastOperator.", "Socket.to ", "Socket._operator",
                                       "pub (")),
        ("handler worker: start or wake, dispatch", ("Socket.dispatch", "call_handler",
                                                     "Connection.handle", "Connection._work",
                                                     "_park", "_wake_worker", "_start_worker",
                                                     "spawn", "start_soon")),
        ("decoding: WebSocket frame, Engine.IO, Socket.IO", ("Decoder.feed", "_decode_text",
                                                             "decode_packet", "WebSocketProtocol",
                                                             "_unmask", "json/decoder")),
        ("reading the socket", ("receive_some", "wait_readable", "WebSocketReader._read")),
        ("the message's way to the worker", ("on_message", "EngineSession.receive",
                                             "account_input", "_account")),
    ],
    "idle": [
        ("Socket.IO CONNECT: namespace, socket, membership, reply",
         ("/api/", "/rooms/", "roomd/protocol/sio")),
        ("Engine.IO session: open packet, timers, ids", ("/transport/engine", "/transport/timers",
                                                         "/transport/outbox", "urandom")),
        ("HTTP upgrade request and answer", ("/transport/http", "h11", "/protocol/websocket",
                                             "/transport/limits")),
        ("accept", ("_highlevel_serve_listeners", "_highlevel_socket", "accept",
                    "_highlevel_open_tcp")),
    ],
}

def classify(raw: str, scenario: str) -> tuple[collections.Counter[str], int]:
    """Samples per stage in a py-spy raw (collapsed) profile, and the total."""
    stages = STAGES[scenario]
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        total += n
        frames = stack.split(";")
        stage = "the trio scheduler and the rest"
        for frame in reversed(frames):  # py-spy's "function (path:line)"
            label = next((s for s, patterns in stages if any(p in frame for p in patterns)),
                         None)
            if label is not None:
                stage = label
                break
        shares[stage] += n
    return shares, total


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"roomd did not listen on {port} within {timeout} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def profile(tree: Path, scenario: str, seconds: float, out: Path) -> tuple[str, tuple[int, int]]:
    """Run the load against a fresh server; returns py-spy's raw profile and the
    server's (user, system) clock ticks over the sampled phase."""
    port = _free_port()
    spy = Path(sys.executable).with_name("py-spy")
    env = dict(os.environ, NODE_PATH=str(BENCH_HOME / "node_modules"))
    with tempfile.TemporaryDirectory() as admin:
        server = subprocess.Popen(
            ["taskset", "-c", "0", str(tree / ".venv" / "bin" / "roomd"), "serve",
             "--app", "bench.app:io", "--app-dir", str(tree), "--port", str(port),
             "--socket", f"{admin}/{port}.sock", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_listening(port)
            if scenario == "rooms":
                load = ["--scenario", "rooms", "--clients", "5000", "--publishers", "10",
                        "--rate", "1000", "--duration", str(int(seconds) + 4), "--drain", "2"]
                start, end = "load_start", "load_end"
            else:
                load = ["--scenario", "idle", "--clients", "10000", "--settle", "1"]
                start, end = "idle_start", "idle_full"
            loadgen = subprocess.Popen(
                ["taskset", "-c", "1", "node", str(YARDSTICK / "loadgen.js"), "--port", str(port),
                 "--sync", "--max-time", "120", *load],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            assert loadgen.stdin is not None and loadgen.stdout is not None
            spy_proc: subprocess.Popen[bytes] | None = None
            ticks = (0, 0)
            for line in loadgen.stdout:
                if line.startswith("@mark"):
                    mark = line.split()[1]
                    if mark == start:
                        before = _cpu_ticks(server.pid)
                        spy_proc = subprocess.Popen(
                            [str(spy), "record", "--gil", "-r", "1000", "-f", "raw", "-o", str(out),
                             "--pid", str(server.pid), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(0.5)  # py-spy attaches
                    elif mark == end and spy_proc is not None:
                        after = _cpu_ticks(server.pid)
                        ticks = (after[0] - before[0], after[1] - before[1])
                        spy_proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                        spy_proc.wait(30)
                    loadgen.stdin.write("\n")
                    loadgen.stdin.flush()
            loadgen.wait(60)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(15)
    return out.read_text(), ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(STAGES))
    parser.add_argument("--tree", type=Path, default=ROOT, help="the roomd checkout to run")
    parser.add_argument("--seconds", type=float, default=10, help="rooms: sampled load time")
    parser.add_argument("--raw", type=Path, help="classify this py-spy raw file instead")
    args = parser.parse_args()
    if args.raw:
        raw, ticks = args.raw.read_text(), (0, 0)
    else:
        out = Path(tempfile.mkdtemp(prefix="roomd-profile-")) / f"{args.scenario}.txt"
        raw, ticks = profile(args.tree, args.scenario, args.seconds, out)
        print(f"py-spy profile: {out}")
    shares, total = classify(raw, args.scenario)
    if ticks != (0, 0):
        print(f"server CPU over the phase: user {ticks[0]} ticks, system {ticks[1]} ticks "
              f"(user {ticks[0] / max(1, sum(ticks)):.0%})")
    print(f"{total} samples with the GIL held")
    print("| share of the Python time | stage |\n|---|---|")
    for stage, n in shares.most_common():
        print(f"| {n / max(1, total):.0%} | {stage} |")


if __name__ == "__main__":
    main()
