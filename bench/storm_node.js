#!/usr/bin/env node
// The yardstick's Node.js bench app (../shared/bench/servers/node_socketio.js) with both
// transports, for bench/storm.py --transports default (the stock clients' default:
// long-polling, then the upgrade). Usage: node bench/storm_node.js PORT
"use strict";
const { Server } = require("socket.io");
const { serveBenchApp } = require("./node_app");

const port = Number(process.argv[2] || process.env.PORT || 3101);
serveBenchApp(Server, port, { transports: ["polling", "websocket"] },
  "node socket.io storm app (polling, websocket)");
