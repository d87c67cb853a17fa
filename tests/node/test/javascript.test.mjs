// Server-side JavaScript from Node: $where with a function value (the driver sends it as BSON
// Code), $function, and mapReduce run as a command with inline results.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Code, MongoClient } from 'mongodb';
import { startServer } from '../lib/server.mjs';

const OPTS = { serverSelectionTimeoutMS: 10_000, connectTimeoutMS: 5_000 };

test('$where, $function and mapReduce', async () => {
  const server = await startServer();
  const client = new MongoClient(server.uri, OPTS);
  try {
    await client.connect();
    const db = client.db('node_js');
    const coll = db.collection('c');
    await coll.insertMany([1, 2, 3, 4, 5].map((n) => ({ _id: n, n, odd: n % 2 === 1 })));

    const where = await coll.find({ $where: new Code('function() { return this.n > 3; }') }).toArray();
    assert.deepEqual(where.map((d) => d._id).sort(), [4, 5]);

    const fn = await coll.aggregate([
      { $match: { _id: { $lte: 2 } } },
      { $project: { sq: { $function: { body: 'function(n) { return n * n; }', args: ['$n'], lang: 'js' } } } },
      { $sort: { _id: 1 } },
    ]).toArray();
    assert.deepEqual(fn, [{ _id: 1, sq: 1 }, { _id: 2, sq: 4 }]);

    const mr = await db.command({
      mapReduce: 'c',
      map: new Code('function() { emit(this.odd ? "odd" : "even", this.n); }'),
      reduce: new Code('function(k, vs) { return Array.sum(vs); }'),
      out: { inline: 1 },
    });
    const sums = Object.fromEntries(mr.results.map((r) => [r._id, r.value]));
    assert.deepEqual(sums, { odd: 9, even: 6 });

    await assert.rejects(
      coll.find({ $where: 'while (true) {}' }).maxTimeMS(200).toArray(),
      (e) => e.code === 50,
    );
  } finally {
    await client.close();
    await server.stop();
  }
});
