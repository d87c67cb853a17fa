// Secondary indexes through the Node.js driver: a unique index created inside a transaction,
// unique keys racing across transactions, explain, and TTL expiry.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { MongoClient, MongoServerError } from 'mongodb';
import { startServer } from '../lib/server.mjs';

let server;
let client;

before(async () => {
  server = await startServer();
  client = new MongoClient(server.uri, { serverSelectionTimeoutMS: 10_000 });
  await client.connect();
});

after(async () => {
  await client?.close();
  await server?.stop();
});

test('createIndex with unique inside a transaction', async () => {
  const db = client.db('node_idx1');
  const session = client.startSession();
  await session.withTransaction(async () => {
    const coll = await db.createCollection('orders', { session });
    await coll.createIndex({ orderNo: 1 }, { unique: true, session });
    await coll.insertOne({ orderNo: 1 }, { session });
    await coll.insertOne({ orderNo: 2 }, { session });
  });
  await session.endSession();
  const coll = db.collection('orders');
  const names = (await coll.listIndexes().toArray()).map((ix) => ix.name);
  assert.deepEqual(names, ['_id_', 'orderNo_1']);
  await assert.rejects(coll.insertOne({ orderNo: 1 }), (e) => {
    assert.ok(e instanceof MongoServerError);
    assert.equal(e.code, 11000);
    assert.deepEqual(e.keyPattern, { orderNo: 1 });
    assert.deepEqual(e.keyValue, { orderNo: 1 });
    return true;
  });
  assert.equal(await coll.countDocuments(), 2);
});

test('a unique key taken by an open transaction conflicts, then is a duplicate', async () => {
  const coll = client.db('node_idx2').collection('logins');
  await coll.createIndex({ login: 1 }, { unique: true });
  const s1 = client.startSession();
  const s2 = client.startSession();
  s1.startTransaction();
  s2.startTransaction();
  await coll.insertOne({ login: 'ann' }, { session: s1 });
  await assert.rejects(coll.insertOne({ login: 'ann' }, { session: s2 }), (e) => {
    assert.equal(e.code, 112); // WriteConflict
    assert.ok(e.hasErrorLabel('TransientTransactionError'));
    return true;
  });
  await s1.commitTransaction();
  await s2.abortTransaction();
  await assert.rejects(
    s2.withTransaction(async () => {
      await coll.insertOne({ login: 'ann' }, { session: s2 });
    }),
    (e) => e.code === 11000,
  );
  await s1.endSession();
  await s2.endSession();
  assert.equal(await coll.countDocuments({ login: 'ann' }), 1);
});

test('explain shows an index scan that examines one key', async () => {
  const coll = client.db('node_idx3').collection('points');
  await coll.insertMany(Array.from({ length: 1000 }, (_, i) => ({ _id: i, k: i })));
  await coll.createIndex({ k: 1 });
  const plan = await coll.find({ k: 500 }).explain('executionStats');
  assert.equal(plan.queryPlanner.winningPlan.stage, 'FETCH');
  assert.equal(plan.queryPlanner.winningPlan.inputStage.stage, 'IXSCAN');
  assert.equal(plan.executionStats.totalKeysExamined, 1);
  assert.equal(plan.executionStats.totalDocsExamined, 1);
  console.log('[indexes/node] find({k: 500}) on 1000 docs: IXSCAN, 1 key and 1 document examined');
});

test('a TTL index removes expired documents', async () => {
  const admin = client.db('admin');
  await admin.command({ setParameter: 1, ttlMonitorSleepSecs: 1 });
  try {
    const coll = client.db('node_idx4').collection('events');
    await coll.createIndex({ at: 1 }, { expireAfterSeconds: 1 });
    const now = Date.now();
    await coll.insertMany([
      { _id: 'expired', at: new Date(now - 3_600_000) },
      { _id: 'future', at: new Date(now + 3_600_000) },
      { _id: 'undated' },
    ]);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && (await coll.countDocuments({ _id: 'expired' })) > 0) {
      await new Promise((r) => setTimeout(r, 200));
    }
    const left = (await coll.find().sort({ _id: 1 }).toArray()).map((d) => d._id);
    assert.deepEqual(left, ['future', 'undated']);
  } finally {
    await admin.command({ setParameter: 1, ttlMonitorSleepSecs: 60 });
  }
});
