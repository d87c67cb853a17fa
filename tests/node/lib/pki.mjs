// A test CA and a server certificate for 127.0.0.1 it signs, made with openssl in a fresh
// temporary directory (the TLS tests' only certificates; nothing is checked in).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export function makeCa(name) {
  const dir = mkdtempSync(path.join(tmpdir(), `mangrove-pki-${name}-`));
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', `/CN=test CA ${name}`);
  run('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.crt', '-days', '2', '-extfile', 'server.ext');
  const pem = Buffer.concat([readFileSync(path.join(dir, 'server.crt')), readFileSync(path.join(dir, 'server.key'))]);
  writeFileSync(path.join(dir, 'server.pem'), pem);
  return {
    dir,
    ca: path.join(dir, 'ca.pem'),
    serverPem: path.join(dir, 'server.pem'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
