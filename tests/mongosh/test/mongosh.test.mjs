// mongosh (the npm package, pinned in package.json) against a real Mangrove
// server: `npx --no mongosh <uri> --quiet --eval ...` for a ping, a hello
// and an insert + find, checking what mongosh prints.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../../node/lib/server.mjs';
import { makeCa } from '../../node/lib/pki.mjs';

const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let server;
let home;

before(async () => {
  server = await startServer();
  // mongosh writes logs/history under $HOME/.mongodb; keep that out of the real home.
  home = mkdtempSync(path.join(tmpdir(), 'mangrove-mongosh-home-'));
});

after(async () => {
  if (home) rmSync(home, { recursive: true, force: true });
  if (!server) return;
  const alive = server.alive();
  const tail = server.logTail();
  const info = await server.stop();
  assert.ok(alive, `server died during the mongosh tests; stderr tail:\n${tail}`);
  assert.deepEqual(info, { code: 0, signal: null });
});

function mongosh(uri, script) {
  return new Promise((resolve) => {
    execFile(
      'npx',
      ['--no', 'mongosh', uri, '--quiet', '--norc', '--eval', script],
      {
        cwd: HERE,
        timeout: 120_000,
        env: {
          ...process.env,
          HOME: home,
          MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING: '1',
          CI: 'true', // mongosh skips its update-metadata fetch in CI
        },
      },
      (error, stdout, stderr) => resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

test('mongosh ping', async (t) => {
  const r = await mongosh(server.uri, 'print("PING=" + JSON.stringify(db.adminCommand({ ping: 1 })))');
  t.diagnostic(`mongosh stdout: ${r.stdout.trim()}`);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /PING=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no PING= line in output: ${r.stdout}`);
  assert.equal(JSON.parse(m[1]).ok, 1);
});

test('mongosh hello shows the replica set primary', async (t) => {
  const r = await mongosh(server.uri, 'const h = db.hello(); print("HELLO=" + JSON.stringify({ setName: h.setName, isWritablePrimary: h.isWritablePrimary, hosts: h.hosts }))');
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /HELLO=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no HELLO= line in output: ${r.stdout}`);
  const h = JSON.parse(m[1]);
  t.diagnostic(`mongosh saw hello ${m[1]}`);
  console.log(`[mongosh] ${server.uri} hello: ${m[1]}`);
  assert.equal(h.setName, 'rs0');
  assert.equal(h.isWritablePrimary, true);
  assert.ok(h.hosts.includes(server.address));
});

test('mongosh insert and find', async (t) => {
  const script = [
    'const c = db.getSiblingDB("shell").items;',
    'const ins = c.insertMany([{ _id: 1, name: "ada" }, { _id: 2, name: "grace" }, { _id: 3, name: "linus" }]);',
    'print("INSERTED=" + Object.keys(ins.insertedIds).length);',
    'print("FOUND=" + EJSON.stringify(c.find({ _id: { $gte: 2 } }).sort({ _id: 1 }).toArray()));',
  ].join('\n');
  const r = await mongosh(server.uri, script);
  t.diagnostic(`mongosh stdout: ${r.stdout.trim()}`);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  assert.match(r.stdout, /INSERTED=3/);
  const m = /FOUND=(\[.*\])/.exec(r.stdout);
  assert.ok(m, `no FOUND= line in output: ${r.stdout}`);
  assert.deepEqual(JSON.parse(m[1]), [{ _id: 2, name: 'grace' }, { _id: 3, name: 'linus' }]);

  // the plain shell rendering of find(), as a person would see it
  const r2 = await mongosh(server.uri, 'db.getSiblingDB("shell").items.find({ name: "ada" })');
  assert.equal(r2.code, 0, `mongosh failed: ${r2.stderr}\n${r2.stdout}`);
  assert.match(r2.stdout, /_id: 1/);
  assert.match(r2.stdout, /name: 'ada'/);
  assert.doesNotMatch(r2.stdout, /grace/);
});

test('mongosh reports server errors', async () => {
  const r = await mongosh(server.uri, 'db.adminCommand({ definitelyNotARealCommand: 1 })');
  assert.notEqual(r.code, 0, 'an unknown command should make mongosh --eval fail');
  assert.match(r.stdout + r.stderr, /CommandNotFound|no such command|not found/i);
});

test('mongosh capped collection: isCapped, stats, tailable order', async (t) => {
  const script = [
    'const d = db.getSiblingDB("shellcap");',
    'd.createCollection("log", { capped: true, size: 4096, max: 3 });',
    'for (let i = 0; i < 5; i++) d.log.insertOne({ _id: 10 - i, i });',
    'const s = d.log.stats();',
    'print("CAPPED=" + JSON.stringify({ capped: d.log.isCapped(), statsCapped: s.capped, max: s.max, maxSize: s.maxSize, count: s.count, size: s.size, natural: d.log.find().sort({ $natural: -1 }).toArray().map((x) => x.i) }));',
  ].join('\n');
  const r = await mongosh(server.uri, script);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /CAPPED=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no CAPPED= line in output: ${r.stdout}`);
  t.diagnostic(`mongosh saw ${m[1]}`);
  const c = JSON.parse(m[1]);
  assert.equal(c.capped, true);
  assert.equal(c.statsCapped, true);
  assert.equal(c.max, 3);
  assert.equal(c.maxSize, 4096);
  assert.equal(c.count, 3);
  // Three documents of { _id: <int32>, i: <int32> }: 21 bytes each.
  assert.equal(c.size, 3 * 21);
  assert.deepEqual(c.natural, [4, 3, 2]);
});

test('mongosh printReplicationInfo reads the log window', async (t) => {
  const script = [
    'db.getSiblingDB("shellrepl").x.insertOne({ a: 1 });',
    'const info = db.getReplicationInfo();',
    'print("REPL=" + JSON.stringify(info));',
    'db.printReplicationInfo();',
  ].join('\n');
  const r = await mongosh(server.uri, script);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /REPL=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no REPL= line in output: ${r.stdout}`);
  t.diagnostic(`mongosh saw ${m[1]}`);
  const info = JSON.parse(m[1]);
  // The default --oplog-size-mb.
  assert.equal(info.configuredLogSizeMB, 1024);
  assert.ok(info.usedMB > 0, `usedMB ${info.usedMB}`);
  assert.ok(info.timeDiff >= 0, `timeDiff ${info.timeDiff}`);
  assert.match(r.stdout, /configured oplog size/);
  assert.match(r.stdout, /log length start to end/);
});

test('mongosh with user and password over TLS', async (t) => {
  const pki = makeCa('mongosh');
  const secure = await startServer({
    extraArgs: ['--tls-mode', 'requireTLS', '--tls-certificate-key-file', pki.serverPem, '--auth'],
  });
  try {
    const base = `mongodb://${secure.address}/?directConnection=true&tls=true&tlsCAFile=${encodeURIComponent(pki.ca)}`;
    const create = await mongosh(base, 'db.getSiblingDB("admin").createUser({ user: "ops", pwd: "s3cret", roles: ["root"] }); print("CREATED")');
    assert.equal(create.code, 0, `createUser failed: ${create.stderr}\n${create.stdout}`);
    const withUser = base.replace('mongodb://', 'mongodb://ops:s3cret@');
    const r = await mongosh(withUser, 'print("STATUS=" + JSON.stringify(db.runCommand({ connectionStatus: 1 }).authInfo.authenticatedUsers))');
    assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
    const m = /STATUS=(\[.*\])/.exec(r.stdout);
    assert.ok(m, `no STATUS= line: ${r.stdout}`);
    t.diagnostic(`mongosh authenticated as ${m[1]}`);
    assert.deepEqual(JSON.parse(m[1]), [{ user: 'ops', db: 'admin' }]);
    const wrong = await mongosh(base.replace('mongodb://', 'mongodb://ops:nope@'), 'db.runCommand({ ping: 1 })');
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stdout + wrong.stderr, /Authentication failed/);
  } finally {
    await secure.stop();
    pki.remove();
  }
});

test('mongosh rs.status(), rs.conf() and the replica-set commands give mongod shapes', async (t) => {
  const script = [
    'const s = rs.status();',
    'const m = s.members[0];',
    'const c = rs.conf();',
    'const stored = db.getSiblingDB("local").system.replset.findOne();',
    'print("RS=" + JSON.stringify({',
    '  set: s.set, myState: s.myState, n: s.members.length, state: m.stateStr, self: m.self, name: m.name,',
    '  health: m.health, syncSourceHost: m.syncSourceHost, optimeTs: typeof m.optime.ts, hasOptimeDate: m.optimeDate instanceof Date,',
    '  hasHeartbeat: m.lastHeartbeat instanceof Date, majority: s.writeMajorityCount,',
    '  confId: c._id, confVersion: c.version, confHosts: c.members.map((x) => x.host), votes: c.members[0].votes,',
    '  storedId: stored._id, storedHost: stored.members[0].host,',
    '  replsetCount: db.getSiblingDB("local").system.replset.countDocuments({}),',
    '}));',
    'try { rs.initiate(); print("INITIATE=ok"); } catch (e) { print("INITIATE=" + e.code); }',
    'try { rs.stepDown(); print("STEPDOWN=ok"); } catch (e) { print("STEPDOWN=" + e.code); }',
    'rs.printSecondaryReplicationInfo();',
  ].join('\n');
  const r = await mongosh(server.uri, script);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /RS=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no RS= line in output: ${r.stdout}`);
  t.diagnostic(`mongosh saw ${m[1]}`);
  const rs = JSON.parse(m[1]);
  assert.deepEqual(rs, {
    set: 'rs0', myState: 1, n: 1, state: 'PRIMARY', self: true, name: server.address,
    health: 1, syncSourceHost: '', optimeTs: 'object', hasOptimeDate: true,
    hasHeartbeat: true, majority: 1,
    confId: 'rs0', confVersion: 1, confHosts: [server.address], votes: 1,
    storedId: 'rs0', storedHost: server.address, replsetCount: 1,
  });
  assert.match(r.stdout, /INITIATE=23/);
  assert.match(r.stdout, /STEPDOWN=262/);
});

test('mongosh default read and write concerns are set, read back and checked', async () => {
  const script = [
    'const before = db.adminCommand({ getDefaultRWConcern: 1 });',
    'db.adminCommand({ setDefaultRWConcern: 1, defaultWriteConcern: { w: 1 }, defaultReadConcern: { level: "local" } });',
    'const after = db.adminCommand({ getDefaultRWConcern: 1 });',
    'let bad = null; try { db.adminCommand({ setDefaultRWConcern: 1, defaultWriteConcern: { w: 3 } }); } catch (e) { bad = e.code; }',
    'print("RW=" + JSON.stringify({ before: [before.defaultWriteConcern.w, before.defaultWriteConcernSource], after: [after.defaultWriteConcern.w, after.defaultWriteConcernSource, after.defaultReadConcern.level], bad }));',
    'db.adminCommand({ setDefaultRWConcern: 1, defaultWriteConcern: { w: "majority" } });',
  ].join('\n');
  const r = await mongosh(server.uri, script);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /RW=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no RW= line in output: ${r.stdout}`);
  assert.deepEqual(JSON.parse(m[1]), {
    before: ['majority', 'implicit'],
    after: [1, 'global', 'local'],
    bad: 2,
  });
});

test('mongosh currentOp, killOp, top, validate and getLogComponents', async () => {
  const script = [
    'const d = db.getSiblingDB("shelldiag");',
    'd.c.insertMany([{ a: [1, 2] }, { a: 3 }]); d.c.createIndex({ a: 1 });',
    'const s = db.getMongo().startSession(); s.startTransaction();',
    's.getDatabase("shelldiag").c.insertOne({ a: 4 });',
    'const ops = db.currentOp().inprog.filter((o) => o.transaction);',
    'const running = db.currentOp().inprog.filter((o) => o.active && o.opid > 0 && !o.transaction);',
    's.abortTransaction();',
    'const v = d.c.validate({ full: true });',
    'const t = db.adminCommand({ top: 1 }).totals["shelldiag.c"];',
    'print("DIAG=" + JSON.stringify({',
    '  txns: ops.length, ns: ops[0].transaction.namespaces, kill: db.killOp(1).info,',
    '  selfListed: running.length >= 1, killBad: (() => { try { db.adminCommand({ killOp: 1, op: "x" }); return 0; } catch (e) { return e.code; } })(),',
    '  valid: v.valid, keys: { _id_: Number(v.keysPerIndex._id_), a_1: Number(v.keysPerIndex.a_1) },',
    '  nrecords: Number(v.nrecords), topInserts: Number(t.insert.count),',
    '  logVerbosity: db.getLogComponents().verbosity,',
    '}));',
  ].join('\n');
  const r = await mongosh(server.uri, script);
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /DIAG=(\{.*\})/.exec(r.stdout);
  assert.ok(m, `no DIAG= line in output: ${r.stdout}`);
  assert.deepEqual(JSON.parse(m[1]), {
    txns: 1, ns: ['shelldiag.c'], kill: 'attempting to kill op', selfListed: true, killBad: 14,
    valid: true, keys: { _id_: 2, a_1: 3 }, nrecords: 2, topInserts: 2,
    logVerbosity: 0,
  });
});

test('mongosh show dbs lists admin, config and local', async () => {
  const r = await mongosh(server.uri, 'db.getSiblingDB("shelldbs").x.insertOne({ a: 1 }); print("DBS=" + JSON.stringify(db.adminCommand({ listDatabases: 1, nameOnly: true }).databases.map((d) => d.name))); db.getMongo().getDBs(); ');
  assert.equal(r.code, 0, `mongosh failed: ${r.stderr}\n${r.stdout}`);
  const m = /DBS=(\[.*\])/.exec(r.stdout);
  assert.ok(m, `no DBS= line in output: ${r.stdout}`);
  const names = JSON.parse(m[1]);
  for (const name of ['admin', 'config', 'local', 'shelldbs']) assert.ok(names.includes(name), `${name} missing from ${m[1]}`);
  const shown = await mongosh(server.uri, 'show dbs');
  assert.equal(shown.code, 0, `mongosh failed: ${shown.stderr}\n${shown.stdout}`);
  assert.match(shown.stdout, /^admin\s/m);
  assert.match(shown.stdout, /^config\s/m);
  assert.match(shown.stdout, /^local\s/m);
});
