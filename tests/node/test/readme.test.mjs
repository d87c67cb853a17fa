// The README's Node.js example runs as printed (issue 16, item 7): each ```js block of its
// "Connect" section runs against a fresh server (the README's address replaced by the server's),
// and what it prints must equal the ```text block that follows it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, startServer } from '../lib/server.mjs';

const README_URI = 'mongodb://127.0.0.1:27017/';
let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await server.stop();
});

function snippets(language) {
  const text = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const section = text.split('## Connect')[1].split('\n## ')[0];
  const blocks = [...section.matchAll(/```(\w+)\n([\s\S]*?)```/g)].map((m) => [m[1], m[2]]);
  const pairs = [];
  blocks.forEach(([lang, code], i) => {
    if (lang !== language) return;
    assert.equal(blocks[i + 1]?.[0], 'text', `a ${language} block is not followed by its output`);
    pairs.push([code, blocks[i + 1][1]]);
  });
  return pairs;
}

function runNode(file) {
  return new Promise((resolve) => {
    execFile(process.execPath, [file], { timeout: 60_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr }));
  });
}

test('the README Node.js example prints what the README says', async () => {
  const pairs = snippets('js');
  assert.ok(pairs.length > 0, 'no js example in the README Connect section');
  for (const [i, [code, expected]] of pairs.entries()) {
    assert.ok(code.includes(README_URI));
    // Next to node_modules, so that `import ... from "mongodb"` resolves as in a project.
    const file = path.join(REPO_ROOT, 'tests', 'node', `.readme-example-${process.pid}-${i}.mjs`);
    writeFileSync(file, code.replaceAll(README_URI, server.uri));
    try {
      const r = await runNode(file);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, expected);
    } finally {
      rmSync(file, { force: true });
    }
  }
});
