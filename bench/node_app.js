// The yardstick's bench app (../shared/bench/README.md) on Node.js socket.io, shared by
// bench/storm_node.js and bench/cluster_node.js: join(room) -> join, ack true;
// pub(room, payload) -> to(room).emit('msg', payload) (sender excluded). The yardstick's
// engine options (no compression, pingInterval 25000, pingTimeout 20000, maxHttpBufferSize
// 1e6) plus `options` (transports, adapter). Listens on 127.0.0.1 only; exits on SIGTERM.
'use strict';
const http = require('http');

function serveBenchApp(Server, port, options, label) {
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    perMessageDeflate: false,
    httpCompression: false,
    pingInterval: 25000,
    pingTimeout: 20000,
    maxHttpBufferSize: 1e6,
    serveClient: false,
    ...options,
  });
  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      socket.join(room);
      if (typeof ack === 'function') ack(true);
    });
    socket.on('pub', (room, payload) => {
      socket.to(room).emit('msg', payload);
    });
  });
  httpServer.listen(port, '127.0.0.1', () => {
    console.error(`${label} listening on 127.0.0.1:${port} pid=${process.pid}`);
  });
  const stop = () => { io.close(); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  return io;
}

module.exports = { serveBenchApp };
