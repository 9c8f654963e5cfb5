#!/usr/bin/env node
// Reconnect storm load generator: N stock socket.io-client sockets (tests/node's
// socket.io-client, default reconnection backoff), each joining its room of --room-size on
// every "connect" event. Driven by bench/storm.py over stdin/stdout, one line each way:
//
//   loadgen -> driver   "@ready {...}"     every client is connected and joined
//   driver -> loadgen   "storm"            start the storm's clock (the server restarts)
//                       "cut"              start it, and cut every client's TCP connection
//                                          with a reset (a network failure; see storm.py)
//   loadgen -> driver   "@rejoined {...}"  every client is connected and joined again
//                                          ("@timeout {...}" after --storm-time instead)
//                       "{...}"            the result, one JSON line; then it exits
//                       (driver "exit", stdin closed, or --max-time: exits in any case)
//
// Counted from "storm"/"cut" on: disconnect reasons, connect_error by reason (the HTTP
// status of a refused WebSocket upgrade included), reconnection attempts, join
// acknowledgements that timed out, and per client the time until it was joined again.
// Only loopback addresses. --first/--clients select this process's share of the clients
// (client i joins room "r<i / room-size>"), so several processes can share a storm.
// --addresses 1: client i connects from its own address, 127.10.<i / 256>.<i % 256>
// (WebSocket only), as clients on distinct addresses would.
"use strict";

const path = require("path");
const { performance } = require("perf_hooks");
const { io } = require(path.join(__dirname, "..", "tests", "node", "node_modules",
  "socket.io-client"));

const DEFAULTS = {
  host: "127.0.0.1", port: 3000, clients: 10000, first: 0, "room-size": 10,
  transports: "websocket", concurrency: 200, "ack-timeout": 10000, "storm-time": 120,
  "max-time": 600, addresses: 0,
};

function parseArgs(argv) {
  const o = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, "");
    if (!(k in DEFAULTS) || !argv[i].startsWith("--")) throw new Error(`bad option ${argv[i]}`);
    const v = argv[++i];
    o[k] = typeof DEFAULTS[k] === "number" ? Number(v) : v;
  }
  return o;
}

const opt = parseArgs(process.argv.slice(2));
if (!/^127\./.test(opt.host) && opt.host !== "localhost" && opt.host !== "::1") {
  console.error("storm.js: loopback hosts only");
  process.exit(2);
}
const URL = `http://${opt.host}:${opt.port}`;
// websocket: as the yardstick's app (its servers accept only WebSocket);
// default: the stock client's own choice, long-polling then the upgrade.
const TRANSPORTS = opt.transports === "default" ? undefined : opt.transports.split(",");

setTimeout(() => {
  out({ error: `watchdog: exceeded --max-time ${opt["max-time"]} s`, ...report() });
  process.exit(3);
}, opt["max-time"] * 1000).unref();

function out(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

// ---- state ---------------------------------------------------------------------------------
const clients = [];          // {socket, joined, index, rejoinedAt}
let joinedCount = 0;
let phase = "opening";       // opening -> ready -> storm -> done
let stormStart = 0;          // performance.now() at "storm"/"cut"
let stormCpu = null;         // process.cpuUsage() at "storm"/"cut"
let allGoneAt = null;        // ms after the storm's start when no client was connected
let connectedCount = 0;
const counts = {
  disconnects: {}, connect_errors: {}, http_status: {}, reconnect_attempts: 0,
  join_timeouts: 0, join_retries: 0, cut_failed: 0,
};
const rejoinMs = [];

function bump(table, key) { table[key] = (table[key] || 0) + 1; }

function errorKey(err) {
  // "websocket error" / "xhr poll error" carry the cause in description (ws's ErrorEvent
  // or the request's error); "timeout" (the manager's 20 s connect timeout) has none.
  const d = err && err.description;
  let cause = d && (d.message || (d.error && d.error.message) || (typeof d === "string" ? d : ""));
  if (!cause && typeof d === "number") cause = `HTTP status ${d}`;  // a poll's or a POST's answer
  if (!cause && d && d.context && d.context.status) cause = `status ${d.context.status}`;
  cause = String(cause || "").replace(/127\.0\.0\.1:\d+/g, "HOST:PORT");
  const status = /Unexpected server response: (\d+)/.exec(cause);
  if (status) bump(counts.http_status, status[1]);
  return cause ? `${err.message}: ${cause}` : String(err && err.message);
}

function join(client) {
  const socket = client.socket;
  const id = socket.id;
  const room = `r${Math.floor(client.index / opt["room-size"])}`;
  socket.timeout(opt["ack-timeout"]).emit("join", room, (err, ok) => {
    if (socket.id !== id || !socket.connected) return;  // an older connection's answer
    if (err) {
      if (phase === "storm") counts.join_timeouts++;
      counts.join_retries++;
      join(client);
      return;
    }
    if (ok !== true) {
      console.error(`storm.js: join answered ${JSON.stringify(ok)}`);
    }
    if (!client.joined) {
      client.joined = true;
      joinedCount++;
      if (phase === "storm") {
        client.rejoinedAt = performance.now() - stormStart;
        rejoinMs.push(client.rejoinedAt);
      }
      check();
    }
  });
}

function open(index) {
  const socket = io(URL, {
    forceNew: true,  // one Manager (one Engine.IO connection) per client, as N browsers
    transports: TRANSPORTS,
    // the stock backoff, stated: 1 s doubling to 5 s, randomised by half
    reconnectionDelay: 1000, reconnectionDelayMax: 5000, randomizationFactor: 0.5,
    localAddress: opt.addresses ? `127.10.${index >> 8}.${index & 255}` : undefined,
  });
  const client = { socket, joined: false, index, rejoinedAt: null };
  socket.on("connect", () => {
    connectedCount++;
    join(client);
  });
  socket.on("disconnect", (reason) => {
    connectedCount--;
    if (client.joined) {
      client.joined = false;
      joinedCount--;
    }
    if (phase === "storm") {
      bump(counts.disconnects, reason);
      if (connectedCount === 0 && allGoneAt === null) allGoneAt = performance.now() - stormStart;
    }
  });
  socket.on("connect_error", (err) => {
    const key = errorKey(err);
    if (phase === "storm") bump(counts.connect_errors, key);
    else if (phase === "opening") bump(openingErrors, key);
  });
  socket.io.on("reconnect_attempt", () => { if (phase === "storm") counts.reconnect_attempts++; });
  return client;
}

const openingErrors = {};

async function openAll() {
  // The initial clients arrive at most --concurrency at a time: only the storm is a storm.
  const t0 = performance.now();
  for (let i = 0; i < opt.clients; i++) {
    while (clients.length - joinedCount >= opt.concurrency) {
      await new Promise((r) => setTimeout(r, 5));
    }
    clients.push(open(opt.first + i));
  }
  await new Promise((resolve) => { readyWaiter = resolve; check(); });
  return performance.now() - t0;
}

let readyWaiter = null;

function check() {
  if (joinedCount !== opt.clients || clients.length !== opt.clients) return;
  if (phase === "opening" && readyWaiter) {
    const r = readyWaiter;
    readyWaiter = null;
    r();
  } else if (phase === "storm") {
    phase = "done";
    clearTimeout(stormTimer);
    process.stdout.write(`@rejoined ${JSON.stringify(report())}\n`);
  }
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]);
}

function report() {
  const sorted = rejoinMs.slice().sort((a, b) => a - b);
  const cpu = stormCpu ? process.cpuUsage(stormCpu) : null;
  const elapsed = stormStart ? performance.now() - stormStart : 0;
  return {
    clients: opt.clients, joined: joinedCount, connected: connectedCount,
    storm_ms: stormStart ? Math.round(elapsed) : null,
    all_disconnected_ms: allGoneAt === null ? null : Math.round(allGoneAt),
    rejoin_ms: { p50: percentile(sorted, 0.5), p90: percentile(sorted, 0.9),
                 p99: percentile(sorted, 0.99), max: sorted.length ? Math.round(sorted[sorted.length - 1]) : null },
    loadgen_cpu_pct: cpu && elapsed ? Math.round(100 * (cpu.user + cpu.system) / 1000 / elapsed) : null,
    rss_mib: Math.round(process.memoryUsage().rss / 1048576),
    ...counts,
  };
}

let stormTimer = null;

function startStorm(cut) {
  phase = "storm";
  stormStart = performance.now();
  stormCpu = process.cpuUsage();
  stormTimer = setTimeout(() => {
    phase = "done";
    process.stdout.write(`@timeout ${JSON.stringify(report())}\n`);
  }, opt["storm-time"] * 1000);
  if (cut) {
    for (const client of clients) cutOne(client);
  }
}

function cutOne(client) {
  // A network failure that both ends learn of at once (a load balancer or NAT that resets
  // its connections): the TCP connection is reset, no WebSocket close, no Engine.IO close.
  const engine = client.socket.io.engine;
  const transport = engine && engine.transport;
  const raw = transport && transport.ws && transport.ws._socket;
  if (raw) {
    if (typeof raw.resetAndDestroy === "function") raw.resetAndDestroy();
    else raw.destroy();
  } else if (transport) {
    transport.doClose = () => {};  // long-polling: its requests die with the network
    transport.onError("cut", new Error("cut"));
  } else {
    counts.cut_failed++;
  }
}

// ---- driver protocol -----------------------------------------------------------------------
let stdinBuf = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => {
  stdinBuf += d;
  let i;
  while ((i = stdinBuf.indexOf("\n")) >= 0) {
    const line = stdinBuf.slice(0, i).trim();
    stdinBuf = stdinBuf.slice(i + 1);
    if (line === "storm" || line === "cut") startStorm(line === "cut");
    else if (line === "exit") finish(0);
  }
});
process.stdin.on("end", () => finish(0));

function finish(code) {
  out(report());
  for (const { socket } of clients) socket.close();
  process.exit(code);
}

openAll().then((ms) => {
  phase = "ready";
  process.stdout.write(`@ready ${JSON.stringify({ open_ms: Math.round(ms),
    opening_errors: openingErrors, rss_mib: Math.round(process.memoryUsage().rss / 1048576) })}\n`);
});
