// Features beyond CRUD (issue 15) through the Node.js driver's own API, against one server:
// geospatial indexes and queries ($near/$nearSphere/$geoWithin/$geoIntersects/$geoNear),
// text search ($text, textScore), time-series collections, $jsonSchema validation
// (121/errInfo, bypass, warn), the profiler (system.profile), hashed and collated indexes
// (and a collated duplicate key error), explain's spill statistics and stage times,
// MongoClient.bulkWrite (MongoDB 8.0) and $setWindowFields/$top/$bottomN. Error cases check
// MongoDB 7.0/8.0's codes. The Python suites (tests/python/test_geo.py, test_text.py, ...) hold
// the detailed behaviour; these check the same through the Node driver.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { MongoClient, MongoClientBulkWriteError, MongoServerError } from 'mongodb';
import { startServer } from '../lib/server.mjs';

const EARTH_M = 6378100;
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

const point = (lng, lat) => ({ type: 'Point', coordinates: [lng, lat] });
const square = (x0, y0, x1, y1) => ({
  type: 'Polygon',
  coordinates: [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
});
const ids = (docs) => docs.map((d) => d._id);
const sortedIds = (docs) => ids(docs).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

// Asserts that `promise` rejects with a server error of `code` (and `codeName` when given);
// returns the error for further checks.
async function rejectsWith(promise, code, codeName) {
  let caught;
  await assert.rejects(promise, (e) => {
    caught = e;
    assert.ok(e instanceof MongoServerError, `expected a MongoServerError, got ${e?.name}: ${e?.message}`);
    assert.equal(e.code, code, `code of: ${e.message}`);
    if (codeName) assert.equal(e.codeName, codeName);
    return true;
  });
  return caught;
}

// Every stage of a plan tree (inputStage / inputStages), depth first.
function stages(plan) {
  const out = [];
  const walk = (p) => {
    if (!p || typeof p !== 'object') return;
    out.push(p);
    walk(p.inputStage);
    for (const s of p.inputStages ?? []) walk(s);
  };
  walk(plan);
  return out;
}

const winningPlan = (explain) => explain.queryPlanner.winningPlan;

// ---------------------------------------------------------------------------------------------
// 1. Geospatial

test('geo: 2dsphere index, invalid geometry refused with 16755', async () => {
  const coll = client.db('node_geo1').collection('places');
  assert.equal(await coll.createIndex({ loc: '2dsphere' }), 'loc_2dsphere');
  const spec = (await coll.listIndexes().toArray()).find((ix) => ix.name === 'loc_2dsphere');
  assert.deepEqual(spec.key, { loc: '2dsphere' });
  assert.equal(spec['2dsphereIndexVersion'], 3);
  await coll.insertOne({ _id: 'paris', loc: point(2.35, 48.85) });
  for (const [i, loc] of [point(200, 0), { type: 'Polygon', coordinates: [[[0, 0], [1, 0], [1, 1], [0, 1]]] }].entries()) {
    const e = await rejectsWith(coll.insertOne({ _id: i, loc }), 16755);
    assert.match(e.message, /Can't extract geo keys/);
  }
  assert.equal(await coll.countDocuments(), 1);
});

test('geo: $near and $nearSphere return nearest first, with $maxDistance', async () => {
  const coll = client.db('node_geo2').collection('eq');
  // Points due east of (0, 0) along the equator every 0.1 degree (about 11.13 km apart).
  await coll.insertMany(Array.from({ length: 20 }, (_, i) => ({ _id: i + 1, loc: point((i + 1) / 10, 0) })));
  await coll.insertOne({ _id: 'far', loc: point(90, 0) });
  // No geo index: "unable to find index for $geoNear query".
  const noIndex = await rejectsWith(coll.find({ loc: { $near: { $geometry: point(0, 0) } } }).toArray(), 291, 'NoQueryExecutionPlans');
  assert.match(noIndex.message, /unable to find index for \$geoNear query/);
  await coll.createIndex({ loc: '2dsphere' });

  const all = await coll.find({ loc: { $near: { $geometry: point(0, 0) } } }).toArray();
  assert.deepEqual(ids(all), [...Array.from({ length: 20 }, (_, i) => i + 1), 'far']);
  const step = (0.1 * Math.PI / 180) * EARTH_M;
  const within = await coll.find({ loc: { $near: { $geometry: point(0, 0), $maxDistance: 3.5 * step } } }).toArray();
  assert.deepEqual(ids(within), [1, 2, 3]);
  const fromEast = await coll.find({ loc: { $nearSphere: { $geometry: point(2.05, 0) } } }).limit(3).toArray();
  assert.deepEqual(ids(fromEast), [20, 19, 18]);
  // Legacy $nearSphere takes radians.
  const legacy = await coll.find({ loc: { $nearSphere: [0, 0], $maxDistance: (2.5 * step) / EARTH_M } }).toArray();
  assert.deepEqual(ids(legacy), [1, 2]);

  const explain = await coll.find({ loc: { $near: { $geometry: point(0, 0) } } }).limit(2).explain('executionStats');
  const geo = stages(winningPlan(explain)).find((s) => s.stage === 'GEO_NEAR_2DSPHERE');
  assert.ok(geo, `no GEO_NEAR_2DSPHERE in ${JSON.stringify(winningPlan(explain))}`);
  assert.equal(geo.indexName, 'loc_2dsphere');
  assert.equal(explain.executionStats.nReturned, 2);
});

test('geo: $geoWithin ($geometry, $centerSphere) and $geoIntersects', async () => {
  const coll = client.db('node_geo3').collection('pts');
  await coll.createIndex({ loc: '2dsphere' });
  await coll.insertMany([
    { _id: 'a', loc: point(0.5, 0.5) },
    { _id: 'b', loc: point(1.5, 1.5) },
    { _id: 'c', loc: point(10, 10) },
    { _id: 'line', loc: { type: 'LineString', coordinates: [[-5, 3], [5, 3]] } },
    { _id: 'poly', loc: square(20, 20, 22, 22) },
  ]);
  const inSquare = await coll.find({ loc: { $geoWithin: { $geometry: square(0, 0, 2, 2) } } }).toArray();
  assert.deepEqual(sortedIds(inSquare), ['a', 'b']);
  // 100 km around (0.5, 0.5): only 'a' (b is about 157 km away).
  const sphere = await coll.find({ loc: { $geoWithin: { $centerSphere: [[0.5, 0.5], 100_000 / EARTH_M] } } }).toArray();
  assert.deepEqual(ids(sphere), ['a']);
  // Intersects: the square crosses the line; the point lies inside the stored polygon.
  const hit = await coll.find({ loc: { $geoIntersects: { $geometry: square(-1, 2, 1, 4) } } }).toArray();
  assert.deepEqual(ids(hit), ['line']);
  const hitPoly = await coll.find({ loc: { $geoIntersects: { $geometry: point(21, 21) } } }).toArray();
  assert.deepEqual(ids(hitPoly), ['poly']);
  const plan = await coll.find({ loc: { $geoWithin: { $geometry: square(0, 0, 2, 2) } } }).explain();
  const ix = stages(winningPlan(plan)).find((s) => s.stage === 'IXSCAN');
  assert.equal(ix?.indexName, 'loc_2dsphere');
});

test('geo: 2d index with $near on the plane and $geoWithin $box', async () => {
  const coll = client.db('node_geo4').collection('plane');
  const docs = [];
  for (let x = -3; x <= 3; x++) for (let y = -3; y <= 3; y++) docs.push({ _id: `${x},${y}`, pos: [x, y] });
  await coll.insertMany(docs);
  assert.equal(await coll.createIndex({ pos: '2d' }), 'pos_2d');
  const near = await coll.find({ pos: { $near: [0.2, 0.1], $maxDistance: 1.15 } }).toArray();
  assert.deepEqual(ids(near), ['0,0', '1,0', '0,1', '0,-1']);
  const box = await coll.find({ pos: { $geoWithin: { $box: [[-1, -1], [2, 1]] } } }).toArray();
  assert.equal(box.length, 12);
  assert.ok(box.every(({ pos: [x, y] }) => x >= -1 && x <= 2 && y >= -1 && y <= 1));
  const explain = await coll.find({ pos: { $near: [0, 0] } }).explain();
  assert.ok(stages(winningPlan(explain)).some((s) => s.stage === 'GEO_NEAR_2D'));
  await rejectsWith(coll.insertOne({ pos: [181, 0] }), 13027);
});

test('geo: aggregate $geoNear with distanceField', async () => {
  const coll = client.db('node_geo5').collection('eq');
  await coll.insertMany(Array.from({ length: 10 }, (_, i) => ({ _id: i + 1, loc: point((i + 1) / 10, 0), odd: (i + 1) % 2 })));
  await rejectsWith(coll.aggregate([{ $geoNear: { near: point(0, 0), distanceField: 'd' } }]).toArray(), 27);
  await coll.createIndex({ loc: '2dsphere' });
  const out = await coll.aggregate([
    { $geoNear: { near: point(0, 0), distanceField: 'dist.m', query: { odd: 1 }, maxDistance: 60_000, spherical: true } },
  ]).toArray();
  assert.deepEqual(ids(out), [1, 3, 5]);
  for (const d of out) {
    const expected = ((d._id / 10) * Math.PI / 180) * EARTH_M;
    assert.ok(Math.abs(d.dist.m - expected) < 1, `distance of ${d._id}: ${d.dist.m} vs ${expected}`);
  }
  // $geoNear must come first.
  await rejectsWith(coll.aggregate([{ $match: {} }, { $geoNear: { near: point(0, 0), distanceField: 'd' } }]).toArray(), 40602);
});

// ---------------------------------------------------------------------------------------------
// 2. Text search

const ARTICLES = [
  { _id: 1, title: 'Coffee', body: 'coffee shop coffee' },
  { _id: 2, title: 'Tea', body: 'green tea and coffee' },
  { _id: 3, title: 'Running', body: 'The runner was running late' },
];

async function articles(dbName) {
  const coll = client.db(dbName).collection('articles');
  const name = await coll.createIndex(
    { title: 'text', body: 'text' },
    { weights: { title: 10 }, default_language: 'english', name: 'articles_text' },
  );
  assert.equal(name, 'articles_text');
  await coll.insertMany(ARTICLES);
  return coll;
}

test('text: index options, terms, phrases and negations', async () => {
  const coll = await articles('node_text1');
  const spec = (await coll.listIndexes().toArray()).find((ix) => ix.name === 'articles_text');
  assert.deepEqual(spec.key, { _fts: 'text', _ftsx: 1 });
  assert.deepEqual(spec.weights, { body: 1, title: 10 });
  assert.equal(spec.default_language, 'english');
  const search = async (s) => sortedIds(await coll.find({ $text: { $search: s } }).toArray());
  assert.deepEqual(await search('coffee'), [1, 2]);
  assert.deepEqual(await search('coffee -green'), [1]);
  assert.deepEqual(await search('"coffee shop"'), [1]);
  assert.deepEqual(await search('coffee -"green tea"'), [1]);
  assert.deepEqual(await search('runs'), [3]); // stemmed to "run"
  assert.deepEqual(await search('the and'), []); // stop words only
});

test('text: textScore projection and sort', async () => {
  const coll = await articles('node_text2');
  const docs = await coll
    .find({ $text: { $search: 'coffee' } })
    .project({ score: { $meta: 'textScore' } })
    .sort({ score: { $meta: 'textScore' } })
    .toArray();
  assert.deepEqual(ids(docs), [1, 2]);
  // mongod's score: title "Coffee" 10 (weight 10) + body "coffee shop coffee" 1.5 * (0.5 * 2/3 + 0.5).
  assert.ok(Math.abs(docs[0].score - 11.25) < 1e-9, `score ${docs[0].score}`);
  assert.ok(Math.abs(docs[1].score - (0.5 / 3 + 0.5)) < 1e-9, `score ${docs[1].score}`);
  assert.equal(docs[0].title, 'Coffee'); // a $meta-only projection keeps the other fields
  const agg = await coll.aggregate([
    { $match: { $text: { $search: 'coffee tea' } } },
    { $project: { _id: 1, s: { $meta: 'textScore' } } },
    { $sort: { s: -1 } },
  ]).toArray();
  assert.deepEqual(ids(agg), [2, 1]);
});

test('text: one text index per collection (67, 85); $text needs one (27)', async () => {
  const db = client.db('node_text3');
  await db.collection('plain').insertOne({ a: 'coffee' });
  const noIndex = await rejectsWith(db.collection('plain').find({ $text: { $search: 'coffee' } }).toArray(), 27, 'IndexNotFound');
  assert.match(noIndex.message, /text index required/);
  const coll = db.collection('c');
  await coll.createIndex({ a: 1, b: 'text', c: 1 });
  await coll.createIndex({ a: 1, b: 'text', c: 1 }); // the same again: a no-op
  const e = await rejectsWith(coll.createIndex({ a: 1, b: 1, c: 'text' }), 67, 'CannotCreateIndex');
  assert.match(e.message, /only one text index per collection/);
  // Same key pattern and name, other weights: IndexOptionsConflict.
  await rejectsWith(coll.createIndex({ a: 1, _fts: 'text', _ftsx: 1, c: 1 }, { weights: { b: 1, d: 1 } }), 85, 'IndexOptionsConflict');
  assert.equal((await coll.listIndexes().toArray()).length, 2);
  const other = db.collection('articles');
  await other.createIndex({ title: 'text' });
  // Both are stored as {_fts: 'text', _ftsx: 1}: mongod finds an equivalent index of another name.
  const dup = await rejectsWith(other.createIndex({ body: 'text' }), 85, 'IndexOptionsConflict');
  assert.match(dup.message, /Index already exists with a different name: title_text/);
});

test('text: $text on a collection that does not exist fails with 27', async () => {
  const e = await rejectsWith(client.db('node_text4').collection('missing').find({ $text: { $search: 'x' } }).toArray(), 27, 'IndexNotFound');
  assert.match(e.message, /text index required for \$text query \(no such collection 'node_text4.missing'\)/);
});

// ---------------------------------------------------------------------------------------------
// 3. Time series

test('time series: create, list, insert, query by meta, aggregate', async () => {
  const db = client.db('node_ts1');
  await db.createCollection('weather', {
    timeseries: { timeField: 'ts', metaField: 'sensor', granularity: 'minutes' },
    expireAfterSeconds: 86400,
  });
  const [info] = await db.listCollections({ name: 'weather' }).toArray();
  assert.equal(info.type, 'timeseries');
  assert.deepEqual(info.options.timeseries, {
    timeField: 'ts', metaField: 'sensor', granularity: 'minutes', bucketMaxSpanSeconds: 86400,
  });
  assert.equal(info.options.expireAfterSeconds, 86400);
  const coll = db.collection('weather');
  assert.equal((await coll.options()).timeseries.metaField, 'sensor');
  // mongod's default index on (meta, time), and no _id index.
  assert.deepEqual((await coll.listIndexes().toArray()).map((ix) => ix.key), [{ sensor: 1, ts: 1 }]);
  const now = Date.now();
  const docs = Array.from({ length: 12 }, (_, i) => ({ ts: new Date(now - i * 1000), sensor: `s${i % 3}`, temp: 20 + i }));
  const res = await coll.insertMany(docs);
  assert.equal(res.insertedCount, 12);
  const s1 = await coll.find({ sensor: 's1' }).sort({ temp: 1 }).toArray();
  assert.deepEqual(s1.map((d) => d.temp), [21, 24, 27, 30]);
  assert.ok(s1.every((d) => d.ts instanceof Date));
  const max = await coll.aggregate([
    { $group: { _id: '$sensor', max: { $max: '$temp' }, n: { $sum: 1 } } },
    { $sort: { _id: 1 } },
  ]).toArray();
  assert.deepEqual(max, [{ _id: 's0', max: 29, n: 4 }, { _id: 's1', max: 30, n: 4 }, { _id: 's2', max: 31, n: 4 }]);
});

test('time series: a measurement without a date in the time field is refused', async () => {
  const db = client.db('node_ts2');
  await db.createCollection('m', { timeseries: { timeField: 't' } });
  const coll = db.collection('m');
  for (const bad of [{ v: 1 }, { t: 'yesterday', v: 2 }]) {
    const e = await rejectsWith(coll.insertOne(bad), 2);
    assert.match(e.message, /'t' must be present and contain a valid BSON UTC datetime value/);
  }
  await coll.insertOne({ t: new Date(), v: 3 });
  assert.deepEqual((await coll.find({}, { projection: { _id: 0, v: 1 } }).toArray()), [{ v: 3 }]);
  // Options are checked: a timeseries without timeField.
  await rejectsWith(db.createCollection('bad', { timeseries: { metaField: 'm' } }), 40414);
});

// ---------------------------------------------------------------------------------------------
// 4. Schema validation

const SCHEMA = {
  $jsonSchema: {
    bsonType: 'object',
    required: ['name', 'qty'],
    properties: {
      name: { bsonType: 'string' },
      qty: { bsonType: 'int', minimum: 0 },
    },
  },
};

test('validation: $jsonSchema refuses with 121 and errInfo; bypass lets it in', async () => {
  const db = client.db('node_val1');
  const items = await db.createCollection('items', { validator: SCHEMA });
  await items.insertOne({ _id: 1, name: 'ok', qty: 3 });
  const e = await rejectsWith(items.insertOne({ _id: 2, name: 'bad', qty: -1 }), 121, 'DocumentValidationFailure');
  assert.equal(e.errInfo.failingDocumentId, 2);
  assert.equal(e.errInfo.details.operatorName, '$jsonSchema');
  const [rule] = e.errInfo.details.schemaRulesNotSatisfied;
  assert.equal(rule.operatorName, 'properties');
  assert.equal(rule.propertiesNotSatisfied[0].propertyName, 'qty');
  assert.equal(rule.propertiesNotSatisfied[0].details[0].operatorName, 'minimum');
  const missing = await rejectsWith(items.insertOne({ _id: 3 }), 121);
  assert.deepEqual(missing.errInfo.details.schemaRulesNotSatisfied, [
    { operatorName: 'required', specifiedAs: { required: ['name', 'qty'] }, missingProperties: ['name', 'qty'] },
  ]);
  await rejectsWith(items.updateOne({ _id: 1 }, { $set: { qty: 'many' } }), 121);
  // An ordered insertMany stops at the invalid document; the error carries it.
  await assert.rejects(items.insertMany([{ _id: 5, name: 'e', qty: 5 }, { _id: 6, qty: 'x' }, { _id: 7, name: 'g', qty: 7 }]), (err) => {
    assert.equal(err.name, 'MongoBulkWriteError');
    assert.equal(err.result.insertedCount, 1);
    assert.equal(err.writeErrors.length, 1);
    assert.equal(err.writeErrors[0].index, 1);
    assert.equal(err.writeErrors[0].code, 121);
    assert.equal(err.writeErrors[0].errInfo.failingDocumentId, 6);
    return true;
  });
  await items.deleteOne({ _id: 5 });

  const r = await items.insertOne({ _id: 4, legacy: true }, { bypassDocumentValidation: true });
  assert.equal(r.insertedId, 4);
  assert.deepEqual(sortedIds(await items.find().toArray()), [1, 4]);
  const [info] = await db.listCollections({ name: 'items' }).toArray();
  assert.deepEqual(info.options, { validator: SCHEMA });
});

test('validation: collMod to validationAction warn lets invalid writes in', async () => {
  const db = client.db('node_val2');
  const items = await db.createCollection('items', { validator: SCHEMA });
  await rejectsWith(items.insertOne({ _id: 'w1' }), 121);
  const mod = await db.command({ collMod: 'items', validationAction: 'warn' });
  assert.equal(mod.ok, 1);
  await items.insertOne({ _id: 'w1' });
  assert.equal(await items.countDocuments(), 1);
  const [info] = await db.listCollections({ name: 'items' }).toArray();
  assert.equal(info.options.validationAction, 'warn');
  await db.command({ collMod: 'items', validationAction: 'error' });
  await rejectsWith(items.insertOne({ _id: 'w2' }), 121);
});

// ---------------------------------------------------------------------------------------------
// 5. Profiler

test('profiler: level 2 records a find in system.profile; level 0 stops', async () => {
  const db = client.db('node_prof');
  const items = db.collection('items');
  await items.insertMany(Array.from({ length: 10 }, (_, i) => ({ a: i })));
  const was = await db.command({ profile: 2 });
  assert.equal(was.was, 0);
  assert.equal((await db.command({ profile: -1 })).was, 2);
  assert.equal((await items.find({ a: { $gte: 7 } }).toArray()).length, 3);
  const profile = db.collection('system.profile');
  const entries = await profile.find({ op: 'query', 'command.filter': { a: { $gte: 7 } } }).toArray();
  assert.equal(entries.length, 1);
  const [entry] = entries;
  assert.equal(entry.ns, 'node_prof.items');
  assert.equal(entry.command.find, 'items');
  assert.equal(entry.nreturned, 3);
  assert.equal(entry.docsExamined, 10);
  assert.equal(entry.planSummary, 'COLLSCAN');
  assert.ok(entry.ts instanceof Date);
  assert.equal(typeof entry.millis, 'number');

  assert.equal((await db.command({ profile: 0 })).was, 2);
  await items.find({ a: 99 }).toArray();
  assert.equal(await profile.countDocuments({ 'command.filter': { a: 99 } }), 0);
  assert.equal(await profile.countDocuments({ op: 'query' }), 1);
});

// ---------------------------------------------------------------------------------------------
// 6. Hashed and collated indexes

test('indexes: a hashed index serves equality', async () => {
  const coll = client.db('node_hash').collection('h');
  await coll.insertMany(Array.from({ length: 200 }, (_, i) => ({ _id: i, a: i % 20 })));
  assert.equal(await coll.createIndex({ a: 'hashed' }), 'a_hashed');
  const found = await coll.find({ a: 7 }).toArray();
  assert.deepEqual(sortedIds(found), [7, 27, 47, 67, 87, 107, 127, 147, 167, 187]);
  const explain = await coll.find({ a: 7 }).explain('executionStats');
  const ix = stages(winningPlan(explain)).find((s) => s.stage === 'IXSCAN');
  assert.equal(ix?.indexName, 'a_hashed');
  assert.deepEqual(ix.keyPattern, { a: 'hashed' });
  assert.equal(explain.executionStats.totalDocsExamined, 10);
  // A range cannot use the hash order; arrays cannot be hashed (16766).
  assert.ok(!stages(winningPlan(await coll.find({ a: { $gt: 7 } }).explain())).some((s) => s.stage === 'IXSCAN'));
  await rejectsWith(coll.insertOne({ a: [1, 2] }), 16766);
});

test('indexes: an index with a collation serves a find with that collation', async () => {
  const coll = client.db('node_coll').collection('words');
  const collation = { locale: 'en', strength: 2 };
  await coll.insertMany([{ _id: 1, w: 'abc' }, { _id: 2, w: 'ABC' }, { _id: 3, w: 'abd' }, ...Array.from({ length: 50 }, (_, i) => ({ _id: 10 + i, w: `x${i}` }))]);
  await coll.createIndex({ w: 1 }, { name: 'w_ci', collation });
  const spec = (await coll.listIndexes().toArray()).find((ix) => ix.name === 'w_ci');
  // listIndexes shows the collation with mongod's defaults filled in.
  assert.deepEqual(spec.collation, {
    locale: 'en', caseLevel: false, caseFirst: 'off', strength: 2, numericOrdering: false,
    alternate: 'non-ignorable', maxVariable: 'punct', normalization: false, backwards: false, version: '57.1',
  });
  assert.deepEqual(sortedIds(await coll.find({ w: 'Abc' }, { collation }).toArray()), [1, 2]);
  assert.deepEqual(ids(await coll.find({ w: 'Abc' }).toArray()), []); // binary comparison
  const explain = await coll.find({ w: 'abc' }, { collation }).explain('executionStats');
  const ix = stages(winningPlan(explain)).find((s) => s.stage === 'IXSCAN');
  assert.equal(ix?.indexName, 'w_ci');
  assert.equal(explain.executionStats.nReturned, 2);
  // Without the collation the index cannot serve the equality.
  const plain = await coll.find({ w: 'abc' }).explain();
  assert.ok(!stages(winningPlan(plain)).some((s) => s.indexName === 'w_ci'));
});

test('indexes: a collated unique index names its collation in a duplicate key error', async () => {
  const coll = client.db('node_coll').collection('emails');
  await coll.createIndex({ e: 1 }, { unique: true, collation: { locale: 'en', strength: 2 } });
  await coll.insertOne({ e: 'ann@example.com' });
  const e = await rejectsWith(coll.insertOne({ e: 'ANN@example.com' }), 11000, 'DuplicateKey');
  assert.match(e.message, /index: e_1 collation: \{ locale: "en", caseLevel: false,/);
  assert.equal(e.collation?.strength, 2, JSON.stringify(e.errorResponse));
  assert.deepEqual(e.keyValue, { e: 'ANN@example.com' });
});

test('explain: a spilling $sort shows its spills and cumulative stage times', async () => {
  const db = client.db('node_explain');
  const coll = db.collection('big');
  const pad = 'x'.repeat(1000);
  await coll.insertMany(Array.from({ length: 1500 }, (_, i) => ({ _id: i, k: (i * 7) % 13, pad })));
  const admin = client.db('admin');
  const before = await admin.command({ getParameter: 1, internalQueryMaxBlockingSortMemoryUsageBytes: 1 });
  await admin.command({ setParameter: 1, internalQueryMaxBlockingSortMemoryUsageBytes: 256 * 1024 });
  try {
    const explain = await coll
      .aggregate([{ $sort: { k: 1 } }, { $group: { _id: '$k', n: { $sum: 1 } } }], { allowDiskUse: true })
      .explain('executionStats');
    const [, sort, group] = explain.stages;
    assert.equal(sort.usedDisk, true);
    assert.ok(sort.spills >= 5, `spills: ${sort.spills}`);
    assert.ok(sort.spilledDataStorageSize > 256 * 1024);
    assert.equal(sort.nReturned, 1500);
    assert.equal(group.usedDisk, false);
    assert.equal(group.nReturned, 13);
    assert.ok(group.totalOutputDataSizeBytes > 0);
    assert.ok(group.executionTimeMillisEstimate >= sort.executionTimeMillisEstimate);
    // A find's blocking sort runs in its explain too.
    const find = await coll.find({}, { allowDiskUse: true }).sort({ k: 1 }).explain('executionStats');
    const sortStage = stages(find.executionStats.executionStages).find((s) => s.stage === 'SORT');
    assert.equal(sortStage.usedDisk, true);
    assert.ok(sortStage.spills > 0);
  } finally {
    await admin.command({
      setParameter: 1,
      internalQueryMaxBlockingSortMemoryUsageBytes: before.internalQueryMaxBlockingSortMemoryUsageBytes,
    });
  }
});

// ---------------------------------------------------------------------------------------------
// 7. MongoClient.bulkWrite

test('client.bulkWrite: mixed namespaces with verbose results', async () => {
  const db = client.db('node_cbw1');
  await db.collection('a').insertMany([0, 1, 2, 3].map((i) => ({ _id: i, x: i })));
  const a = 'node_cbw1.a';
  const b = 'node_cbw1.b';
  const result = await client.bulkWrite([
    { namespace: a, name: 'insertOne', document: { _id: 10, x: 10 } },
    { namespace: b, name: 'insertOne', document: { _id: 1, y: 1 } },
    { namespace: a, name: 'updateOne', filter: { _id: 1 }, update: { $inc: { x: 100 } } },
    { namespace: a, name: 'updateMany', filter: { x: { $lt: 3 } }, update: { $set: { small: true } } },
    { namespace: b, name: 'replaceOne', filter: { _id: 7 }, replacement: { z: 7 }, upsert: true },
    { namespace: a, name: 'deleteOne', filter: { _id: 0 } },
    { namespace: a, name: 'deleteMany', filter: { x: { $gte: 3, $lt: 5 } } },
  ], { verboseResults: true });
  assert.equal(result.insertedCount, 2);
  assert.equal(result.upsertedCount, 1);
  assert.equal(result.matchedCount, 3); // 1 + 2 (_id 0 and 2); the upsert matched none
  assert.equal(result.modifiedCount, 3);
  assert.equal(result.deletedCount, 2);
  assert.equal(result.insertResults.get(0).insertedId, 10);
  assert.equal(result.insertResults.get(1).insertedId, 1);
  assert.equal(result.updateResults.get(2).matchedCount, 1);
  assert.equal(result.updateResults.get(3).modifiedCount, 2);
  assert.equal(result.updateResults.get(4).upsertedId, 7);
  assert.equal(result.deleteResults.get(6).deletedCount, 1);
  assert.deepEqual(await db.collection('a').find().sort({ _id: 1 }).toArray(), [
    { _id: 1, x: 101 }, { _id: 2, x: 2, small: true }, { _id: 10, x: 10 },
  ]);
  assert.deepEqual(await db.collection('b').find().sort({ _id: 1 }).toArray(), [{ _id: 1, y: 1 }, { _id: 7, z: 7 }]);

  // Without verboseResults: counts only. updateOne with `sort` (8.0) takes the first in order.
  const brief = await client.bulkWrite([
    { namespace: b, name: 'updateOne', filter: {}, update: { $set: { last: true } }, sort: { _id: -1 } },
    { namespace: b, name: 'deleteMany', filter: { y: 1 } },
  ]);
  assert.deepEqual([brief.matchedCount, brief.modifiedCount, brief.deletedCount], [1, 1, 1]);
  assert.equal(brief.insertResults, undefined);
  assert.equal(brief.updateResults, undefined);
  assert.deepEqual(await db.collection('b').find().toArray(), [{ _id: 7, z: 7, last: true }]);
});

test('client.bulkWrite: an ordered bulk stops at a duplicate key; unordered goes on', async () => {
  const db = client.db('node_cbw2');
  const ns = 'node_cbw2.c';
  await db.collection('c').insertOne({ _id: 1 });
  const models = [2, 1, 3].map((id) => ({ namespace: ns, name: 'insertOne', document: { _id: id } }));
  await assert.rejects(client.bulkWrite(models), (e) => {
    assert.ok(e instanceof MongoClientBulkWriteError, `${e?.name}: ${e?.message}`);
    assert.deepEqual([...e.writeErrors.keys()], [1]);
    assert.equal(e.writeErrors.get(1).code, 11000);
    assert.equal(e.partialResult.insertedCount, 1);
    return true;
  });
  assert.deepEqual(sortedIds(await db.collection('c').find().toArray()), [1, 2]);
  await db.collection('c').deleteOne({ _id: 2 });
  await assert.rejects(client.bulkWrite(models, { ordered: false }), (e) => {
    assert.ok(e instanceof MongoClientBulkWriteError);
    assert.deepEqual([...e.writeErrors.keys()], [1]);
    assert.equal(e.partialResult.insertedCount, 2);
    return true;
  });
  assert.deepEqual(sortedIds(await db.collection('c').find().toArray()), [1, 2, 3]);
});

// ---------------------------------------------------------------------------------------------
// 8. Window functions and $top/$bottomN

test('aggregate: $setWindowFields $sum over documents, $top and $bottomN in $group', async () => {
  const coll = client.db('node_agg').collection('cakes');
  await coll.insertMany([
    { _id: 0, state: 'CA', price: 13, quantity: 120 },
    { _id: 2, state: 'CA', price: 12, quantity: 145 },
    { _id: 4, state: 'CA', price: 41, quantity: 162 },
    { _id: 3, state: 'WA', price: 13, quantity: 104 },
    { _id: 5, state: 'WA', price: 9, quantity: 50 },
  ]);
  const running = await coll.aggregate([
    {
      $setWindowFields: {
        partitionBy: '$state',
        sortBy: { quantity: -1 },
        output: {
          running: { $sum: '$quantity', window: { documents: ['unbounded', 'current'] } },
          pair: { $sum: '$quantity', window: { documents: [-1, 0] } },
        },
      },
    },
    { $project: { running: 1, pair: 1 } },
  ]).toArray();
  assert.deepEqual(running, [
    { _id: 4, running: 162, pair: 162 },
    { _id: 2, running: 307, pair: 307 },
    { _id: 0, running: 427, pair: 265 },
    { _id: 3, running: 104, pair: 104 },
    { _id: 5, running: 154, pair: 154 },
  ]);
  const grouped = await coll.aggregate([
    {
      $group: {
        _id: '$state',
        top: { $top: { output: '$_id', sortBy: { price: -1 } } },
        cheapest: { $bottomN: { n: 2, output: ['$_id', '$price'], sortBy: { price: -1 } } },
      },
    },
    { $sort: { _id: 1 } },
  ]).toArray();
  assert.deepEqual(grouped, [
    { _id: 'CA', top: 4, cheapest: [[0, 13], [2, 12]] },
    { _id: 'WA', top: 3, cheapest: [[3, 13], [5, 9]] },
  ]);
});
