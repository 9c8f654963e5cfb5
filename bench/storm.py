#!/usr/bin/env python3
"""Reconnect storm: N connected clients dropped at once reconnect with the stock backoff.

    .venv/bin/python -m bench.storm --clients 10000 --reps 2 --out /tmp/roomd-storm
                                    (make bench-storm runs this; docs/performance.md)

Issue 12's figure: how long until every client is connected and joined again, roomd against
Node.js socket.io 4.8 (python-socketio too with ``--servers roomd,node,py``), interleaved
(for each repetition and each way of dropping: roomd, node, ...), each run on a fresh server
pinned to --server-cpu with the load generator on --loadgen-cpu (taskset). The servers run the
yardstick's bench app (``roomd serve --app bench.app:io``, ``../shared/bench/servers``);
the clients are the stock socket.io-client (tests/node), driven by bench/storm.js: each one
joins its room of 10 (``join`` with an ack) on every "connect" event, and keeps the stock
reconnection backoff (1 s doubling to 5 s, randomised by half; 20 s connect timeout).

Once all N are joined, they are dropped at once, one of two ways (--modes):

- ``restart``: the server is restarted, as a deploy does: SIGTERM (SIGKILL after 5 s), and
  as soon as it has exited a fresh server is started on the same port. Timed from when the
  new server listens (the first TCP connect that succeeds, probed every 10 ms).
- ``cut``: the network fails under a server that stays: the load generator resets every
  client's TCP connection (SO_LINGER 0: an RST, no WebSocket or Engine.IO close), so both
  ends learn of it at once, as when a load balancer or NAT in between drops its
  connections. (A silent cut, where nothing reaches either end, would be detected by
  each side's heartbeat at its own time, up to 45 s later: no storm.) Timed from the cut.

Per run: the time until all are joined again (and the clients' rejoin percentiles), the
server's CPU over that time (schedstat of its process tree), the load generator's CPU, the
clients' disconnect reasons, connect_error reasons with the HTTP status of refused upgrades,
reconnection attempts, and for roomd its own counters (``roomd status`` over the admin
socket: requests refused by status, sessions closed by reason). Writes results.json and
summary.md into --out, every server's and load generator's log under logs/. Only processes
started here are ended, each by its PID (its own process group); every wait is bounded.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.proctree import end_group, tree_cpu_s, tree_rss_kib

ROOT = Path(__file__).resolve().parent.parent
# The yardstick (its Node.js and python-socketio bench apps): ../shared/bench beside the
# checkout, or beside the checkout's parent for a worktree under it; BENCH_DIR says.
BENCH = Path(os.environ.get("BENCH_DIR") or next(
    (p for p in (ROOT.parent / "shared" / "bench", ROOT.parent.parent / "shared" / "bench")
     if (p / "bench.py").is_file()), ROOT.parent / "shared" / "bench"))
BENCH_HOME = Path(os.environ.get("SIO_BENCH_HOME") or Path.home() / ".cache" / "sio-bench")
HOST = "127.0.0.1"
NOFILE = 65536


# ------------------------------------------------------------------ /proc
def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows: connections the full accept queue could not take
    (machine-wide: other work on the machine counts too)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


# ------------------------------------------------------------------ servers
def server_command(name: str, port: int, admin_dir: str, a: argparse.Namespace
                   ) -> tuple[list[str], dict[str, str], Path]:
    """The command, extra environment and working directory of one server kind.

    The yardstick's bench apps; with --transports default, their variants that also
    poll (bench/storm_app.py, bench/storm_node.js); with --addresses, roomd's app
    exempts no address from its per-address limits.
    """
    polling = a.transports == "default"
    if name == "roomd" or name in a.roomd_also:
        executable = a.roomd_also.get(name, a.roomd)
        app, env = "bench.app:io", {}
        if polling or a.addresses:
            app = "bench.storm_app:io"
            env = {"ROOMD_STORM_TRANSPORTS": "polling,websocket" if polling else "websocket",
                   "ROOMD_STORM_EXEMPT": "none" if a.addresses else "loopback"}
        return ([executable, "serve", "--app", app, "--app-dir", str(ROOT), "--port", str(port),
                 "--socket", f"{admin_dir}/{port}.sock", "--log-level", "warning"], env, ROOT)
    if name == "node":
        modules = BENCH_HOME / "node_modules"
        if not (modules / "socket.io").is_dir():
            modules = ROOT / "tests" / "node" / "node_modules"
        script = (ROOT / "bench" / "storm_node.js" if polling
                  else BENCH / "servers" / "node_socketio.js")
        return (["node", str(script), str(port)], {"NODE_PATH": str(modules)}, BENCH)
    if name == "py" and not polling:
        return ([str(BENCH_HOME / ".venv" / "bin" / "python"),
                 str(BENCH / "servers" / "py_socketio.py"), str(port)], {}, BENCH)
    raise SystemExit(f"storm.py: no server {name!r} here (roomd, node; py with WebSocket only)")


class Server:
    """One server process, pinned, in its own process group; its log appended to ``log``."""

    def __init__(self, name: str, port: int, a: argparse.Namespace, admin_dir: str,
                 log: Path) -> None:
        cpu = a.server_cpu
        self.name, self.port = name, port
        argv, env, cwd = server_command(name, port, admin_dir, a)
        roomd = name == "roomd" or name in a.roomd_also
        self.admin = f"{admin_dir}/{port}.sock" if roomd else None
        self.roomd = a.roomd_also.get(name, a.roomd)
        self.log = open(log, "a")
        self.log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu, *argv], cwd=cwd, env={**os.environ, **env, "PORT": str(port)},
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_raise_nofile)
        self.pid = self.proc.pid

    def wait_listening(self, timeout: float = 30.0) -> float:
        """Probe the port every 10 ms; the monotonic time of the first connect that succeeds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return time.monotonic()
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> float:
        """Signal the group (by its id, ours); SIGKILL after ``grace``. Seconds it took."""
        t0 = time.monotonic()
        end_group(self.proc, sig, grace)
        self.log.close()
        return time.monotonic() - t0

    def status(self) -> dict | None:
        """``roomd status --json`` over the admin socket (roomd only)."""
        if self.admin is None or self.proc.poll() is not None:
            return None
        done = subprocess.run([self.roomd, "--socket", self.admin,
                               "status", "--json"], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return {"error": done.stderr.strip()}
        full = json.loads(done.stdout)
        return {k: full.get(k) for k in ("connections", "sockets", "rooms", "closed", "refused")}


# ------------------------------------------------------------------ load generators
class LoadGen:
    """One bench/storm.js process: its stdout lines read by a thread, its stdin written."""

    def __init__(self, port: int, first: int, clients: int, a: argparse.Namespace,
                 log: Path) -> None:
        argv = ["taskset", "-c", a.loadgen_cpu, "node", str(ROOT / "bench" / "storm.js"),
                "--port", str(port), "--first", str(first), "--clients", str(clients),
                "--transports", a.transports, "--storm-time", str(a.storm_time),
                "--addresses", "1" if a.addresses else "0",
                "--max-time", str(a.storm_time + a.open_time + 60)]
        self.log = open(log, "a")
        self.log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1,
                                     start_new_session=True, preexec_fn=_raise_nofile)
        self.lines: list[tuple[float, str]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append((time.monotonic(), line.strip()))
                self.changed.notify_all()
        with self.changed:
            self.lines.append((time.monotonic(), "@eof"))
            self.changed.notify_all()

    def wait_for(self, prefixes: tuple[str, ...], deadline: float) -> tuple[float, str] | None:
        """The first line starting with one of ``prefixes`` (or "@eof"), by ``deadline``."""
        with self.changed:
            while True:
                for stamp, line in self.lines:
                    if line.startswith(prefixes) or line == "@eof":
                        return stamp, line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def send(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def finish(self) -> dict | None:
        """Ask it to exit; its result line (or None); killed by PID when it does not."""
        self.send("exit")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
        results = [line for _, line in self.lines if line.startswith("{")]
        return json.loads(results[-1]) if results else None


def payload(line: str) -> dict:
    return json.loads(line.split(" ", 1)[1]) if " " in line else {}


# ------------------------------------------------------------------ one run
def one_run(name: str, mode: str, a: argparse.Namespace, logs: Path, admin_dir: str) -> dict:
    port = free_port()
    result: dict = {"server": name, "mode": mode, "clients": a.clients, "port": port,
                    "started": time.strftime("%H:%M:%S"), "load_average": load_average()}
    server = Server(name, port, a, admin_dir, logs / f"server-{name}.log")
    gens: list[LoadGen] = []
    try:
        server.wait_listening()
        share = -(-a.clients // a.procs // 10) * 10  # rooms of 10 stay in one process
        first = 0
        while first < a.clients:
            n = min(share, a.clients - first)
            gens.append(LoadGen(port, first, n, a, logs / f"loadgen-{name}.log"))
            first += n
        deadline = time.monotonic() + a.open_time
        ready = [g.wait_for(("@ready",), deadline) for g in gens]
        if any(r is None or not r[1].startswith("@ready") for r in ready):
            result["error"] = f"the clients were not all joined within {a.open_time} s"
            return result
        result["open_s"] = round(max(payload(r[1])["open_ms"] for r in ready if r) / 1000, 2)
        result["rss_mib_before"] = round(tree_rss_kib(server.pid) / 1024, 1)
        time.sleep(a.settle)
        result["load_average_storm"] = load_average()
        overflows_drop = listen_overflows()
        if mode == "restart":
            t_drop = time.monotonic()
            for g in gens:
                g.send("storm")
            result["old_server_exit_s"] = round(server.stop(), 3)
            server = Server(name, port, a, admin_dir, logs / f"server-{name}.log")
            t0 = server.wait_listening()
            result["down_s"] = round(t0 - t_drop, 3)
        else:
            t0 = time.monotonic()
            for g in gens:
                g.send("cut")
        cpu0 = tree_cpu_s(server.pid)
        overflows0 = listen_overflows() if mode == "cut" else overflows_drop
        deadline = t0 + a.storm_time + 5
        ends = [g.wait_for(("@rejoined", "@timeout"), deadline) for g in gens]
        cpu1 = tree_cpu_s(server.pid)
        result["listen_overflows"] = listen_overflows() - overflows0
        t_end = max((e[0] for e in ends if e), default=time.monotonic())
        reports = [payload(e[1]) for e in ends if e and e[1].startswith(("@rejoined", "@timeout"))]
        complete = len(reports) == len(gens) and all(e and e[1].startswith("@rejoined")
                                                     for e in ends)
        result["complete"] = complete
        result["all_joined_s"] = round(t_end - t0, 3) if complete else None
        result["server_cpu_s"] = round(cpu1 - cpu0, 3)
        result["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / (t_end - t0), 1)
        result["rss_mib_after"] = round(tree_rss_kib(server.pid) / 1024, 1)
        result["loadgen"] = merge(reports)
        result["roomd_status"] = server.status()
        return result
    except (RuntimeError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        for g in gens:
            g.finish()
        server.stop()


def merge(reports: list[dict]) -> dict:
    """Several load generators' reports as one (counts summed; percentiles: the worst)."""
    merged: dict = {}
    for r in reports:
        for key, value in r.items():
            if isinstance(value, dict) and key != "rejoin_ms":
                into = merged.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            elif key == "rejoin_ms":
                into = merged.setdefault(key, {})
                for k, v in value.items():
                    if v is not None:
                        into[k] = max(into.get(k) or 0, v)
            elif key in ("loadgen_cpu_pct", "rss_mib"):
                merged.setdefault(key, []).append(value)
            elif isinstance(value, (int, float)) and key not in ("storm_ms", "all_disconnected_ms"):
                merged[key] = merged.get(key, 0) + value
            else:
                merged[key] = max(merged.get(key) or 0, value or 0)
    return merged


# ------------------------------------------------------------------ summary
def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    middle = statistics.median(values)
    return int(middle) if middle == int(middle) else round(middle, 3)


def _lg(run: dict, key: str, default=None):
    return (run.get("loadgen") or {}).get(key, default)


def _rows(mode: str) -> list[tuple[str, object]]:
    """The summary's figures: (label, function of one server's runs)."""
    rows: list[tuple[str, object]] = [
        ("runs complete", lambda rr: f"{sum(1 for r in rr if r.get('complete'))}/{len(rr)}"),
        ("**all joined again (s)**", lambda rr: med([r.get("all_joined_s") for r in rr])),
    ]
    if mode == "restart":
        rows += [
            ("old server's exit after SIGTERM / down until listening (s)",
             lambda rr: f"{med([r.get('old_server_exit_s') for r in rr])} / "
                        f"{med([r.get('down_s') for r in rr])}"),
            ("all joined again, from SIGTERM (s)",
             lambda rr: med([r["all_joined_s"] + r["down_s"] for r in rr
                             if r.get("all_joined_s") is not None])),
        ]
    rows.append(("clients joined again at p50 / p90 / p99 (s after the drop)",
                 lambda rr: " / ".join(str(med([(_lg(r, "rejoin_ms", {}).get(q) or 0) / 1000
                                                for r in rr if r.get("loadgen")]))
                                       for q in ("p50", "p90", "p99"))))
    rows += [
        ("server CPU (s) / % of a core",
         lambda rr: f"{med([r.get('server_cpu_s') for r in rr])} / "
                    f"{med([r.get('server_cpu_pct') for r in rr])}"),
        ("load generator CPU (% of a core)",
         lambda rr: med([max(_lg(r, "loadgen_cpu_pct") or [0]) for r in rr])),
        ("reconnection attempts", lambda rr: med([_lg(r, "reconnect_attempts") for r in rr])),
        ("connect_error (sum over runs)", lambda rr: _counts(rr, "connect_errors")),
        ("refused upgrades by HTTP status (sum)", lambda rr: _counts(rr, "http_status")),
        ("kernel listen queue overflows (machine-wide)",
         lambda rr: med([r.get("listen_overflows") for r in rr])),
        ("join acks timed out (sum)", lambda rr: sum(_lg(r, "join_timeouts", 0) for r in rr)),
        ("roomd status after: refused / closed",
         lambda rr: "; ".join(f"{(r.get('roomd_status') or {}).get('refused')} / "
                              f"{(r.get('roomd_status') or {}).get('closed')}"
                              for r in rr if r.get("roomd_status")) or "-"),
    ]
    return rows


def summarize(runs: list[dict], a: argparse.Namespace, started: str, finished: str) -> str:
    lines = [f"# Reconnect storm ({started} – {finished})", "",
             f"{a.clients} stock socket.io-client clients (transports: {a.transports}"
             f"{', each from its own address' if a.addresses else ''}), rooms of 10, joined "
             f"on every connect; {a.reps} repetition(s), interleaved; server on CPU "
             f"{a.server_cpu}, {a.procs} load generator process(es) on CPU {a.loadgen_cpu}.",
             "`restart`: timed from the new server listening; `cut`: from the cut; until every "
             "client is joined again. Medians over the repetitions; every run below.", ""]
    for mode in a.modes:
        per = {s: [r for r in runs if r["server"] == s and r["mode"] == mode] for s in a.servers}
        lines += [f"## {mode}", "", "| figure | " + " | ".join(a.servers) + " |",
                  "|---|" + "---|" * len(a.servers)]
        for label, fn in _rows(mode):
            cells = " | ".join(str(fn(per[s])) for s in a.servers)
            lines.append(f"| {label} | {cells} |")
        lines.append("")
    lines += ["## Runs", "",
              "| rep | server | mode | start | load average | all joined (s) | server CPU (s) | "
              "attempts | connect_error | overflows | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        errors = sum((_lg(r, "connect_errors") or {}).values())
        lines.append(
            f"| {r.get('rep')} | {r['server']} | {r['mode']} | {r['started']} | "
            f"{r.get('load_average_storm', r['load_average'])} | {r.get('all_joined_s')} | "
            f"{r.get('server_cpu_s')} | {_lg(r, 'reconnect_attempts')} | {errors} | "
            f"{r.get('listen_overflows')} | {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def _counts(runs: list[dict], key: str) -> str:
    total: dict[str, int] = {}
    for r in runs:
        for k, v in (r.get("loadgen", {}).get(key) or {}).items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items(), key=lambda i: -i[1])) or "0"


# ------------------------------------------------------------------ main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="roomd,node", help="roomd,node[,py] (default roomd,node)")
    p.add_argument("--modes", default="restart,cut", help="restart,cut (default both)")
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--procs", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--transports", default="websocket",
                   help="the clients' transports: websocket (default, as the yardstick's app) "
                        "or default (polling, then the upgrade: needs servers that poll)")
    p.add_argument("--addresses", action="store_true",
                   help="each client from its own loopback address (127.10.x.y), and roomd "
                        "exempting none: the per-address limits at their defaults")
    p.add_argument("--roomd", default=str(ROOT / ".venv" / "bin" / "roomd"),
                   help="the roomd executable (default: this checkout's venv)")
    p.add_argument("--roomd-also", action="append", default=[], metavar="NAME=EXECUTABLE",
                   help="one more roomd to run beside the others as server NAME (another "
                        "checkout's venv/bin/roomd, to compare branches); repeatable")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--loadgen-cpu", default="1")
    p.add_argument("--open-time", type=float, default=180, help="bound on the initial connects")
    p.add_argument("--storm-time", type=float, default=120, help="bound on one storm")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--out", default=f"/tmp/roomd-storm-{time.strftime('%Y%m%d-%H%M%S')}")
    a = p.parse_args()
    a.servers = a.servers.split(",")
    a.roomd_also = dict(item.split("=", 1) for item in a.roomd_also)
    a.servers[1:1] = [name for name in a.roomd_also if name not in a.servers]
    a.modes = a.modes.split(",")
    out = Path(a.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs: list[dict] = []
    print(f"storm: {started}, load average {load_average()}, output in {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="roomd-storm-") as admin_dir:
        for rep in range(a.reps):
            for mode in a.modes:
                for name in a.servers:
                    r = one_run(name, mode, a, logs, admin_dir)
                    r["rep"] = rep + 1
                    runs.append(r)
                    lg = r.get("loadgen", {})
                    print(f"  rep {rep + 1} {mode:7} {name:5}: all joined in "
                          f"{r.get('all_joined_s')} s, server CPU {r.get('server_cpu_s')} s, "
                          f"attempts {lg.get('reconnect_attempts')}, connect_error "
                          f"{lg.get('connect_errors')} {r.get('error', '')}", flush=True)
                    (out / "results.json").write_text(json.dumps(runs, indent=1))
    finished = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (out / "summary.md").write_text(summarize(runs, a, started, finished))
    print(f"storm: done {finished}, load average {load_average()}: {out}/summary.md")
    return 0 if all(r.get("complete") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
