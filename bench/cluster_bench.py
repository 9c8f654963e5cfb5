#!/usr/bin/env python3
"""Cluster fan-out bench: a two-node roomd cluster against a two-node Node.js Socket.IO cluster.

    .venv/bin/python -m bench.cluster_bench --subs 500 \\
        --rates 10,20,30,50,75,100,150,200,300,400,500 --duration 5 --reps 2 \\
        --out /tmp/roomd-cluster-bench      (make bench-cluster runs this)

One redis-server (loopback, free port, no persistence) for the whole run. For each repetition
and each cluster, interleaved (roomd, node, roomd, node, ...): two fresh server nodes on that
Redis with one @socket.io/redis-adapter protocol (--mode classic or sharded; roomd:
``roomd serve --app bench.cluster_app:io``; Node.js: ``node bench/cluster_node.js``), then
``bench/cluster_loadgen.js``:
subscribers spread round robin over both nodes in one room, the publisher on node 1, fan-out at
rising rates until a step does not hold (the yardstick's rule: no loss, p99 <= 1 s, achieved >=
90 % of offered, no disconnects). Around every step the driver samples:

- server CPU: utime+stime (schedstat, ns) of each node's process tree;
- Redis: INFO cpu (used_cpu_user + used_cpu_sys), INFO commandstats (PUBLISH and SPUBLISH
  calls) and INFO stats (bytes in and out); an idle window before the first step gives the
  baseline subtracted from Redis' CPU.

Then, on the same nodes, fan-in steps (--fanin-rates): the publisher and a few subscribers on
node 1 only, so node 2 receives every broadcast for a room it has no socket in (classic mode)
or none (sharded). Last, Redis alone (--probe-n): redis-benchmark PUBLISHing to K raw pattern
subscribers, unpipelined and pipelined (what a PUBLISH costs Redis per receiving node).

Servers and Redis are pinned to --server-cpus, the load generator to --loadgen-cpus (taskset).
Writes results.json (every step of every run, raw) and summary.md into --out. Only processes
started here are ended, each by its PID (its own process group). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
HOST = "127.0.0.1"


# ------------------------------------------------------------------ processes and /proc
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Proc:
    """A child in its own session (process group = its PID), pinned with taskset."""

    def __init__(self, name: str, argv: list[str], cpus: str, logdir: Path,
                 env: dict[str, str] | None = None, stdin: bool = False) -> None:
        self.name = name
        self.log = open(logdir / f"{name}.log", "w")
        cmd = (["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []) + argv
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})),
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if stdin else self.log,
                                  stderr=self.log, start_new_session=True, text=stdin)
        self.pid = self.p.pid

    def stop(self) -> None:
        end_group(self.p)
        self.log.close()


def wait_port(port: int, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.p.returncode}); see {proc.log.name}")
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not listening on {port} after {timeout} s")


# ------------------------------------------------------------------ Redis (RESP, stdlib)
class Redis:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), 5)
        self.sock.settimeout(10)
        self.f = self.sock.makefile("rb")

    def command(self, *args: str) -> object:
        parts = [f"*{len(args)}\r\n"] + [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        self.sock.sendall("".join(parts).encode())
        return self._read()

    def _read(self) -> object:
        line = self.f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2].decode()
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise RuntimeError(f"bad RESP line {line!r}")

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section)
        assert isinstance(text, str)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def sample(self) -> dict[str, float]:
        cpu = self.info("cpu")
        stats = self.info("commandstats")
        calls = {k[len("cmdstat_"):]: int(v.split(",")[0].split("=")[1])
                 for k, v in stats.items() if k.startswith("cmdstat_")}
        net = self.info("stats")
        return {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                "publish": calls.get("publish", 0) + calls.get("spublish", 0),
                "calls": sum(calls.values()),
                "net_in": int(net["total_net_input_bytes"]),
                "net_out": int(net["total_net_output_bytes"])}


# ------------------------------------------------------------------ one cluster run
def start_nodes(kind: str, ports: list[int], redis_url: str, cpus: str, logdir: Path,
                admin_dir: Path, rep: int, mode: str) -> list[Proc]:
    nodes = []
    for i, port in enumerate(ports, 1):
        name = f"{kind}-{rep}-node{i}"
        if kind == "roomd":
            argv = [str(ROOT / ".venv/bin/roomd"), "serve", "--app", "bench.cluster_app:io",
                    "--app-dir", str(ROOT), "--port", str(port),
                    "--socket", str(admin_dir / f"{port}.sock"), "--log-level", "warning"]
            env = {"ROOMD_BENCH_REDIS": redis_url, "ROOMD_BENCH_MODE": mode}
        else:
            argv = ["node", str(ROOT / "bench/cluster_node.js"), str(port), redis_url, mode]
            env = {}
        nodes.append(Proc(name, argv, cpus, logdir, env))
    for node, port in zip(nodes, ports, strict=True):
        wait_port(port, node)
    return nodes


def drive(name: str, sub_ports: list[int], subs: int, rates: str, nodes: list[Proc],
          redis: Redis, redis_pid: int, args: argparse.Namespace, logdir: Path,
          run: dict, idle: bool) -> None:
    """One loadgen run (publisher on sub_ports[0]); its steps go into run["steps"]."""
    argv = ["node", str(ROOT / "bench/cluster_loadgen.js"), "--sync",
            "--ports", ",".join(map(str, sub_ports)), "--subs", str(subs),
            "--rates", rates, "--duration", str(args.duration), "--drain", str(args.drain),
            "--max-time", str(args.max_time)]
    lg = Proc(name, argv, args.loadgen_cpus, logdir, stdin=True)
    assert lg.p.stdout is not None and lg.p.stdin is not None
    # the loadgen has its own watchdog too
    killer = threading.Timer(args.max_time + 30, lg.stop)
    killer.start()
    before: dict = {}
    pending: tuple[dict, dict] | None = None
    try:
        for line in lg.p.stdout:
            if line.startswith("@mark "):
                mark, _, extra = line[6:].strip().partition(" ")
                if mark == "step_start":
                    before = snapshot(nodes, redis, redis_pid)
                elif mark == "step_end":
                    pending = (before, snapshot(nodes, redis, redis_pid))
                elif mark == "ready":
                    run["ready"] = json.loads(extra or "{}")
                    run["rss_kib_ready"] = [tree_rss_kib(n.pid) for n in nodes]
                    if idle:
                        run["idle"] = idle_baseline(nodes, redis, redis_pid, args.idle)
                lg.p.stdin.write("\n")
                lg.p.stdin.flush()
                continue
            msg = json.loads(line)
            if "step" in msg and pending is not None:
                run["steps"].append(step_figures(msg["step"], *pending, run.get("idle")))
                s = run["steps"][-1]
                print(f"  {name}: {s['rate']:>5} msg/s  held={s['held']}  "
                      f"lost={s['lost']} p99={s['latency_ms']['p99']} ms  "
                      f"cpu/delivery={s['server_cpu_us_per_delivery']} µs  "
                      f"cpu % per node={s['server_cpu_pct_per_node']}  "
                      f"publish/broadcast={s['redis_publish_per_broadcast']}", flush=True)
            elif "done" in msg:
                run.update(msg["done"])
            elif "error" in msg:
                run["error"] = msg["error"]
    finally:
        killer.cancel()
        lg.stop()


def run_cluster(kind: str, rep: int, args: argparse.Namespace, redis: Redis, redis_pid: int,
                redis_url: str, logdir: Path, admin_dir: Path) -> dict:
    ports = free_ports(2)
    nodes = start_nodes(kind, ports, redis_url, args.server_cpus, logdir, admin_dir, rep,
                        args.mode)
    run: dict = {"cluster": kind, "rep": rep, "ports": ports, "steps": [], "error": None}
    try:
        time.sleep(1)
        run["rss_kib_start"] = [tree_rss_kib(n.pid) for n in nodes]
        drive(f"{kind}-{rep}-loadgen", ports, args.subs, args.rates, nodes, redis, redis_pid,
              args, logdir, run, idle=True)
        if args.fanin_rates:
            # Fan-in: every subscriber (and the publisher) on node 1; node 2 has no socket in
            # the room but, in classic mode, still receives every broadcast from Redis.
            fanin: dict = {"steps": [], "error": None, "idle": run.get("idle")}
            run["fanin"] = fanin
            time.sleep(1)
            try:
                drive(f"{kind}-{rep}-fanin", ports[:1], args.fanin_subs, args.fanin_rates,
                      nodes, redis, redis_pid, args, logdir, fanin, idle=False)
            except Exception as e:  # the sweep's figures stand without it
                fanin["error"] = f"{type(e).__name__}: {e}"
                print(f"  {kind} rep {rep} fan-in: {fanin['error']}", flush=True)
    finally:
        for n in nodes:
            n.stop()
    held = [s["rate"] for s in run["steps"] if s["held"]]
    run.setdefault("held_rate", None)
    if run["held_rate"] is None and held:
        run["held_rate"] = max(held)
    return run


def snapshot(nodes: list[Proc], redis: Redis, redis_pid: int) -> dict:
    return {"t": time.monotonic(), "nodes": [tree_cpu_s(n.pid) for n in nodes],
            "redis": redis.sample(), "redis_proc": tree_cpu_s(redis_pid)}


def idle_baseline(nodes: list[Proc], redis: Redis, redis_pid: int, secs: float) -> dict:
    """CPU of the nodes and of Redis with every subscriber connected and no traffic."""
    t0, n0, r0 = time.monotonic(), [tree_cpu_s(n.pid) for n in nodes], redis.sample()
    time.sleep(secs)
    t1, n1, r1 = time.monotonic(), [tree_cpu_s(n.pid) for n in nodes], redis.sample()
    wall = t1 - t0
    return {"secs": round(wall, 3),
            "node_cpu_pct": [round(100 * (b - a) / wall, 2) for a, b in zip(n0, n1, strict=True)],
            "redis_cpu_pct": round(100 * (r1["cpu_s"] - r0["cpu_s"]) / wall, 3)}


def step_figures(step: dict, before: dict, after: dict, idle: dict | None) -> dict:
    wall = after["t"] - before["t"]
    node_cpu = [a - b for a, b in zip(after["nodes"], before["nodes"], strict=True)]
    # a loadgen on fewer ports than nodes (fan-in): the other nodes had no subscriber
    got_on = step["received_per_node"]
    step["received_per_node"] = got_on + [0] * (len(node_cpu) - len(got_on))
    cpu = sum(node_cpu)
    got = step["received"]
    rb, ra = before["redis"], after["redis"]
    sent = step["sent"] or 1
    step.update({
        "wall_s": round(wall, 3),
        "server_cpu_s_per_node": [round(c, 4) for c in node_cpu],
        "server_cpu_pct_per_node": [round(100 * c / wall, 1) for c in node_cpu],
        "server_cpu_us_per_delivery": round(1e6 * cpu / got, 2) if got else None,
        "server_cpu_us_per_local_delivery": [
            round(1e6 * c / n, 2) if n else None
            for c, n in zip(node_cpu, step["received_per_node"], strict=True)],
        "redis_cpu_pct": round(100 * (ra["cpu_s"] - rb["cpu_s"]) / wall, 2),
        "redis_cpu_us_per_broadcast": round(1e6 * (ra["cpu_s"] - rb["cpu_s"]) / sent, 2),
        # net of Redis' own idle CPU (its timers), measured before the first step
        "redis_cpu_us_per_broadcast_net": round(
            1e6 * (ra["cpu_s"] - rb["cpu_s"] - (idle or {}).get("redis_cpu_pct", 0) / 100 * wall)
            / sent, 2),
        "redis_net_in_bytes_per_broadcast": round((ra["net_in"] - rb["net_in"]) / sent, 1),
        "redis_net_out_bytes_per_broadcast": round((ra["net_out"] - rb["net_out"]) / sent, 1),
        "redis_proc_cpu_us_per_broadcast": round(
            1e6 * (after["redis_proc"] - before["redis_proc"]) / sent, 2),
        "redis_publish_calls": ra["publish"] - rb["publish"],
        "redis_publish_per_broadcast": round((ra["publish"] - rb["publish"]) / sent, 4),
        # -3: the driver's own INFO commands between the two commandstats readings
        "redis_calls_per_broadcast": round((ra["calls"] - rb["calls"] - 3) / sent, 4),
    })
    return step


# ------------------------------------------------------------------ Redis probe
SUBSCRIBER = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.settimeout(float(sys.argv[3]))
p = sys.argv[2].encode()
s.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(p), p))
try:
    while s.recv(1 << 20):
        pass
except OSError:
    pass
"""


def redis_probe(args: argparse.Namespace, redis: Redis, port: int, logdir: Path) -> list[dict]:
    """PUBLISH cost in Redis alone: redis-benchmark publishing to a channel matched by the
    pattern of K pattern subscribers (raw readers, as the classic adapter's nodes are)."""
    if not shutil.which("redis-benchmark"):
        return [{"error": "redis-benchmark is missing"}]
    results = []
    payload = "x" * args.probe_size
    for k in [int(x) for x in args.probe_subscribers.split(",") if x]:
        subs = [Proc(f"probe-sub-{k}-{i}", [sys.executable, "-c", SUBSCRIBER, str(port),
                                            "probe#/#*", "60"], args.loadgen_cpus, logdir)
                for i in range(k)]
        try:
            deadline = time.monotonic() + 10
            while redis.command("PUBLISH", "probe#/#warm#", "x") != k:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"probe: {k} pattern subscribers did not subscribe")
                time.sleep(0.05)
            for pipeline in (1, 16):
                before, t0 = redis.sample(), time.monotonic()
                bench = subprocess.run(
                    (["taskset", "-c", args.loadgen_cpus] if shutil.which("taskset") else [])
                    + ["redis-benchmark", "-h", HOST, "-p", str(port), "-n", str(args.probe_n),
                       "-c", "8", "-P", str(pipeline), "-q", "PUBLISH", "probe#/#room-0#",
                       payload], capture_output=True, text=True, timeout=120)
                wall, after = time.monotonic() - t0, redis.sample()
                n = after["publish"] - before["publish"]
                rps = [w for w in bench.stdout.replace("\r", "\n").split() if
                       w.replace(".", "").isdigit()]
                results.append({
                    "pattern_subscribers": k, "pipeline": pipeline, "publishes": n,
                    "payload_bytes": args.probe_size,
                    "redis_cpu_us_per_publish": round(
                        1e6 * (after["cpu_s"] - before["cpu_s"]) / n, 3),
                    "publishes_per_s": round(n / wall),
                    "redis_benchmark_rps": rps[-1] if rps else None,
                    "net_out_bytes_per_publish": round(
                        (after["net_out"] - before["net_out"]) / n, 1),
                })
                r = results[-1]
                print(f"  redis probe: {k} pattern subscribers, pipeline {pipeline}: "
                      f"{r['redis_cpu_us_per_publish']} µs Redis CPU per PUBLISH, "
                      f"{r['publishes_per_s']} PUBLISH/s", flush=True)
        finally:
            for sub in subs:
                sub.stop()
    return results


# ------------------------------------------------------------------ summary
def med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


def summarize(res: dict) -> str:
    a = res["args"]
    lines = ["# Cluster fan-out: roomd vs Node.js socket.io, two nodes each on one Redis "
             f"({a['mode']} adapter protocol)",
             "", f"- started {res['started']} UTC, {res['wall_s']} s; load average before "
             f"{res['loadavg_before']}, after {res['loadavg_after']}; {os.cpu_count()} cores",
             f"- {a['subs']} subscribers in one room split over 2 nodes, 1 publisher on node 1, "
             f"payload 64 B, rates {a['rates']} msg/s, {a['duration']} s per step, "
             f"{a['reps']} interleaved repetitions (fresh nodes each); servers and Redis on "
             f"CPU {a['server_cpus']}, load generator on CPU {a['loadgen_cpus']}",
             f"- {res['versions']}", ""]
    lines += ["| figure | " + " | ".join(res["clusters"]) + " |",
              "|---|" + "---|" * len(res["clusters"])]

    def by(kind: str) -> list[dict]:
        return [r for r in res["runs"] if r["cluster"] == kind]

    def row(label: str, fn) -> None:
        lines.append(f"| {label} | " + " | ".join(str(fn(by(k))) for k in res["clusters"]) + " |")

    def held_steps(runs: list[dict]) -> list[dict]:
        return [s for r in runs for s in r["steps"] if s["held"]]

    def at_common(runs: list[dict], key) -> float | None:
        rate = res["common_rate"]
        return med([key(s) for r in runs for s in r["steps"] if s["rate"] == rate])

    row("highest held rate, msg/s (per rep)", lambda rs: ", ".join(str(r["held_rate"]) for r in rs))
    row("... deliveries/s at that rate (median)",
        lambda rs: med([(r["held_rate"] or 0) * r.get("subs", a["subs"]) for r in rs]))
    row("first failed rate (per rep)", lambda rs: ", ".join(str(r.get("failed_rate")) for r in rs))
    c = res["common_rate"]
    row(f"server CPU per delivery, both nodes, at {c} msg/s (µs)",
        lambda rs: at_common(rs, lambda s: s["server_cpu_us_per_delivery"]))
    row("  node 1 (publisher's) / node 2, per local delivery (µs)",
        lambda rs: f"{at_common(rs, lambda s: s['server_cpu_us_per_local_delivery'][0])} / "
                   f"{at_common(rs, lambda s: s['server_cpu_us_per_local_delivery'][1])}")
    row(f"p50 / p99 latency at {c} msg/s (ms)",
        lambda rs: f"{at_common(rs, lambda s: s['latency_ms']['p50'])} / "
                   f"{at_common(rs, lambda s: s['latency_ms']['p99'])}")
    row("Redis PUBLISH per broadcast (all steps)",
        lambda rs: ", ".join(sorted({str(s["redis_publish_per_broadcast"])
                                     for r in rs for s in r["steps"]})))
    row("Redis commands per broadcast (median)",
        lambda rs: med([s["redis_calls_per_broadcast"] for r in rs for s in r["steps"]]))
    row(f"Redis CPU per broadcast at {c} msg/s, INFO cpu, net of idle (µs)",
        lambda rs: at_common(rs, lambda s: s["redis_cpu_us_per_broadcast_net"]))
    row("Redis CPU at the highest held rate (% of a core)",
        lambda rs: med([max((s for s in r["steps"] if s["held"]), key=lambda s: s["rate"],
                            default={}).get("redis_cpu_pct") for r in rs]))
    row("node RSS with the subscribers connected (MiB, both nodes)",
        lambda rs: med([sum(r.get("rss_kib_ready", [0])) / 1024 for r in rs]))
    row(f"Redis bytes in / out per broadcast at {c} msg/s",
        lambda rs: f"{at_common(rs, lambda s: s['redis_net_in_bytes_per_broadcast'])} / "
                   f"{at_common(rs, lambda s: s['redis_net_out_bytes_per_broadcast'])}")
    row("idle CPU, node 1 / node 2 / Redis (% of a core)",
        lambda rs: " / ".join(str(med([(r.get("idle") or {}).get(key, [None, None])[i]
                                        if key == "node_cpu_pct" else
                                        (r.get("idle") or {}).get(key) for r in rs]))
                              for key, i in (("node_cpu_pct", 0), ("node_cpu_pct", 1),
                                             ("redis_cpu_pct", 0))))
    def fanin(rs: list[dict], i: int, rate: int) -> float | None:
        vals = []
        for r in rs:
            for st in (r.get("fanin") or {}).get("steps", []):
                if st["rate"] != rate:
                    continue
                idle_pct = ((r.get("idle") or {}).get("node_cpu_pct") or [0, 0])[i]
                cpu = st["server_cpu_s_per_node"][i] - idle_pct / 100 * st["wall_s"]
                vals.append(1e6 * cpu / st["sent"])
        return med(vals)

    for rate in [int(x) for x in a["fanin_rates"].split(",") if x]:
        row(f"fan-in at {rate} msg/s, {a['fanin_subs']} subscribers and the publisher on "
            "node 1: CPU per broadcast, node 1 / node 2 (no socket in the room) (µs)",
            lambda rs, rate=rate: f"{fanin(rs, 0, rate)} / {fanin(rs, 1, rate)}")
    row("fan-in steps held (per rep)",
        lambda rs: ", ".join("/".join("yes" if st["held"] else "NO"
                                      for st in (r.get("fanin") or {}).get("steps", []))
                             for r in rs))
    row("loadgen-bound steps", lambda rs: sum(s["loadgen_bound"] for r in rs for s in r["steps"]))
    lines += ["", "## Every step", "",
              "| cluster | rep | rate | held | lost | achieved/offered deliv/s | p50/p99 ms | "
              "server CPU % node1/node2 | µs/delivery | Redis CPU % | Redis µs/broadcast (gross) | "
              "PUBLISH/broadcast | loadgen CPU % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        for s in r["steps"]:
            lat = s["latency_ms"]
            lines.append(
                f"| {r['cluster']} | {r['rep']} | {s['rate']} | {'yes' if s['held'] else 'NO'} | "
                f"{s['lost']} | {s['achieved_deliveries_per_s']:.0f}/"
                f"{s['offered_deliveries_per_s']} | "
                f"{lat['p50']}/{lat['p99']} | {s['server_cpu_pct_per_node'][0]}/"
                f"{s['server_cpu_pct_per_node'][1]} | {s['server_cpu_us_per_delivery']} | "
                f"{s['redis_cpu_pct']} | {s['redis_cpu_us_per_broadcast']} | "
                f"{s['redis_publish_per_broadcast']} | {s['loadgen_cpu_pct_send']} |")
        if r.get("error"):
            lines.append(f"| {r['cluster']} | {r['rep']} | error: {r['error']} |" + " |" * 10)
    if res.get("redis_probe"):
        lines += ["", "## Redis alone: PUBLISH to K pattern subscribers (redis-benchmark, 8 "
                  "connections)", "",
                  "| pattern subscribers | pipeline | PUBLISH/s | Redis CPU µs per PUBLISH | "
                  "bytes out per PUBLISH |", "|---|---|---|---|---|"]
        for p in res["redis_probe"]:
            if "error" in p:
                lines.append(f"| error: {p['error']} | | | | |")
                continue
            lines.append(f"| {p['pattern_subscribers']} | {p['pipeline']} | "
                         f"{p['publishes_per_s']} | "
                         f"{p['redis_cpu_us_per_publish']} | {p['net_out_bytes_per_publish']} |")
        lines.append(f"\n(payload {res['args']['probe_size']} B, about a classic broadcast "
                     f"message's size here; {res['args']['probe_n']} PUBLISH per line)")
    return "\n".join(lines) + "\n"


def versions() -> str:
    def run(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20,
                                  cwd=ROOT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    node_pkgs = run(["node", "-e", "const r=require('module').createRequire(process.argv[1]);"
                     "console.log(['socket.io','@socket.io/redis-adapter','redis'].map(p=>p+' '+"
                     "r(p+'/package.json').version).join(', '))",
                     str(ROOT / "tests/node/package.json")])
    py = str(ROOT / ".venv/bin/python")
    return (f"{run([str(ROOT / '.venv/bin/roomd'), '--version'])}, Python "
            f"{run([py, '-c', 'import sys;print(sys.version.split()[0])'])}"
            f", coredis {run([py, '-c', 'import coredis;print(coredis.__version__)'])}"
            f"; Node.js {run(['node', '--version'])}: {node_pkgs}; "
            f"{run(['redis-server', '--version']).split(' sha=')[0]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subs", type=int, default=500)
    ap.add_argument("--rates", default="10,20,30,50,75,100,150,200,300,400,500")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--drain", type=float, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--clusters", default="roomd,node")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--loadgen-cpus", default="1")
    ap.add_argument("--idle", type=float, default=3,
                    help="seconds of no traffic before the first step (idle CPU baseline)")
    ap.add_argument("--mode", choices=("classic", "sharded"), default="classic",
                    help="the @socket.io/redis-adapter protocol both clusters speak")
    ap.add_argument("--fanin-rates", default="500,2000",
                    help="msg/s of the fan-in steps ('': none): subscribers all on node 1, "
                         "node 2's CPU per broadcast it receives and drops")
    ap.add_argument("--fanin-subs", type=int, default=10)
    ap.add_argument("--probe-n", type=int, default=50000,
                    help="PUBLISH per Redis probe line (0: no probe)")
    ap.add_argument("--probe-subscribers", default="2,8,32")
    ap.add_argument("--probe-size", type=int, default=150)
    ap.add_argument("--max-time", type=float, default=240, help="per loadgen run, seconds")
    ap.add_argument("--out", default=f"/tmp/roomd-cluster-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()
    for prog in ("redis-server", "node"):
        if not shutil.which(prog):
            sys.exit(f"cluster bench: {prog} is missing (make install)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logdir = out / "logs"
    logdir.mkdir(exist_ok=True)
    admin_dir = Path(tempfile.mkdtemp(prefix="roomd-cbench-admin-"))
    redis_dir = Path(tempfile.mkdtemp(prefix="roomd-cbench-redis-"))
    clusters = [c for c in args.clusters.split(",") if c]
    res: dict = {"args": vars(args), "clusters": clusters, "runs": [],
                 "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                 "loadavg_before": open("/proc/loadavg").read().split()[:3],
                 "versions": versions()}
    t0 = time.monotonic()
    rport = free_ports(1)[0]
    redis_url = f"redis://{HOST}:{rport}"
    rproc = Proc("redis", ["redis-server", "--port", str(rport), "--bind", HOST, "--save", "",
                           "--appendonly", "no", "--dir", str(redis_dir)],
                 args.server_cpus, logdir)
    try:
        wait_port(rport, rproc)
        redis = Redis(rport)
        res["redis_version"] = redis.info("server").get("redis_version")
        for rep in range(1, args.reps + 1):
            for kind in clusters:
                print(f"{kind} rep {rep} (load average {open('/proc/loadavg').read().split()[0]})",
                      flush=True)
                try:
                    run = run_cluster(kind, rep, args, redis, rproc.pid, redis_url, logdir,
                                      admin_dir)
                except Exception as e:  # record it, keep the interleaving going
                    run = {"cluster": kind, "rep": rep, "steps": [], "held_rate": None,
                           "error": f"{type(e).__name__}: {e}"}
                    print(f"  {kind} rep {rep}: {run['error']}", flush=True)
                run["loadavg"] = open("/proc/loadavg").read().split()[:3]
                res["runs"].append(run)
                time.sleep(1)
        if args.probe_n:
            print("redis probe", flush=True)
            res["redis_probe"] = redis_probe(args, redis, rport, logdir)
    finally:
        rproc.stop()
        shutil.rmtree(admin_dir, ignore_errors=True)
        shutil.rmtree(redis_dir, ignore_errors=True)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    res["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    # the highest rate every run of every cluster held (for same-rate comparisons)
    helds = [r["held_rate"] for r in res["runs"]]
    rates = [int(x) for x in args.rates.split(",")]
    res["common_rate"] = min([h for h in helds if h] or [rates[0]])
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "summary.md").write_text(summarize(res))
    print((out / "summary.md").read_text())
    print(f"results: {out}/summary.md, {out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
