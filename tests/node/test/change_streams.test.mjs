// Change streams from Node: `collection.watch()` consumed with `for await`, and a stream
// resumed with its token after the server restarts on the same data.
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
