// Server robustness and lifecycle as seen from Node: clients that die
// mid-request, many concurrent clients, and clean shutdown on signals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { MongoClient } from 'mongodb';
import { startServer } from '../lib/server.mjs';
import { opMsg, rawRoundTrip } from '../lib/wire.mjs';

const OPTS = { serverSelectionTimeoutMS: 10_000, connectTimeoutMS: 5_000 };

function connectRaw(host, port) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port }, () => resolve(s));
    s.on('error', reject);
  });
}

test('server survives clients killing their connections mid-request', async (t) => {
  const server = await startServer();
  try {
    const client = new MongoClient(server.uri, OPTS);
    await client.connect();
    const coll = client.db('node_robust').collection('items');
    await coll.insertMany(Array.from({ length: 500 }, (_, i) => ({ _id: i, blob: 'z'.repeat(2000) })));

    // half a message, then an RST
    const msg = opMsg({ insert: 'items', documents: [{ _id: 'half' }], $db: 'node_robust' });
    let s = await connectRaw(server.host, server.port);
    s.write(msg.subarray(0, msg.length >> 1));
    await new Promise((r) => setTimeout(r, 50));
    s.resetAndDestroy();

    // a request with a big reply, reset before reading it
    for (let i = 0; i < 5; i++) {
      s = await connectRaw(server.host, server.port);
      s.write(opMsg({ find: 'items', batchSize: 500, $db: 'node_robust' }));
      await new Promise((r) => setTimeout(r, 20));
      s.resetAndDestroy();
    }

    // a node driver process that is SIGKILLed while inserting and reading
    const script = `
      const { MongoClient } = require('mongodb');
      const c = new MongoClient(${JSON.stringify(server.uri)});
      (async () => {
        await c.connect();
        const w = c.db('node_robust').collection('killed');
        const r = c.db('node_robust').collection('items');
        const writer = async () => { for (let i = 0; ; i++) await w.insertMany(Array.from({ length: 200 }, (_, j) => ({ w: i, j }))); };
        const reader = async () => { for (;;) await r.find({}, { batchSize: 3 }).toArray(); };
        writer(); reader(); reader();
        setTimeout(() => { console.log('killing myself'); process.kill(process.pid, 'SIGKILL'); }, 1500);
      })();
    `;
    const child = spawn(process.execPath, ['-e', script], { cwd: new URL('..', import.meta.url).pathname, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const res = await new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    assert.equal(res.signal, 'SIGKILL', `child exit ${JSON.stringify(res)} stderr: ${err}`);
    assert.match(out, /killing myself/);

    await new Promise((r) => setTimeout(r, 300));
    assert.ok(server.alive(), `server died; stderr tail:\n${server.logTail()}`);
    const ping = await rawRoundTrip(server.host, server.port, opMsg({ ping: 1, $db: 'admin' }, 77));
    assert.equal(ping.ok, 1);
    assert.equal(await coll.estimatedDocumentCount(), 500);
    assert.equal(await coll.findOne({ _id: 'half' }), null);
    await coll.insertOne({ _id: 'after' });
    assert.deepEqual(await coll.findOne({ _id: 'after' }), { _id: 'after' });
    await client.close();
    t.diagnostic(`server pid ${server.pid} alive after clients were killed mid-request`);
  } finally {
    const info = await server.stop();
    assert.deepEqual(info, { code: 0, signal: null });
  }
});

test('32 concurrent clients', async () => {
  const server = await startServer();
  try {
    await Promise.all(Array.from({ length: 32 }, async (_, n) => {
      const c = new MongoClient(server.uri, OPTS);
      try {
        await c.connect();
        const coll = c.db('node_conc').collection(`w${n}`);
        await coll.insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: i, n })));
        const got = await coll.find({ n }).toArray();
        assert.deepEqual(got.map((d) => d._id).sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
        assert.equal((await coll.deleteMany({})).deletedCount, 50);
      } finally {
        await c.close();
      }
    }));
  } finally {
    await server.stop();
  }
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  test(`clean shutdown on ${sig} (exit code 0, port closed)`, async () => {
    const server = await startServer();
    const c = new MongoClient(server.uri, OPTS);
    await c.connect();
    await c.db('life').collection('x').insertOne({ _id: 1 });
    await c.close();
    const info = await server.stop(sig);
    assert.deepEqual(info, { code: 0, signal: null }, `stderr tail:\n${server.logTail()}`);
    await assert.rejects(connectRaw(server.host, server.port));
  });
}
