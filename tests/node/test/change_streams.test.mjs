// Change streams from Node: `collection.watch()` consumed with `for await`, and a stream
// resumed with its token after the server restarts on the same data; `convertToCapped` as a
// stream and a tailable cursor see it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { MongoClient } from 'mongodb';
import { startServer } from '../lib/server.mjs';

const OPTS = { serverSelectionTimeoutMS: 10_000, connectTimeoutMS: 5_000 };

test('watch() with for await, then resume with the token after a restart', async () => {
  let server = await startServer({ keepData: true });
  const dataDir = server.dataDir;
  try {
    let client = new MongoClient(server.uri, OPTS);
    await client.connect();
    let coll = client.db('node_cs').collection('items');
    await coll.insertOne({ _id: 'seed' });
    const stream = coll.watch([{ $match: { operationType: { $in: ['insert', 'update'] } } }], {
      fullDocument: 'updateLookup',
    });
    const seen = [];
    const consumed = (async () => {
      for await (const event of stream) {
        seen.push(event);
        if (seen.length === 3) break;
      }
    })();
    // The stream is open once its first aggregate has answered.
    await Promise.race([
      new Promise((resolve) => stream.once('resumeTokenChanged', resolve)),
      new Promise((resolve) => setTimeout(resolve, 3000)),
    ]);
    await coll.insertOne({ _id: 1, n: 1 });
    await coll.updateOne({ _id: 1 }, { $inc: { n: 1 } });
    await coll.deleteOne({ _id: 'seed' }); // filtered out by the $match
    await coll.insertOne({ _id: 2 });
    await consumed;
    assert.deepEqual(seen.map((e) => e.operationType), ['insert', 'update', 'insert']);
    assert.deepEqual(seen[1].updateDescription.updatedFields, { n: 2 });
    assert.deepEqual(seen[1].fullDocument, { _id: 1, n: 2 });
    const token = seen[1]._id;
    await client.close();

    await server.stop('SIGTERM');
    server = await startServer({ dataDir });
    client = new MongoClient(server.uri, OPTS);
    await client.connect();
    coll = client.db('node_cs').collection('items');
    await coll.insertOne({ _id: 3 });
    const resumed = coll.watch([], { resumeAfter: token });
    const after = [];
    for await (const event of resumed) {
      after.push(event.operationType === 'delete' ? 'delete' : event.documentKey._id);
      if (after.length === 3) break;
    }
    // Everything after the token, once: the delete, _id 2 and (after the restart) _id 3.
    assert.deepEqual(after, ['delete', 2, 3]);
    await resumed.close();
    await client.close();
  } finally {
    await server.stop();
    rmSync(path.dirname(dataDir), { recursive: true, force: true });
  }
});

test('convertToCapped: natural order kept, the oldest trimmed, a tailable cursor follows', async () => {
  const server = await startServer();
  const client = new MongoClient(server.uri, OPTS);
  try {
    await client.connect();
    const db = client.db('node_capped');
    const coll = db.collection('log');
    // 1,024 bytes each, inserted out of _id order (natural order is not _id order).
    const pad = 'x'.repeat(1000);
    await coll.insertMany([5, 3, 9, 1, 7, 2].map((i) => ({ _id: i, pad })));
    const stream = coll.watch();
    await stream.tryNext(); // opens the stream before the conversion
    const reply = await db.command({ convertToCapped: 'log', size: 4096 });
    assert.equal(reply.ok, 1);
    const [info] = await db.listCollections({ name: 'log' }).toArray();
    assert.equal(info.options.capped, true);
    // 4 KiB holds the newest four.
    assert.deepEqual((await coll.find().toArray()).map((d) => d._id), [9, 1, 7, 2]);
    const events = [await stream.next(), await stream.next()];
    assert.deepEqual(events.map((e) => [e.operationType, e.documentKey._id]), [['delete', 5], ['delete', 3]]);
    await stream.close();
    const tail = coll.find({}, { tailable: true, awaitData: true, maxAwaitTimeMS: 200 });
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push((await tail.next())._id);
    assert.deepEqual(seen, [9, 1, 7, 2]);
    await coll.insertOne({ _id: 8, pad });
    assert.equal((await tail.next())._id, 8);
    await tail.close();
    // The insert (1,024 bytes more) evicted the oldest.
    assert.deepEqual((await coll.find().toArray()).map((d) => d._id), [1, 7, 2, 8]);
  } finally {
    await client.close();
    await server.stop();
  }
});
