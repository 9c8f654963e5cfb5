#!/usr/bin/env node
// The yardstick's bench app (../shared/bench/README.md) on Node.js socket.io with
// @socket.io/redis-adapter, for bench/cluster_bench.py:
//
//   node bench/cluster_node.js PORT redis://127.0.0.1:RPORT [classic|sharded] [key]
//
// The bench app of bench/node_app.js, websocket only as the yardstick's. The npm packages
// come from tests/node/node_modules (make install), or from $BENCH_NODE_MODULES_OF (a
// folder with a package.json and node_modules). Listens on 127.0.0.1 only; exits on SIGTERM.
'use strict';
const path = require('path');
const { createRequire } = require('module');

const base = process.env.BENCH_NODE_MODULES_OF || path.join(__dirname, '..', 'tests', 'node');
const req = createRequire(path.join(base, 'package.json'));
const { serveBenchApp } = require('./node_app');
const { Server } = req('socket.io');
const { createAdapter, createShardedAdapter } = req('@socket.io/redis-adapter');
const { createClient } = req('redis');

const port = Number(process.argv[2]);
const url = process.argv[3];
const mode = process.argv[4] || 'classic';
const key = process.argv[5] || 'socket.io';
if (!port || !/^redis:\/\/(127\.|localhost)/.test(url || '')) {
  console.error('usage: cluster_node.js PORT redis://127.0.0.1:RPORT [classic|sharded] [key]');
  process.exit(2);
}

async function main() {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on('error', (e) => console.error('redis error:', e && e.message));
  await Promise.all([pub.connect(), sub.connect()]);
  const adapter = mode === 'sharded'
    ? createShardedAdapter(pub, sub, { channelPrefix: key })
    : createAdapter(pub, sub, { key });
  serveBenchApp(Server, port, { adapter, transports: ['websocket'] },
    `node socket.io cluster bench app (${mode}, ${url})`);
}
main().catch((e) => { console.error(e && e.stack ? e.stack : e); process.exit(1); });
