#!/usr/bin/env node
// A socket.io-client driver for roomd's Python tests (see tests/harness.py, NodeClient).
//
// Protocol: one JSON object per line on stdin (a command), one JSON object per line on
// stdout (a reply or an event). Every command has an "id" and a "cmd"; every command gets
// exactly one reply: {"id": ..., "ok": true, ...} or {"id": ..., "ok": false, "error": "..."}.
// Unsolicited lines carry "event" instead of "id":
//   {"event": "recv", "sock": "s1", "name": "<event>", "args": [...], "withAck": bool}
//   {"event": "disconnect", "sock": "s1", "reason": "...", "description": ...}
//   {"event": "connect", "sock": "s1", "sid": "...", "recovered": bool}
//                                                          (every connect, the first included)
//   {"event": "connect_error", "sock": "s1", "message": "...", "data": ...}
//   {"event": "upgrade", "sock": "s1", "transport": "websocket"}
// Binary: {"$bytes": "<base64>"} stands for a Buffer, in both directions.
//
// Commands:
//   connect     {url, namespace="/", opts={}, listen=[]}  -> {sock, sid, transport}
//               opts go to io() (transports, auth, forceNew, multiplex, query, ...);
//               reconnection is false unless opts.reconnection is given (true, say,
//               with reconnectionDelay, for connection state recovery tests). listen: events to register before the
//               connection starts ("*" = catch-all), same as the "on" command.
//               On connect_error -> ok:false, error=err.message, data=err.data (the socket
//               is closed, unless keepOnError is true). joinOnConnect={event, args=[]}: on
//               every connect (reconnections included) emit it with an ack and print
//               {"event": "joined", "sock", "args": [...ack args]} (or "error" on no ack).
//   emit        {sock, event, args=[]}                    -> {}
//   emitWithAck {sock, event, args=[], timeout=5000}      -> {args: [...ack args]}
//   on          {sock, event, ack?, ackArgs?, autoAck=true} -> {}
//               prints a "recv" line per event; if the server asked for an ack it is
//               answered with ackArgs (list), else [ack] when "ack" is given, else
//               [{"echo": args}]; autoAck:false leaves it unanswered. event "*" = any event
//               that has no listener of its own.
//   off         {sock, event}                             -> {}
//   disconnect  {sock}                                    -> {}
//   connected   {sock}                                    -> {connected, sid}
//   transport   {sock}                                    -> {transport}
//   waitUpgrade {sock, timeout=5000}                      -> {transport: "websocket"}
//   state       {sock}                 -> {connected, sid, recovered, offset, pid}
//               socket.recovered and the connection state recovery fields the client keeps
//   reconnect   {sock}                 -> {} socket.connect() again after a disconnect (the
//               client's own reconnection path: CONNECT with its pid and offset)
//   retarget    {sock, url}            -> {} the Manager's next (re)connection goes to url
//               (another node of a cluster: cross-node connection state recovery)
//   cut         {sock, silent=false}                      -> {}
//               cut the socket's Engine.IO transport as a network failure would, so the
//               client reconnects (when reconnection is on). silent=false destroys the TCP
//               connection (the server sees it close at once); silent=true abandons it
//               without a byte or a FIN (the server learns only by its ping timeout) and
//               keeps it open, paused, until the process exits.
//   close       {}                                        -> {} then the process exits
// The process exits by itself when stdin closes, and after a watchdog
// (ROOMD_CLIENT_WATCHDOG_MS, default 120000 ms) whatever happens.
"use strict";

const { io } = require("socket.io-client");
const { decode, encode, exitOnCrash, out, serveCommands, startWatchdog } = require("./lines");

startWatchdog("client.js");
exitOnCrash("client.js", { onRejection: true });

function errInfo(err) {
  if (err === null || err === undefined) return { error: String(err) };
  const info = { error: err.message !== undefined ? String(err.message) : String(err) };
  if (err.data !== undefined) info.data = encode(err.data);
  if (err.description !== undefined) {
    const d = err.description;
    info.description = d && typeof d === "object" ? String(d.message || d) : d;
  }
  if (err.type !== undefined) info.type = err.type;
  return info;
}

// ---- sockets -----------------------------------------------------------------------------
const sockets = new Map(); // handle -> {socket, listeners: Map(event -> fn), anyFn}
let nextHandle = 1;

function getEntry(cmd) {
  const entry = sockets.get(cmd.sock);
  if (!entry) throw new Error(`unknown sock ${JSON.stringify(cmd.sock)}`);
  return entry;
}

function makeAckArgs(cmd, args) {
  if (Array.isArray(cmd.ackArgs)) return decode(cmd.ackArgs);
  if (Object.prototype.hasOwnProperty.call(cmd, "ack")) return [decode(cmd.ack)];
  return [{ echo: args }];
}

function makeListener(handle, cmd, eventName) {
  const autoAck = cmd.autoAck !== false;
  return (...args) => {
    let ackFn = null;
    if (args.length && typeof args[args.length - 1] === "function") ackFn = args.pop();
    out({ event: "recv", sock: handle, name: eventName, args: encode(args), withAck: ackFn !== null });
    if (ackFn && autoAck) ackFn(...makeAckArgs(cmd, args));
  };
}

function addListener(handle, entry, cmd) {
  const ev = cmd.event;
  if (typeof ev !== "string") throw new Error("on: event must be a string");
  removeListener(entry, ev);
  if (ev === "*") {
    const inner = (name, ...args) => {
      if (entry.listeners.has(name)) return; // has its own listener, reported there
      makeListener(handle, cmd, name)(...args);
    };
    entry.anyFn = inner;
    entry.socket.onAny(inner);
  } else {
    const fn = makeListener(handle, cmd, ev);
    entry.listeners.set(ev, fn);
    entry.socket.on(ev, fn);
  }
}

function removeListener(entry, ev) {
  if (ev === "*") {
    if (entry.anyFn) entry.socket.offAny(entry.anyFn);
    entry.anyFn = null;
  } else if (entry.listeners.has(ev)) {
    entry.socket.off(ev, entry.listeners.get(ev));
    entry.listeners.delete(ev);
  }
}

function withTimeout(ms, what, executor) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    executor(
      (v) => { clearTimeout(t); resolve(v); },
      (e) => { clearTimeout(t); reject(e); },
    );
  });
}

const handlers = {
  async connect(cmd) {
    const namespace = cmd.namespace || "/";
    const opts = Object.assign({}, cmd.opts || {});
    for (const k of ["auth", "query", "extraHeaders"]) if (k in opts) opts[k] = decode(opts[k]);
    if (!("reconnection" in opts)) opts.reconnection = false;
    const base = String(cmd.url).replace(/\/+$/, "");
    const url = namespace === "/" ? base : base + (namespace.startsWith("/") ? "" : "/") + namespace;
    opts.autoConnect = false;
    const socket = io(url, opts);
    const handle = `s${nextHandle++}`;
    const entry = { socket, listeners: new Map(), anyFn: null };
    sockets.set(handle, entry);
    for (const ev of cmd.listen || []) {
      addListener(handle, entry, Object.assign({}, cmd.listenOpts || {}, { event: ev }));
    }
    socket.on("disconnect", (reason, details) => {
      const line = { event: "disconnect", sock: handle, reason };
      if (details !== undefined) line.description = errInfo(details).error;
      out(line);
    });
    const hookEngine = () => {
      const engine = socket.io.engine;
      if (engine && !engine.__roomdHooked) {
        engine.__roomdHooked = true;
        engine.on("upgrade", (t) => out({ event: "upgrade", sock: handle, transport: t.name }));
      }
    };
    socket.io.on("open", hookEngine);
    return await new Promise((resolve, reject) => {
      let first = true;
      socket.on("connect", () => {
        hookEngine();
        if (cmd.joinOnConnect) {
          const join = cmd.joinOnConnect;
          socket.timeout(5000).emit(join.event, ...decode(join.args || []), (err, ...ackArgs) => {
            const line = { event: "joined", sock: handle, args: encode(ackArgs) };
            if (err) line.error = String(err.message || err);
            out(line);
          });
        }
        out({ event: "connect", sock: handle, sid: socket.id, recovered: !!socket.recovered });
        if (first) {
          first = false;
          resolve({ sock: handle, sid: socket.id, transport: socket.io.engine.transport.name });
        }
      });
      socket.on("connect_error", (err) => {
        const info = errInfo(err);
        out(Object.assign({ event: "connect_error", sock: handle }, info, { message: info.error }));
        if (first) {
          first = false;
          if (!cmd.keepOnError) {
            socket.close();
            sockets.delete(handle);
          }
          const e = new Error(info.error);
          e.info = Object.assign(info, { sock: handle });
          reject(e);
        }
      });
      socket.connect();
    });
  },

  async emit(cmd) {
    const { socket } = getEntry(cmd);
    socket.emit(cmd.event, ...decode(cmd.args || []));
    return {};
  },

  async emitWithAck(cmd) {
    const { socket } = getEntry(cmd);
    const timeout = cmd.timeout === undefined ? 5000 : cmd.timeout;
    return await new Promise((resolve, reject) => {
      socket.timeout(timeout).emit(cmd.event, ...decode(cmd.args || []), (err, ...ackArgs) => {
        if (err) {
          const e = new Error(err.message || String(err));
          e.info = { error: e.message, timeout: true };
          reject(e);
        } else {
          resolve({ args: encode(ackArgs) });
        }
      });
    });
  },

  async on(cmd) {
    addListener(cmd.sock, getEntry(cmd), cmd);
    return {};
  },

  async off(cmd) {
    removeListener(getEntry(cmd), cmd.event);
    return {};
  },

  async disconnect(cmd) {
    const entry = getEntry(cmd);
    entry.socket.disconnect();
    return {};
  },

  async connected(cmd) {
    const { socket } = getEntry(cmd);
    return { connected: socket.connected, sid: socket.id === undefined ? null : socket.id };
  },

  async transport(cmd) {
    const { socket } = getEntry(cmd);
    const engine = socket.io.engine;
    return { transport: engine && engine.transport ? engine.transport.name : null };
  },

  async waitUpgrade(cmd) {
    const { socket } = getEntry(cmd);
    const engine = socket.io.engine;
    if (!engine) throw new Error("not connected");
    if (engine.transport.name === "websocket") return { transport: "websocket" };
    const timeout = cmd.timeout === undefined ? 5000 : cmd.timeout;
    return await withTimeout(timeout, "waitUpgrade", (resolve, reject) => {
      engine.once("upgrade", (t) => resolve({ transport: t.name }));
      engine.once("upgradeError", (e) => reject(new Error(`upgradeError: ${e && e.message}`)));
    });
  },

  async state(cmd) {
    const { socket } = getEntry(cmd);
    return {
      connected: socket.connected,
      sid: socket.id === undefined ? null : socket.id,
      recovered: !!socket.recovered,
      pid: socket._pid === undefined ? null : socket._pid,
      offset: socket._lastOffset === undefined ? null : socket._lastOffset,
    };
  },

  async reconnect(cmd) {
    getEntry(cmd).socket.connect();
    return {};
  },

  async retarget(cmd) {
    getEntry(cmd).socket.io.uri = cmd.url;
    return {};
  },

  async cut(cmd) {
    const { socket } = getEntry(cmd);
    const engine = socket.io.engine;
    const transport = engine && engine.transport;
    if (!transport) throw new Error("no transport to cut");
    let raw = null;
    if (transport.ws && transport.ws._socket) raw = transport.ws._socket; // ws in node
    if (cmd.silent) {
      if (!raw) throw new Error("silent cut needs the websocket transport");
      raw.pause(); // read nothing more: the server's pings go unanswered
      abandoned.push(raw);
      transport.doClose = () => {}; // closing the transport must not reach the wire
      if (transport.ws) transport.ws.onclose = transport.ws.onmessage = transport.ws.onerror = null;
    } else if (raw) {
      raw.destroy();
      return {};
    } else {
      // long-polling: abort the requests in flight as a dead network would
      transport.doClose = () => {};
    }
    transport.onError("cut by the test", new Error("cut"));
    return {};
  },

  async close() {
    return {};
  },
};

const abandoned = []; // TCP connections left open by silent cuts, destroyed at exit

function shutdown(code) {
  for (const raw of abandoned) {
    try { raw.destroy(); } catch (e) { /* exiting anyway */ }
  }
  for (const { socket } of sockets.values()) {
    try { socket.close(); } catch (e) { /* exiting anyway */ }
  }
  process.exit(code);
}

serveCommands(handlers, shutdown);
