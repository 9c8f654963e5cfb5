#!/usr/bin/env node
// A Node.js Socket.IO server (the socket.io npm package) for roomd's client tests.
//
//   node sio_server.js [--tls CERT.pem KEY.pem]
//
// Listens on 127.0.0.1, a free port, over HTTP (or HTTPS with --tls) and prints one line
// {"port": N} on stdout once listening. Exits when stdin closes, and after a watchdog
// (SIO_SERVER_WATCHDOG_MS, default 120000 ms) whatever happens.
//
// Namespaces "/", "/orders" and "/secure" (any other gets "Invalid namespace"). "/secure"
// has a middleware that refuses a handshake whose auth.token is not "sekret", with the
// message "not authorized" and data {"code": 401}. Every namespace has relay-like events,
// each answered by ack when the client asks for one:
//   join    (room | [rooms])             -> {"rooms": [...]}   (the socket's rooms after)
//   leave   (room | [rooms])             -> {"rooms": [...]}
//   publish (room | [rooms], event, ...args) -> {"recipients": N}  (to the rooms, except the sender)
//   echo    (...args)                    -> the same args back
//   whoami  ()                           -> {"sid", "auth", "query", "header"}  (header: x-test)
//   kick    ()                           -> the server disconnects the socket
//   ask_back (...args)                   -> the server emits "question" (args) asking for an
//                                           ack; answers with it, or "no answer" after 2 s
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const { Server } = require("socket.io");
const { startWatchdog } = require("./lines");

startWatchdog("sio_server.js", "SIO_SERVER_WATCHDOG_MS");

const argv = process.argv.slice(2);
let httpServer;
if (argv[0] === "--tls") {
  httpServer = https.createServer({ cert: fs.readFileSync(argv[1]), key: fs.readFileSync(argv[2]) });
} else {
  httpServer = http.createServer();
}

const io = new Server(httpServer, { pingInterval: 25000, pingTimeout: 20000 });

function roomList(value) {
  const rooms = typeof value === "string" ? [value] : value;
  if (!Array.isArray(rooms) || rooms.length === 0 || !rooms.every((r) => typeof r === "string" && r)) {
    throw new Error("rooms must be a room name or a non-empty list of room names");
  }
  return rooms;
}

function answer(args, fn) {
  const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
  let reply;
  try {
    reply = fn(...args);
  } catch (err) {
    reply = { error: err.message };
  }
  Promise.resolve(reply).then((value) => {
    if (ack) ack(value);
  });
}

function relay(nsp) {
  nsp.on("connection", (socket) => {
    socket.on("join", (...args) => answer(args, (rooms) => {
      socket.join(roomList(rooms));
      return { rooms: [...socket.rooms].sort() };
    }));
    socket.on("leave", (...args) => answer(args, (rooms) => {
      for (const room of roomList(rooms)) socket.leave(room);
      return { rooms: [...socket.rooms].sort() };
    }));
    socket.on("publish", (...args) => answer(args, async (rooms, event, ...rest) => {
      const names = roomList(rooms);
      if (typeof event !== "string" || !event) throw new Error("the event name must be a non-empty string");
      const targets = await nsp.in(names).fetchSockets();
      socket.to(names).emit(event, ...rest);
      return { recipients: targets.filter((s) => s.id !== socket.id).length };
    }));
    socket.on("echo", (...args) => {
      const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
      if (ack) ack(...args);
    });
    socket.on("whoami", (...args) => answer(args, () => ({
      sid: socket.id,
      auth: socket.handshake.auth,
      query: socket.handshake.query,
      header: socket.handshake.headers["x-test"] || null,
    })));
    socket.on("kick", () => socket.disconnect(true));
    socket.on("ask_back", async (...args) => {
      const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
      let reply;
      try {
        reply = await socket.timeout(2000).emitWithAck("question", ...args);
      } catch (err) {
        reply = "no answer";
      }
      if (ack) ack(reply);
    });
  });
}

relay(io.of("/"));
relay(io.of("/orders"));
const secure = io.of("/secure");
secure.use((socket, next) => {
  if (socket.handshake.auth && socket.handshake.auth.token === "sekret") return next();
  const err = new Error("not authorized");
  err.data = { code: 401 };
  next(err);
});
relay(secure);

httpServer.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: httpServer.address().port }) + "\n");
});

process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
