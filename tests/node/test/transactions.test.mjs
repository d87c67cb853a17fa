// Multi-document transactions through the Node.js driver: withTransaction commits, retries a
// TransientTransactionError, and conflicting writers get MongoDB's codes and labels.
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

test('withTransaction commits every write together', async () => {
  const db = client.db('node_txn_commit');
  await db.collection('accounts').insertMany([{ _id: 'a', bal: 100 }, { _id: 'b', bal: 0 }]);
  const session = client.startSession();
  try {
    await session.withTransaction(async () => {
      await db.collection('accounts').updateOne({ _id: 'a' }, { $inc: { bal: -40 } }, { session });
      await db.collection('accounts').updateOne({ _id: 'b' }, { $inc: { bal: 40 } }, { session });
      // Not yet visible outside the transaction.
      const outside = await db.collection('accounts').findOne({ _id: 'a' });
      assert.equal(outside.bal, 100);
    });
  } finally {
    await session.endSession();
  }
  const docs = await db.collection('accounts').find({}, { sort: { _id: 1 } }).toArray();
  assert.deepEqual(docs.map((d) => d.bal), [60, 40]);
});

test('a conflicting writer gets WriteConflict with TransientTransactionError, and withTransaction retries', async () => {
  const db = client.db('node_txn_conflict');
  await db.collection('c').insertOne({ _id: 1, v: 0 });
  const holder = client.startSession();
  holder.startTransaction();
  await db.collection('c').updateOne({ _id: 1 }, { $set: { v: 1 } }, { session: holder });

  const loser = client.startSession();
  loser.startTransaction();
  await assert.rejects(
    db.collection('c').updateOne({ _id: 1 }, { $set: { v: 2 } }, { session: loser }),
    (e) => e instanceof MongoServerError && e.code === 112 && e.hasErrorLabel('TransientTransactionError'),
  );
  await loser.abortTransaction();
  await loser.endSession();

  let attempts = 0;
  const retrier = client.startSession();
  await retrier.withTransaction(async () => {
    attempts += 1;
    if (attempts === 2) await holder.abortTransaction();
    await db.collection('c').updateOne({ _id: 1 }, { $inc: { v: 10 } }, { session: retrier });
  });
  await retrier.endSession();
  await holder.endSession();
  console.log(`[node] withTransaction attempts until commit: ${attempts}`);
  assert.equal(attempts, 2);
  assert.equal((await db.collection('c').findOne({ _id: 1 })).v, 10);
});
