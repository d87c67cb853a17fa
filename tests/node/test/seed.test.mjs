// The Ruby driver transaction guide (../shared/seeds/004_*.txt), scenario by scenario, through
// the Node.js driver against one server started with --enable-test-commands (fail points make
// commit outcomes unknown). Each scenario prints what the driver saw.
import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { MongoClient, MongoError, MongoServerError } from 'mongodb';
import { startServer } from '../lib/server.mjs';

let server;
let c1;

before(async () => {
  server = await startServer({ extraArgs: ['--enable-test-commands'] });
  c1 = new MongoClient(server.uri, { serverSelectionTimeoutMS: 10_000 });
  await c1.connect();
});

afterEach(async () => {
  await c1.db('admin').command({ configureFailPoint: 'failCommand', mode: 'off' });
});

after(async () => {
  await c1?.close();
  await server?.stop();
});

const say = (line) => console.log(`[seed/node] ${line}`);

test('withTransaction commits', async () => {
  const coll = c1.db('seed1').collection('coll');
  const session = c1.startSession();
  await session.withTransaction(async () => {
    await coll.insertOne({ hello: 'world' }, { session });
  });
  await session.endSession();
  assert.equal(await coll.countDocuments({ hello: 'world' }), 1);
  say("withTransaction: insertOne({hello: 'world'}) committed");
});

test('withTransaction retries a transient error', async () => {
  const coll = c1.db('seed2').collection('coll');
  await coll.insertOne({ _id: 0 });
  await c1.db('admin').command({
    configureFailPoint: 'failCommand',
    mode: { times: 1 },
    data: { failCommands: ['insert'], errorCode: 112 },
  });
  let calls = 0;
  const session = c1.startSession();
  await session.withTransaction(async () => {
    calls += 1;
    await coll.insertOne({ hello: 'world' }, { session });
  });
  await session.endSession();
  assert.equal(calls, 2);
  assert.equal(await coll.countDocuments({ hello: 'world' }), 1);
  say(`withTransaction: callback ran ${calls} times (WriteConflict labelled TransientTransactionError, then committed)`);
});

test('read concern, write concern and read preference options', async () => {
  const coll = c1.db('seed3').collection('coll');
  const session = c1.startSession();
  await session.withTransaction(
    async () => {
      await coll.insertOne({ hello: 'world' }, { session });
    },
    { readConcern: { level: 'majority' }, writeConcern: { w: 'majority' }, readPreference: 'primary' },
  );
  session.startTransaction({ writeConcern: { w: 3 } });
  await coll.insertOne({ hello: 'w3' }, { session });
  const err = await session.commitTransaction().then(() => null, (e) => e);
  await session.endSession();
  assert.ok(err instanceof MongoError, `commit with w: 3 should fail, got ${err}`);
  assert.equal(err.code, 100);
  assert.equal(await coll.countDocuments({}), 2);
  say(`majority/majority/primary: committed; w: 3 -> code ${err.code} ${err.codeName ?? ''} (the commit itself applied)`);
});

test('low-level start, commit and abort; endSession aborts', async () => {
  const coll = c1.db('seed4').collection('coll');
  const session = c1.startSession();
  session.startTransaction({ readConcern: { level: 'majority' }, writeConcern: { w: 'majority' } });
  await coll.insertOne({ n: 1 }, { session });
  await session.commitTransaction();
  session.startTransaction();
  await coll.insertOne({ n: 2 }, { session });
  await session.abortTransaction();
  session.startTransaction();
  await coll.insertOne({ n: 3 }, { session });
  await session.endSession();
  const ns = (await coll.find().toArray()).map((d) => d.n);
  assert.deepEqual(ns, [1]);
  say('start/commit kept n=1; abort dropped n=2; endSession aborted n=3');
});

test('a drop from a second client hangs until endSession', async () => {
  const db = c1.db('test_db');
  await db.collection('foo').insertOne({ test: 1 });
  const session = c1.startSession();
  session.startTransaction();
  await db.collection('foo').insertOne({ test: 2 }, { session });
  const c2 = new MongoClient(server.uri);
  let done = false;
  const drop = c2.db('test_db').dropDatabase().then(() => { done = true; });
  await new Promise((r) => setTimeout(r, 1000));
  const hung = !done;
  const t0 = Date.now();
  await session.endSession();
  await drop;
  assert.ok(hung, 'dropDatabase did not wait for the open transaction');
  const names = (await c1.db('admin').admin().listDatabases()).databases.map((d) => d.name);
  assert.ok(!names.includes('test_db'));
  say(`c2 dropDatabase hung while the transaction was open; proceeded ${Date.now() - t0} ms after endSession`);
  await c2.close();
});

test('commit retry on UnknownTransactionCommitResult', async () => {
  const coll = c1.db('seed6').collection('coll');
  await coll.insertOne({ _id: 0 });
  const session = c1.startSession();
  session.startTransaction();
  await coll.insertOne({ _id: 1 }, { session });
  await c1.db('admin').command({
    configureFailPoint: 'failCommand',
    mode: { times: 2 },
    data: { failCommands: ['commitTransaction'], closeConnection: true },
  });
  let attempts = 0;
  const labels = [];
  for (;;) {
    attempts += 1;
    try {
      await session.commitTransaction();
      break;
    } catch (e) {
      labels.push(e.errorLabels ?? []);
      if (e.hasErrorLabel?.('UnknownTransactionCommitResult') && attempts < 5) continue;
      throw e;
    }
  }
  await session.endSession();
  assert.equal(await coll.countDocuments({ _id: 1 }), 1);
  say(`commitTransaction: application retried ${attempts - 1} time(s) on UnknownTransactionCommitResult (labels ${JSON.stringify(labels)}); committed exactly once`);
});

test('nesting is an error', async () => {
  const session = c1.startSession();
  session.startTransaction();
  assert.throws(() => session.startTransaction(), (e) => {
    say(`nested startTransaction -> ${e.name}: ${e.message}`);
    return e instanceof MongoError;
  });
  await session.abortTransaction();
  await session.endSession();
});

test('server errors keep their codeName', async () => {
  await c1.db('admin').command({
    configureFailPoint: 'failCommand',
    mode: { times: 1 },
    data: { failCommands: ['find'], errorCode: 11601 },
  });
  await assert.rejects(
    c1.db('seed7').collection('c').findOne({}),
    (e) => e instanceof MongoServerError && e.codeName === 'Interrupted',
  );
});
