#!/usr/bin/env node
// Fan-out load for a Socket.IO cluster (bench/cluster_bench.py drives it).
//
//   node bench/cluster_loadgen.js --ports 3001,3002 --subs 500 --rates 10,20,50 --duration 5 [--sync]
//
// Opens --subs raw Engine.IO v4 / Socket.IO v5 websocket clients, spread round robin over the
// --ports (subscriber i on ports[i % n]), each joining one room ('420["join","room-0"]', ack
// 430[true]); one publisher connects to the first port. Then, for each rate in --rates (msg/s),
// the publisher sends '42["pub","room-0","<ts>|<seq>|pad"]' at that rate for --duration s and
// waits up to --drain s for every subscriber to receive every message. A step holds when nothing
// is lost, p99 latency <= --max-p99 ms, achieved deliveries/s >= --min-achieved of offered, and
// no connection closed; the run stops at the first step that does not hold (--keep-going 1 to
// run every rate).
//
// Output: "@mark NAME {json}" lines (with --sync it then waits, at most 30 s, for a line on
// stdin, so the driver can sample CPU and Redis around each step), one {"step": {...}} JSON line
// per step and a final {"done": {...}} line. Latency: --sample subscribers spread over all
// ports (send timestamp in the payload, one process clock). Only 127.0.0.1; every phase is
// bounded and a watchdog (--max-time s) ends the process.
'use strict';
const path = require('path');
const { createRequire } = require('module');
const { performance } = require('perf_hooks');

const base = process.env.BENCH_NODE_MODULES_OF || path.join(__dirname, '..', 'tests', 'node');
const WebSocket = createRequire(path.join(base, 'package.json'))('ws');

const OPTS = {
  ports: '', subs: 500, rates: '10,20,30,50,75,100,150,200', duration: 5, drain: 5,
  sample: 20, payload: 64, concurrency: 100, 'max-time': 300, 'max-p99': 1000,
  'min-achieved': 0.9, 'keep-going': 0, pause: 1, room: 'room-0', sync: false,
};
function parseArgs(argv) {
  const o = { ...OPTS };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, '');
    if (!argv[i].startsWith('--') || !(k in OPTS)) throw new Error('unknown argument ' + argv[i]);
    if (typeof OPTS[k] === 'boolean') o[k] = true;
    else o[k] = typeof OPTS[k] === 'number' ? Number(argv[++i]) : argv[++i];
  }
  return o;
}
const opt = parseArgs(process.argv.slice(2));
const ports = opt.ports.split(',').filter(Boolean).map(Number);
const rates = opt.rates.split(',').filter(Boolean).map(Number);
if (!ports.length || !rates.length) { console.error('need --ports and --rates'); process.exit(2); }

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
setTimeout(() => { out({ error: `watchdog: --max-time ${opt['max-time']} s exceeded` }); process.exit(3); },
  opt['max-time'] * 1000).unref();

const waiters = [];
let stdinBuf = '';
if (opt.sync) {
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d) => {
    stdinBuf += d;
    let i;
    while ((i = stdinBuf.indexOf('\n')) >= 0) { stdinBuf = stdinBuf.slice(i + 1); const w = waiters.shift(); if (w) w(); }
  });
}
async function mark(name, extra) {
  process.stdout.write(`@mark ${name} ${JSON.stringify(extra || {})}\n`);
  if (!opt.sync) return;
  await new Promise((resolve) => {
    const t = setTimeout(resolve, 30000);
    waiters.push(() => { clearTimeout(t); resolve(); });
  });
}

// ---- counters (reset per step) ----
let received = 0;
const receivedOn = ports.map(() => 0);
let lastAt = 0;
let lat = [];
let closes = 0, errors = 0, closing = false;
const errorSamples = [];
function err(m) { errors++; if (errorSamples.length < 5) errorSamples.push(String(m).slice(0, 200)); }

function connect(port, node, sampled) {
  return new Promise((resolve, reject) => {
    const url = `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`;
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true, maxPayload: 2e6 });
    const c = { ws, node, state: 0, onAck: null };
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('connect timeout')); }, 30000);
    ws.on('message', (data) => {
      const b0 = data[0];
      if (b0 === 0x32 && data.length === 1) { ws.send('3'); return; }          // EIO ping
      if (c.state === 2 && b0 === 0x34 && data[1] === 0x32) {                   // 42[...] event
        received++;
        receivedOn[node]++;
        const now = performance.now();
        lastAt = now;
        if (sampled) {                                                          // 42["msg","<ts>|...
          const bar = data.indexOf(0x7c, 10);
          if (bar > 10) lat.push(now - parseFloat(data.latin1Slice(10, bar)));
        }
        return;
      }
      if (c.state === 0 && b0 === 0x30) { c.state = 1; ws.send('40'); return; } // EIO open
      if (c.state === 1 && b0 === 0x34 && data[1] === 0x30) { c.state = 2; clearTimeout(timer); resolve(c); return; }
      if (b0 === 0x34 && data[1] === 0x33) { const f = c.onAck; c.onAck = null; if (f) f(data.toString()); return; }
      if (b0 === 0x34 && data[1] === 0x34) err('connect_error ' + data.toString());
      if (b0 === 0x31) err('EIO close');
    });
    ws.on('error', (e) => { if (c.state !== 2) { clearTimeout(timer); reject(e); } else err(e.message); });
    ws.on('close', () => { if (!closing) closes++; if (c.state !== 2) { clearTimeout(timer); reject(new Error('closed in handshake')); } });
  });
}

function join(c, room) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { c.onAck = null; reject(new Error('join ack timeout')); }, 30000);
    c.onAck = (s) => { clearTimeout(t); s === '430[true]' ? resolve() : reject(new Error('bad ack ' + s)); };
    c.ws.send(`420["join","${opt.room}"]`);
  });
}

function pct(a, p) { return a.length ? +a[Math.min(a.length - 1, Math.max(0, Math.ceil(p / 100 * a.length) - 1))].toFixed(2) : null; }

async function openSubs() {
  const n = opt.subs, every = Math.max(1, Math.floor(n / Math.max(1, opt.sample)));
  const subs = [];
  let next = 0, failed = 0;
  const t0 = performance.now();
  async function worker() {
    for (let i = next++; i < n; i = next++) {
      const node = i % ports.length;
      try {
        const c = await connect(ports[node], node, i % every === 0 && i / every < opt.sample);
        await join(c, opt.room);
        subs.push(c);
      } catch (e) { failed++; err(e.message); }
    }
  }
  await Promise.all(Array.from({ length: Math.min(opt.concurrency, n) }, worker));
  return { subs, failed, secs: (performance.now() - t0) / 1000 };
}

async function publish(p, rate, secs) {
  const total = Math.round(rate * secs);
  const pad = 'x'.repeat(Math.max(0, opt.payload - 24));
  let sent = 0;
  const t0 = performance.now();
  await new Promise((resolve) => {
    (function tick() {
      const now = performance.now();
      const due = Math.min(total, Math.floor((now - t0) / 1000 * rate) + 1);
      for (; sent < due; sent++) {
        p.ws.send(`42["pub","${opt.room}","${performance.now().toFixed(3)}|${sent}|${pad}"]`);
      }
      if (sent >= total || now - t0 > secs * 1000 + 5000) { resolve(); return; }
      setTimeout(tick, 1);
    })();
  });
  return { sent, t0, secs: (performance.now() - t0) / 1000 };
}

async function step(p, subs, perNode, rate) {
  received = 0; receivedOn.fill(0); lastAt = 0; lat = [];
  const closes0 = closes, errors0 = errors;
  await mark('step_start', { rate });
  const cpu0 = process.cpuUsage();
  const pr = await publish(p, rate, opt.duration);
  const cpuSend = process.cpuUsage(cpu0);
  const expected = pr.sent * subs.length;
  const d0 = performance.now();
  while (received < expected && performance.now() - d0 < opt.drain * 1000) await sleep(20);
  const drain = (performance.now() - d0) / 1000;
  const got = received;
  await mark('step_end', { rate, received: got });
  const span = lastAt > pr.t0 ? (lastAt - pr.t0) / 1000 : pr.secs;
  const a = lat.slice().sort((x, y) => x - y);
  const r = {
    rate, sent: pr.sent, send_secs: +pr.secs.toFixed(3), subs: subs.length,
    subs_per_node: perNode, expected, received: got, lost: expected - got,
    received_per_node: receivedOn.slice(),
    offered_deliveries_per_s: rate * subs.length,
    achieved_deliveries_per_s: +(got / span).toFixed(1),
    drain_secs: +drain.toFixed(3),
    latency_ms: { n: a.length, p50: pct(a, 50), p90: pct(a, 90), p99: pct(a, 99), max: pct(a, 100) },
    loadgen_cpu_pct_send: +((cpuSend.user + cpuSend.system) / 1e4 / pr.secs).toFixed(1),
    disconnects: closes - closes0, errors: errors - errors0,
  };
  r.loadgen_bound = r.loadgen_cpu_pct_send > 90;
  r.held = r.lost === 0 && r.latency_ms.p99 !== null && r.latency_ms.p99 <= opt['max-p99'] &&
    r.achieved_deliveries_per_s >= opt['min-achieved'] * r.offered_deliveries_per_s && r.disconnects === 0;
  return r;
}

(async () => {
  let subs = [], p = null;
  try {
    await mark('connect');
    const o = await openSubs();
    subs = o.subs;
    p = await connect(ports[0], 0, false);
    const perNode = ports.map((_, k) => subs.filter((c) => c.node === k).length);
    await sleep(1000);  // let every node's subscriptions settle
    await mark('ready', { subs: subs.length, subs_per_node: perNode, failed: o.failed, connect_secs: +o.secs.toFixed(2) });
    if (o.failed) throw new Error(`${o.failed} subscribers failed to connect`);
    let held = null, failedAt = null;
    for (const rate of rates) {
      const r = await step(p, subs, perNode, rate);
      out({ step: r });
      if (r.held) held = rate; else { failedAt = failedAt || rate; if (!opt['keep-going']) break; }
      await sleep(opt.pause * 1000);
    }
    out({ done: { held_rate: held, failed_rate: failedAt, subs: subs.length, subs_per_node: perNode,
                  error_samples: errorSamples } });
  } catch (e) {
    out({ error: e.message, error_samples: errorSamples });
  }
  closing = true;
  for (const c of subs.concat(p ? [p] : [])) { try { c.ws.terminate(); } catch (_) { /* gone */ } }
  setTimeout(() => process.exit(0), 200);
})();
