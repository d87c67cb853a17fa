// The Node driver over TLS with SCRAM users, against a server started with
// --tls-mode requireTLS and --auth and a test CA made at test time: the right password
// works, and a wrong password, an unknown user, another CA and plaintext fail clearly.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { MongoClient, MongoServerSelectionError } from 'mongodb';
import { startServer } from '../lib/server.mjs';
import { makeCa } from '../lib/pki.mjs';

let server;
let ours;
let theirs;
const OPTS = { serverSelectionTimeoutMS: 3_000, connectTimeoutMS: 3_000, directConnection: true };

before(async () => {
  ours = makeCa('ours');
  theirs = makeCa('theirs');
  server = await startServer({
    extraArgs: ['--tls-mode', 'requireTLS', '--tls-certificate-key-file', ours.serverPem, '--auth'],
  });
  const first = new MongoClient(server.uri, { ...OPTS, tls: true, tlsCAFile: ours.ca });
  try {
    await first.db('admin').command({ createUser: 'app', pwd: 'correct horse', roles: ['readWriteAnyDatabase'] });
  } finally {
    await first.close();
  }
});

after(async () => {
  ours?.remove();
  theirs?.remove();
  if (!server) return;
  const info = await server.stop();
  assert.deepEqual(info, { code: 0, signal: null });
});

function client(opts) {
  return new MongoClient(server.uri, { ...OPTS, ...opts });
}

test('user and password over TLS', async () => {
  for (const authMechanism of ['SCRAM-SHA-256', 'SCRAM-SHA-1']) {
    const c = client({ tls: true, tlsCAFile: ours.ca, auth: { username: 'app', password: 'correct horse' }, authMechanism });
    try {
      await c.db('shop').collection('orders').insertOne({ authMechanism });
      assert.equal(await c.db('shop').collection('orders').countDocuments({ authMechanism }), 1);
    } finally {
      await c.close();
    }
  }
});

test('wrong password and unknown user fail with AuthenticationFailed', async () => {
  for (const auth of [{ username: 'app', password: 'wrong' }, { username: 'nobody', password: 'correct horse' }]) {
    const c = client({ tls: true, tlsCAFile: ours.ca, auth });
    try {
      await assert.rejects(c.db('shop').collection('orders').findOne({}), (e) => {
        assert.equal(e.code ?? e.cause?.code, 18, `${e}`);
        return true;
      });
    } finally {
      await c.close();
    }
  }
});

test('another CA and plaintext cannot connect', async () => {
  for (const opts of [{ tls: true, tlsCAFile: theirs.ca }, {}]) {
    const c = client(opts);
    try {
      await assert.rejects(c.db('admin').command({ ping: 1 }), MongoServerSelectionError);
    } finally {
      await c.close();
    }
  }
  assert.ok(server.alive());
});
