// The JSON-lines plumbing of the test drivers (client.js, cluster_node.js; sio_server.js
// takes the watchdog only). The Python side (tests/harness.py, tests/cluster_harness.py)
// speaks to them through this:
//
// - serveCommands(handlers, exit): one JSON command per stdin line {id, cmd, ...}; each gets
//   exactly one reply line, {id, ok: true, ...result} or {id, ok: false, error, ...}: an
//   error's `info` object, when it has one, is the whole reply. Blank lines are skipped; a
//   line that is not JSON gets {id: null, ok: false, error: "bad JSON: ..."}. After the
//   "close" command's reply, and when stdin closes, exit(0) is called.
// - out(obj): one JSON line on stdout (a reply or an unsolicited event).
// - encode / decode: binary values as {"$bytes": "<base64>"}, both ways (a Set is
//   encoded as a list, undefined as null).
// - startWatchdog(name, variable): exit(3) after the milliseconds in that environment
//   variable (default 120000), whatever happens.
// - exitOnCrash(name, {onRejection}): an uncaught exception ends the process with status 1,
//   and so does an unhandled rejection when onRejection is true (else it is only logged).
"use strict";

const readline = require("readline");

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function encode(v) {
  if (v === undefined) return null;
  if (v === null || typeof v !== "object") return v;
  if (Buffer.isBuffer(v)) return { $bytes: v.toString("base64") };
  if (v instanceof ArrayBuffer) return { $bytes: Buffer.from(v).toString("base64") };
  if (ArrayBuffer.isView(v)) {
    return { $bytes: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  }
  if (v instanceof Set) return [...v].map(encode);
  if (Array.isArray(v)) return v.map(encode);
  const o = {};
  for (const k of Object.keys(v)) o[k] = encode(v[k]);
  return o;
}

function decode(v) {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map(decode);
  const keys = Object.keys(v);
  if (keys.length === 1 && keys[0] === "$bytes" && typeof v.$bytes === "string") {
    return Buffer.from(v.$bytes, "base64");
  }
  const o = {};
  for (const k of keys) o[k] = decode(v[k]);
  return o;
}

function startWatchdog(name, variable = "ROOMD_CLIENT_WATCHDOG_MS") {
  const ms = Number(process.env[variable] || 120000);
  setTimeout(() => {
    process.stderr.write(`${name}: watchdog fired after ${ms} ms, exiting\n`);
    process.exit(3);
  }, ms).unref();
}

function exitOnCrash(name, { onRejection }) {
  const describe = (e) => (e && e.stack ? e.stack : e);
  process.on("uncaughtException", (e) => {
    process.stderr.write(`${name}: uncaught ${describe(e)}\n`);
    process.exit(1);
  });
  process.on("unhandledRejection", (e) => {
    process.stderr.write(`${name}: unhandled rejection ${describe(e)}\n`);
    if (onRejection) process.exit(1);
  });
}

async function handleLine(handlers, exit, line) {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ id: null, ok: false, error: `bad JSON: ${e.message}` });
    return;
  }
  const id = cmd.id === undefined ? null : cmd.id;
  const fn = Object.prototype.hasOwnProperty.call(handlers, cmd.cmd) ? handlers[cmd.cmd] : null;
  if (!fn) {
    out({ id, ok: false, error: `unknown cmd ${JSON.stringify(cmd.cmd)}` });
    return;
  }
  try {
    const result = await fn(cmd);
    out(Object.assign({ id, ok: true }, result));
  } catch (e) {
    out(Object.assign({ id, ok: false }, e.info || { error: String(e && e.message ? e.message : e) }));
  }
  if (cmd.cmd === "close") exit(0);
}

function serveCommands(handlers, exit) {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on("line", (line) => { handleLine(handlers, exit, line); });
  rl.on("close", () => exit(0));
}

module.exports = { decode, encode, exitOnCrash, out, serveCommands, startWatchdog };
