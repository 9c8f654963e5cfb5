#!/usr/bin/env node
// A Node.js Socket.IO server in a Redis cluster, for roomd's mixed-cluster tests
// (tests/cluster_harness.py, NodePeer). Also drives @socket.io/redis-emitter.
//
//   node cluster_node.js --redis redis://127.0.0.1:PORT [--mode classic|sharded|streams]
//        [--cluster] [--key socket.io] [--nsp /a --nsp /b] [--no-server]
//        [--requests-timeout 5000] [--recovery MS]
//
// --mode streams uses @socket.io/redis-streams-adapter (stream "socket.io", channelPrefix
// --key); --recovery MS turns connectionStateRecovery on with maxDisconnectionDuration MS.
// The "whoami" client event is answered with {sid, rooms, data, recovered}; the "publish"
// client event (room, n) emits "msg" n to that room and is answered "ok".
// --cluster uses node-redis' createCluster (rootNodes from --redis); --no-server runs only the
// emitter (no Socket.IO server, so it is not counted as a node). Prints one
// {"event": "listening", "port": N} line once the server listens on 127.0.0.1 (or
// {"event": "ready"} with --no-server).
//
// Protocol: one JSON command per stdin line {id, cmd, ...}, one JSON reply per line
// {id, ok: true, ...} / {id, ok: false, error, timeout?}. Binary: {"$bytes": base64}.
// Unsolicited lines: {"event": "serverEvent", nsp, name, args} for every server-side emit
// received from another node (answered, when the sender wants a reply, with
// {"from": "node", "args": args}); {"event": "clientEvent", nsp, sid, name, args} for every
// event a client sends.
// Targets: {nsp="/", rooms=[], except=[], volatile=false}.
// Commands:
//   emit {target, event, args}                    io.of(nsp).to().except()[.volatile].emit()
//   emitWithAck {target, event, args, timeout}    -> {args: [...]}  (timeout: ok false, timeout true,
//                                                    args: what arrived)
//   fetchSockets {target}                         -> {sockets: [{id, rooms, data, handshake}]}
//   socketsJoin / socketsLeave {target, rooms}    -> {}
//   disconnectSockets {target, close=false}       -> {}
//   remoteEmit {target, socketId, event, args}    fetchSockets, then emit on the RemoteSocket with that id
//   serverSideEmit {nsp, event, args}             -> {}
//   serverSideEmitWithAck {nsp, event, args}     -> {args: [...]} (bounded by --requests-timeout)
//   allRooms {nsp}                                -> {rooms: [...]}
//   serverCount {nsp}                             -> {count}
//   localRooms {nsp}                              -> {rooms: {room: [sid...]}}
//   emitter {op, target, event, args, rooms, close}  op: emit | socketsJoin | socketsLeave |
//                                                 disconnectSockets | serverSideEmit
//   cut {nsp, sid}                                destroy the TCP connection under a socket
//   close {}                                      -> {} then exit
// Clients: on connection socket.data = {node: true, ...auth.data}; client events "join" (rooms)
// and "leave" (rooms) are answered with the socket's rooms. The process exits when stdin closes
// and after a watchdog (ROOMD_CLIENT_WATCHDOG_MS, default 120000 ms).
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const { Emitter } = require("@socket.io/redis-emitter");
const { createAdapter: createStreamsAdapter } = require("@socket.io/redis-streams-adapter");
const { createClient, createCluster } = require("redis");

const { decode, encode, exitOnCrash, out, serveCommands, startWatchdog } = require("./lines");

startWatchdog("cluster_node.js");
exitOnCrash("cluster_node.js", { onRejection: false });

// ---- arguments ---------------------------------------------------------------------------
const argv = process.argv.slice(2);
const opts = { mode: "classic", key: "socket.io", nsps: [], cluster: false, server: true,
               requestsTimeout: 5000, redis: null, recovery: 0 };
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === "--redis") opts.redis = argv[++i];
  else if (a === "--mode") opts.mode = argv[++i];
  else if (a === "--key") opts.key = argv[++i];
  else if (a === "--nsp") opts.nsps.push(argv[++i]);
  else if (a === "--cluster") opts.cluster = true;
  else if (a === "--no-server") opts.server = false;
  else if (a === "--requests-timeout") opts.requestsTimeout = Number(argv[++i]);
  else if (a === "--recovery") opts.recovery = Number(argv[++i]);
  else { process.stderr.write(`unknown argument ${a}\n`); process.exit(2); }
}

function redisClient() {
  const client = opts.cluster
    ? createCluster({ rootNodes: [{ url: opts.redis }] })
    : createClient({ url: opts.redis });
  client.on("error", (e) => process.stderr.write(`redis error: ${e && e.message}\n`));
  return client;
}

let io = null;
let emitter = null;

// The command's target as a broadcast operator of `root` (the server, or the emitter).
function target(cmd, root = io) {
  const t = cmd.target || {};
  let op = root.of(t.nsp || "/");
  if (t.rooms && t.rooms.length) op = op.to(t.rooms);
  if (t.except && t.except.length) op = op.except(t.except);
  if (t.volatile) op = op.volatile;
  return op;
}

function socketInfo(s) {
  const { sessionStore, ...handshake } = s.handshake || {};
  return { id: s.id, rooms: [...s.rooms], data: encode(s.data), handshake: encode(handshake) };
}

function namespace(name) {
  const nsp = io.of(name);
  if (nsp.__roomdSetUp) return nsp;
  nsp.__roomdSetUp = true;
  nsp.on("connection", (socket) => {
    const auth = socket.handshake.auth || {};
    if (!socket.recovered) {
      socket.data = Object.assign({ node: true }, auth.data || {});
      if (auth.room) {
        socket.join(auth.room);
        socket.data.joined = auth.room;
      }
    }
    socket.on("whoami", (ack) => {
      ack({ sid: socket.id, rooms: [...socket.rooms].sort(), data: socket.data,
            recovered: socket.recovered });
    });
    socket.on("publish", (room, n, ack) => {
      socket.to(room).emit("msg", n);
      if (typeof ack === "function") ack("ok");
    });
    socket.on("join", (rooms, ack) => {
      socket.join(rooms);
      if (typeof ack === "function") ack([...socket.rooms]);
    });
    socket.on("leave", (rooms, ack) => {
      for (const r of [].concat(rooms)) socket.leave(r);
      if (typeof ack === "function") ack([...socket.rooms]);
    });
    socket.onAny((name, ...args) => {
      if (typeof args[args.length - 1] === "function") args.pop();
      out({ event: "clientEvent", nsp: nsp.name, sid: socket.id,
            name, args: encode(args) });
    });
  });
  return nsp;
}

// Server-side emits arrive as events on the namespace object itself.
function listenServerEvents(nsp) {
  const orig = nsp._onServerSideEmit.bind(nsp);
  nsp._onServerSideEmit = (args) => {
    const copy = args.slice();
    let ack = null;
    if (typeof copy[copy.length - 1] === "function") ack = copy.pop();
    out({ event: "serverEvent", nsp: nsp.name, name: copy[0], args: encode(copy.slice(1)) });
    if (ack) ack({ from: "node", args: encode(copy.slice(1)) });
    return orig(args.slice(0, ack ? -1 : undefined));
  };
}

const handlers = {
  async emit(cmd) {
    target(cmd).emit(cmd.event, ...decode(cmd.args || []));
    return {};
  },
  async emitWithAck(cmd) {
    try {
      const args = await target(cmd).timeout(cmd.timeout || 5000)
        .emitWithAck(cmd.event, ...decode(cmd.args || []));
      return { args: encode(args) };
    } catch (e) {
      throw { info: { error: String(e.message || e), timeout: true } };
    }
  },
  async fetchSockets(cmd) {
    const sockets = await target(cmd).fetchSockets();
    return { sockets: sockets.map(socketInfo) };
  },
  async socketsJoin(cmd) { target(cmd).socketsJoin(cmd.rooms); return {}; },
  async socketsLeave(cmd) { target(cmd).socketsLeave(cmd.rooms); return {}; },
  async disconnectSockets(cmd) { target(cmd).disconnectSockets(!!cmd.close); return {}; },
  async remoteEmit(cmd) {
    const sockets = await target(cmd).fetchSockets();
    const s = sockets.find((x) => x.id === cmd.socketId);
    if (!s) throw new Error(`no socket ${cmd.socketId}`);
    s.emit(cmd.event, ...decode(cmd.args || []));
    return {};
  },
  async serverSideEmit(cmd) {
    io.of(cmd.nsp || "/").serverSideEmit(cmd.event, ...decode(cmd.args || []));
    return {};
  },
  async serverSideEmitWithAck(cmd) {
    try {
      // the adapter's requestsTimeout bounds it (--requests-timeout)
      const args = await io.of(cmd.nsp || "/")
        .serverSideEmitWithAck(cmd.event, ...decode(cmd.args || []));
      return { args: encode(args) };
    } catch (e) {
      throw { info: { error: String(e.message || e), timeout: true } };
    }
  },
  async allRooms(cmd) {
    const rooms = await io.of(cmd.nsp || "/").adapter.allRooms();
    return { rooms: [...rooms] };
  },
  async serverCount(cmd) {
    return { count: await io.of(cmd.nsp || "/").adapter.serverCount() };
  },
  async localRooms(cmd) {
    const rooms = {};
    for (const [room, sids] of io.of(cmd.nsp || "/").adapter.rooms) rooms[room] = [...sids];
    return { rooms };
  },
  async emitter(cmd) {
    const e = target(cmd, emitter);
    switch (cmd.op) {
      case "emit": e.emit(cmd.event, ...decode(cmd.args || [])); break;
      case "socketsJoin": e.socketsJoin(cmd.rooms); break;
      case "socketsLeave": e.socketsLeave(cmd.rooms); break;
      case "disconnectSockets": e.disconnectSockets(!!cmd.close); break;
      case "serverSideEmit": emitter.of((cmd.target || {}).nsp || "/").serverSideEmit(cmd.event, ...decode(cmd.args || [])); break;
      default: throw new Error(`unknown emitter op ${cmd.op}`);
    }
    return {};
  },
  async cut(cmd) {
    // Shut the TCP connection under a socket, as a dead network would.
    const s = io.of(cmd.nsp || "/").sockets.get(cmd.sid);
    if (!s) throw new Error(`no socket ${cmd.sid}`);
    const transport = s.conn.transport;
    const raw = transport.socket && transport.socket._socket ? transport.socket._socket
      : (transport.req && transport.req.socket) || null;
    if (raw) raw.destroy();
    else s.conn.close();
    return {};
  },
  async close() { return {}; },
};

async function main() {
  const pub = redisClient();
  await pub.connect();
  emitter = new Emitter(pub, { key: opts.key });
  if (opts.server) {
    const sub = pub.duplicate();
    sub.on("error", (e) => process.stderr.write(`redis error: ${e && e.message}\n`));
    await sub.connect();
    let adapter;
    if (opts.mode === "sharded") {
      adapter = createShardedAdapter(pub, sub, { channelPrefix: opts.key });
    } else if (opts.mode === "streams") {
      adapter = createStreamsAdapter(pub, { channelPrefix: opts.key });
    } else {
      adapter = createAdapter(pub, sub, { key: opts.key, requestsTimeout: opts.requestsTimeout });
    }
    const httpServer = http.createServer();
    const serverOpts = { adapter, cors: { origin: "*" } };
    if (opts.recovery > 0) {
      serverOpts.connectionStateRecovery = { maxDisconnectionDuration: opts.recovery };
      serverOpts.pingInterval = 500;
      serverOpts.pingTimeout = 500;
    }
    io = new Server(httpServer, serverOpts);
    for (const name of ["/", ...opts.nsps]) {
      const nsp = namespace(name);
      listenServerEvents(nsp);
    }
    await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
    out({ event: "listening", port: httpServer.address().port });
  } else {
    out({ event: "ready" });
  }
  serveCommands(handlers, process.exit);
}

main().catch((e) => {
  process.stderr.write(`cluster_node.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
