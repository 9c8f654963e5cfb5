#!/usr/bin/env node
// The yardstick's Node.js bench app (../shared/bench/servers/node_socketio.js) with both
// transports, for bench/storm.py --transports default (the stock clients' default:
// long-polling, then the upgrade). Usage: node bench/storm_node.js PORT
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT || 3101);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["polling", "websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  serveClient: false,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack(true);
  });
  socket.on("pub", (room, payload) => {
    socket.to(room).emit("msg", payload);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.error(`node socket.io storm app (polling, websocket) listening on 127.0.0.1:${port}`);
});
const stop = () => { io.close(); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
