// Node.js `mongodb` driver integration tests against a real Mangrove server.
// The client connects with a plain mongodb://HOST:PORT/ (no directConnection),
// so the driver runs replica-set discovery and must see ReplicaSetWithPrimary.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Long, MongoBulkWriteError, MongoClient, MongoServerError, ObjectId } from 'mongodb';
import { startServer } from '../lib/server.mjs';
import { COMPRESSOR_IDS, OP_COMPRESSED, OP_MSG, startWireProxy } from '../lib/wire.mjs';

const require = createRequire(import.meta.url);
const DRIVER_VERSION = require('mongodb/package.json').version;
const OPTS = { serverSelectionTimeoutMS: 10_000, connectTimeoutMS: 5_000 };

function canLoad(name) {
  try {
    require(name);
    return true;
  } catch {
    return false;
  }
}

function topologyLine(label, client) {
  const d = client.topology.description;
  const servers = [...d.servers.entries()].map(([a, sd]) => `${a}=${sd.type}`).join(', ');
  return `[node mongodb ${DRIVER_VERSION}] ${label}: topology_type=${d.type} set_name=${d.setName} servers=[${servers}]`;
}

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  if (!server) return;
  const alive = server.alive();
  const tail = server.logTail();
  const info = await server.stop();
  assert.ok(alive, `server died during the tests; stderr tail:\n${tail}`);
  assert.deepEqual(info, { code: 0, signal: null }, `server did not exit cleanly on SIGTERM; stderr tail:\n${tail}`);
});

async function withClient(uriSuffix, fn, opts = {}) {
  const client = new MongoClient(server.uri + uriSuffix, { ...OPTS, ...opts });
  try {
    await client.connect();
    return await fn(client);
  } finally {
    await client.close();
  }
}

describe('topology and handshake', () => {
  test('plain URI discovers ReplicaSetWithPrimary rs0', async (t) => {
    const changes = [];
    const client = new MongoClient(server.uri, OPTS);
    client.on('topologyDescriptionChanged', (ev) => changes.push(ev.newDescription.type));
    try {
      await client.connect();
      const ping = await client.db('admin').command({ ping: 1 });
      assert.equal(ping.ok, 1);
      const line = topologyLine(`mongodb://${server.address}/`, client);
      console.log(line);
      t.diagnostic(line);
      t.diagnostic(`topologyDescriptionChanged types: ${changes.join(' -> ')}`);
      const d = client.topology.description;
      assert.equal(d.type, 'ReplicaSetWithPrimary');
      assert.equal(d.setName, 'rs0');
      assert.deepEqual([...d.servers.keys()], [server.address]);
      assert.equal(d.servers.get(server.address).type, 'RSPrimary');
      assert.ok(changes.includes('ReplicaSetWithPrimary'), `events: ${changes}`);
    } finally {
      await client.close();
    }
  });

  test('replicaSet=rs0 URI option', async (t) => {
    await withClient('?replicaSet=rs0', async (client) => {
      await client.db('admin').command({ ping: 1 });
      const line = topologyLine(`mongodb://${server.address}/?replicaSet=rs0`, client);
      console.log(line);
      t.diagnostic(line);
      assert.equal(client.topology.description.type, 'ReplicaSetWithPrimary');
    });
  });

  test('directConnection=true gives Single', async (t) => {
    await withClient('?directConnection=true', async (client) => {
      await client.db('admin').command({ ping: 1 });
      const line = topologyLine(`mongodb://${server.address}/?directConnection=true`, client);
      console.log(line);
      t.diagnostic(line);
      assert.equal(client.topology.description.type, 'Single');
    });
  });

  test('hello, isMaster and buildInfo', async (t) => {
    await withClient('', async (client) => {
      const admin = client.db('admin');
      const hello = await admin.command({ hello: 1 });
      assert.equal(hello.ok, 1);
      assert.equal(hello.isWritablePrimary, true);
      assert.equal(hello.setName, 'rs0');
      assert.ok(hello.hosts.includes(server.address), `hosts=${hello.hosts}`);
      assert.equal(hello.maxMessageSizeBytes, 48_000_000);
      assert.equal(hello.maxBsonObjectSize, 16 * 1024 * 1024);
      assert.ok(hello.maxWireVersion >= 8, `maxWireVersion=${hello.maxWireVersion}`);
      const legacy = await admin.command({ isMaster: 1 });
      assert.equal(legacy.ismaster, true);
      assert.equal(legacy.setName, 'rs0');
      const info = await admin.command({ buildInfo: 1 });
      assert.equal(typeof info.version, 'string');
      assert.ok(Array.isArray(info.versionArray) && info.versionArray.length >= 3);
      t.diagnostic(`buildInfo.version=${info.version}`);
    });
  });
});

describe('CRUD', () => {
  let client;
  before(async () => {
    client = new MongoClient(server.uri, OPTS);
    await client.connect();
  });
  after(async () => client.close());

  test('insertOne and findOne', async () => {
    const coll = client.db('node_crud').collection('people');
    const res = await coll.insertOne({ name: 'ada', age: 36, tags: ['math', 'code'] });
    assert.equal(res.acknowledged, true);
    assert.ok(res.insertedId instanceof ObjectId);
    const got = await coll.findOne({ _id: res.insertedId });
    assert.deepEqual(got, { _id: res.insertedId, name: 'ada', age: 36, tags: ['math', 'code'] });
    assert.equal(await coll.findOne({ name: 'nobody' }), null);
    await coll.insertOne({ _id: 'custom', nested: { a: { b: 1.5 } } });
    assert.deepEqual(await coll.findOne({ _id: 'custom' }), { _id: 'custom', nested: { a: { b: 1.5 } } });
  });

  test('insertMany and find with filters', async () => {
    const coll = client.db('node_crud').collection('nums');
    const docs = Array.from({ length: 20 }, (_, i) => ({ _id: i, n: i, even: i % 2 === 0 }));
    const res = await coll.insertMany(docs);
    assert.equal(res.insertedCount, 20);
    const ids = (d) => d.map((x) => x._id).sort((a, b) => a - b);
    assert.deepEqual(ids(await coll.find({ even: true }).toArray()), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    assert.deepEqual(ids(await coll.find({ n: { $gte: 15 } }).toArray()), [15, 16, 17, 18, 19]);
    assert.deepEqual(ids(await coll.find({ n: { $lt: 6 }, even: false }).toArray()), [1, 3, 5]);
    assert.deepEqual(ids(await coll.find({ n: { $in: [2, 3, 99] } }).toArray()), [2, 3]);
    assert.deepEqual(await coll.findOne({ _id: 4 }, { projection: { n: 1, _id: 0 } }), { n: 4 });
  });

  test('updateOne, updateMany, upsert', async () => {
    const coll = client.db('node_crud').collection('upd');
    await coll.insertMany(Array.from({ length: 10 }, (_, i) => ({ _id: i, group: i < 5 ? 'a' : 'b', score: i })));
    let r = await coll.updateOne({ _id: 3 }, { $set: { score: 300, flag: true } });
    assert.equal(r.matchedCount, 1);
    assert.equal(r.modifiedCount, 1);
    assert.deepEqual(await coll.findOne({ _id: 3 }), { _id: 3, group: 'a', score: 300, flag: true });
    r = await coll.updateMany({ group: 'b' }, { $inc: { score: 100 } });
    assert.equal(r.matchedCount, 5);
    assert.equal(r.modifiedCount, 5);
    const b = await coll.find({ group: 'b' }).sort({ _id: 1 }).toArray();
    assert.deepEqual(b.map((d) => d.score), [105, 106, 107, 108, 109]);
    r = await coll.updateOne({ _id: 'up' }, { $set: { v: 1 } }, { upsert: true });
    assert.equal(r.upsertedCount, 1);
    assert.equal(r.upsertedId, 'up');
    assert.deepEqual(await coll.findOne({ _id: 'up' }), { _id: 'up', v: 1 });
  });

  test('replaceOne', async () => {
    const coll = client.db('node_crud').collection('repl');
    await coll.insertOne({ _id: 1, a: 1, b: 2 });
    const r = await coll.replaceOne({ _id: 1 }, { c: 3 });
    assert.equal(r.matchedCount, 1);
    assert.equal(r.modifiedCount, 1);
    assert.deepEqual(await coll.findOne({ _id: 1 }), { _id: 1, c: 3 });
  });

  test('deleteOne and deleteMany', async () => {
    const coll = client.db('node_crud').collection('dels');
    await coll.insertMany(Array.from({ length: 30 }, (_, i) => ({ _id: i, k: i % 3 })));
    assert.equal((await coll.deleteOne({ k: 1 })).deletedCount, 1);
    assert.equal((await coll.find({ k: 1 }).toArray()).length, 9);
    assert.equal((await coll.deleteMany({ k: 2 })).deletedCount, 10);
    assert.equal((await coll.deleteMany({ k: 42 })).deletedCount, 0);
    const left = await coll.find().toArray();
    assert.equal(left.length, 19);
    assert.ok(left.every((d) => d.k !== 2));
  });

  test('counts (count command, estimatedDocumentCount)', async () => {
    const db = client.db('node_crud');
    const coll = db.collection('counts');
    await coll.insertMany(Array.from({ length: 25 }, (_, i) => ({ _id: i, x: i })));
    assert.equal(await coll.estimatedDocumentCount(), 25);
    assert.equal((await db.command({ count: 'counts', query: { x: { $gte: 20 } } })).n, 5);
    assert.equal((await db.command({ count: 'nope' })).n, 0);
  });

  test('cursor over many batches (1000 docs, batchSize 7)', async () => {
    const c = new MongoClient(server.uri, { ...OPTS, monitorCommands: true });
    const replies = [];
    c.on('commandSucceeded', (ev) => {
      if (ev.commandName === 'find' || ev.commandName === 'getMore') replies.push(ev);
    });
    try {
      await c.connect();
      const coll = c.db('node_cursor').collection('items');
      await coll.insertMany(Array.from({ length: 1000 }, (_, i) => ({ _id: i, v: i * 2, pad: 'p'.repeat(64) })));
      replies.length = 0;
      const docs = await coll.find({}, { batchSize: 7 }).toArray();
      assert.equal(docs.length, 1000);
      assert.deepEqual(docs.map((d) => d._id).sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
      assert.ok(docs.every((d) => d.v === d._id * 2));
      const finds = replies.filter((e) => e.commandName === 'find');
      const getMores = replies.filter((e) => e.commandName === 'getMore');
      assert.equal(finds.length, 1);
      assert.equal(finds[0].reply.cursor.firstBatch.length, 7);
      const sizes = getMores.map((e) => e.reply.cursor.nextBatch.length);
      assert.ok(getMores.length === 142 || getMores.length === 143, `getMores=${getMores.length}`);
      assert.equal(sizes.reduce((a, b) => a + b, 0), 993);
      assert.ok(sizes.slice(0, 141).every((s) => s === 7), `batch sizes ${sizes}`);
      assert.equal(Number(getMores.at(-1).reply.cursor.id), 0);

      const desc = await coll.find({}, { batchSize: 9 }).sort({ _id: -1 }).toArray();
      assert.deepEqual(desc.map((d) => d._id), Array.from({ length: 1000 }, (_, i) => 999 - i));
      const lim = await coll.find().sort({ _id: 1 }).skip(10).limit(5).batchSize(2).toArray();
      assert.deepEqual(lim.map((d) => d._id), [10, 11, 12, 13, 14]);
    } finally {
      await c.close();
    }
  });

  test('killCursors', async () => {
    const c = new MongoClient(server.uri, { ...OPTS, monitorCommands: true });
    const kills = [];
    c.on('commandSucceeded', (ev) => { if (ev.commandName === 'killCursors') kills.push(ev.reply); });
    try {
      await c.connect();
      const db = c.db('node_kill');
      await db.collection('items').insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: i })));
      const cur = db.collection('items').find({}, { batchSize: 5 });
      for (let i = 0; i < 3; i++) assert.ok(await cur.next());
      const id = cur.id;
      assert.ok(id && !id.isZero(), 'server returned cursor id 0 with documents remaining');
      await cur.close();
      assert.equal(kills.length, 1);
      assert.ok(kills[0].cursorsKilled.some((k) => Long.fromValue(k).equals(id)), JSON.stringify(kills[0]));
      await assert.rejects(db.command({ getMore: id, collection: 'items' }), (err) => {
        assert.ok(err instanceof MongoServerError);
        assert.equal(err.code, 43); // CursorNotFound
        return true;
      });
    } finally {
      await c.close();
    }
  });

  test('create, listCollections, listDatabases, drop, dropDatabase', async () => {
    const db = client.db('node_ddl');
    await db.createCollection('alpha');
    await db.collection('beta').insertOne({ x: 1 });
    const names = (await db.listCollections().toArray()).map((c) => c.name);
    assert.ok(names.includes('alpha') && names.includes('beta'), `${names}`);
    const dbs = (await client.db('admin').admin().listDatabases()).databases.map((d) => d.name);
    assert.ok(dbs.includes('node_ddl'), `${dbs}`);
    assert.equal(await db.collection('alpha').drop(), true);
    const after1 = (await db.listCollections().toArray()).map((c) => c.name);
    assert.ok(!after1.includes('alpha') && after1.includes('beta'), `${after1}`);
    assert.equal(await db.dropDatabase(), true);
    const dbs2 = (await client.db('admin').admin().listDatabases()).databases.map((d) => d.name);
    assert.ok(!dbs2.includes('node_ddl'), `${dbs2}`);
    assert.equal(await db.collection('beta').findOne(), null);
  });

  test('unknown command error shape', async () => {
    await assert.rejects(client.db('admin').command({ definitelyNotARealCommand: 1 }), (err) => {
      assert.ok(err instanceof MongoServerError, String(err));
      assert.equal(err.code, 59);
      assert.equal(err.codeName, 'CommandNotFound');
      assert.equal(err.errorResponse.ok, 0);
      assert.equal(typeof err.errorResponse.errmsg, 'string');
      assert.ok(err.errorResponse.errmsg.length > 0);
      return true;
    });
  });

  test('duplicate _id gives E11000', async () => {
    const coll = client.db('node_crud').collection('dups');
    await coll.insertOne({ _id: 1, v: 'original' });
    await assert.rejects(coll.insertOne({ _id: 1, v: 'second' }), (err) => {
      assert.ok(err instanceof MongoServerError, String(err));
      assert.equal(err.code, 11000);
      return true;
    });
    assert.deepEqual(await coll.findOne({ _id: 1 }), { _id: 1, v: 'original' });
    await assert.rejects(coll.insertMany([{ _id: 10 }, { _id: 1 }, { _id: 11 }]), (err) => {
      assert.ok(err instanceof MongoBulkWriteError, String(err));
      assert.equal(err.code, 11000);
      assert.equal(err.insertedCount, 1);
      return true;
    });
    assert.equal(await coll.findOne({ _id: 11 }), null);
  });
});

describe('compression', () => {
  const haveZstd = canLoad('@mongodb-js/zstd');
  const cases = [
    ['snappy', canLoad('snappy') ? false : 'the `snappy` npm package is not installed'],
    ['zlib', false],
    ['zstd', haveZstd ? false
      : '@mongodb-js/zstd cannot be installed here (its install script downloads a prebuilt binary from GitHub); see tests/node/README.md'],
  ];
  for (const [compressor, skip] of cases) {
    test(`${compressor}: negotiated in the handshake, used by pooled connections, CRUD works`, { skip }, async (t) => {
      const heartbeats = [];
      const client = new MongoClient(`${server.uri}?compressors=${compressor}`, OPTS);
      client.on('serverHeartbeatSucceeded', (ev) => heartbeats.push(ev.reply));
      try {
        await client.connect();
        assert.equal((await client.db('admin').command({ ping: 1 })).ok, 1);
        assert.equal(client.topology.description.type, 'ReplicaSetWithPrimary');
        const coll = client.db(`node_comp_${compressor}`).collection('docs');
        const text = 'mangrove '.repeat(2000);
        await coll.insertMany(Array.from({ length: 50 }, (_, i) => ({ _id: i, text, i })));
        const got = await coll.find({ i: { $gte: 10 } }, { batchSize: 8 }).toArray();
        assert.deepEqual(got.map((d) => d._id).sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i + 10));
        assert.ok(got.every((d) => d.text === text));
        assert.equal((await coll.updateMany({}, { $set: { seen: true } })).modifiedCount, 50);
        assert.equal((await coll.deleteMany({ i: { $lt: 25 } })).deletedCount, 25);

        const agreed = heartbeats.filter((r) => r && 'compression' in r).map((r) => r.compression);
        assert.ok(agreed.some((c) => JSON.stringify(c) === JSON.stringify([compressor])),
          `handshake compression fields: ${JSON.stringify(agreed)}`);
        // driver internals (pinned version): pooled connections' agreed compressor
        const srv = client.topology.s.servers.get(server.address);
        const conns = [...srv.pool.connections];
        assert.ok(conns.length > 0, 'no pooled connections to inspect');
        assert.deepEqual([...new Set(conns.map((c) => c.description.compressor))], [compressor]);
        t.diagnostic(`compressors=${compressor}: handshake agreed ${JSON.stringify(agreed[0])}`);
      } finally {
        await client.close();
      }
    });

    test(`${compressor}: OP_COMPRESSED flows both ways on the wire`, { skip }, async (t) => {
      const proxy = await startWireProxy(server.host, server.port);
      try {
        const client = new MongoClient(`mongodb://${proxy.address}/?directConnection=true&compressors=${compressor}`, OPTS);
        try {
          await client.connect();
          const coll = client.db('node_wire').collection(compressor);
          await coll.insertMany(Array.from({ length: 20 }, (_, i) => ({ _id: i, s: 'abc'.repeat(1000) })));
          assert.equal((await coll.find({}, { batchSize: 5 }).toArray()).length, 20);
        } finally {
          await client.close();
        }
      } finally {
        await proxy.close();
      }
      const want = COMPRESSOR_IDS[compressor];
      const c2s = proxy.frames.filter((f) => f.direction === 'c2s' && f.opcode === OP_COMPRESSED);
      const s2c = proxy.frames.filter((f) => f.direction === 's2c' && f.opcode === OP_COMPRESSED);
      assert.ok(c2s.length > 0, `client never sent OP_COMPRESSED: ${proxy.frames.map((f) => f.opcode)}`);
      assert.ok(s2c.length > 0, `server never replied compressed: ${proxy.frames.map((f) => `${f.direction}:${f.opcode}`)}`);
      assert.deepEqual([...new Set(c2s.map((f) => f.compressorId))], [want]);
      assert.deepEqual([...new Set(s2c.map((f) => f.compressorId))], [want]);
      assert.deepEqual([...new Set(s2c.map((f) => f.originalOpcode))], [OP_MSG]);
      t.diagnostic(`${compressor}: ${c2s.length} compressed requests, ${s2c.length} compressed replies`);
    });
  }
});
