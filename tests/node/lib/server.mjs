// Starts a Mangrove server for a test: `--port 0` on loopback, a fresh
// temporary data directory, and the address parsed from the one
// `mangrove ready: listening on HOST:PORT, ...` line on stdout.
//
// MANGROVE_BIN overrides the binary (default: <repo>/target/debug/mangrove,
// or $CARGO_TARGET_DIR/debug/mangrove).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const READY_RE = /listening on (\S+):(\d+)/;

export function mangroveBin() {
  if (process.env.MANGROVE_BIN) return process.env.MANGROVE_BIN;
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(REPO_ROOT, 'target');
  return path.join(target, 'debug', 'mangrove');
}

// `dataDir` restarts a server on an existing data directory (kept by `stop`); `keepData` keeps
// the new one for such a restart (the caller removes it).
export async function startServer({ extraArgs = [], replset = 'rs0', startupTimeoutMs = 60_000, dataDir: existing = null, keepData = false } = {}) {
  const bin = mangroveBin();
  if (!existsSync(bin)) {
    throw new Error(`mangrove binary not found at ${bin}; run \`cargo build -p mangrove\` or set MANGROVE_BIN`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'mangrove-node-'));
  const dataDir = existing ?? path.join(dir, 'data');
  if (!existing) mkdirSync(dataDir);
  const logPath = path.join(dir, 'server.log');
  const logFd = openSync(logPath, 'w');
  const args = ['serve', '--port', '0', '--bind', '127.0.0.1', '--data-dir', dataDir];
  if (replset) args.push('--replset', replset);
  args.push(...extraArgs);
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', logFd], cwd: dir });
  closeSync(logFd); // the child holds its own copy

  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let exitInfo = null;
  exited.then((info) => { exitInfo = info; });

  let finalLog = null; // kept after the temporary directory is removed
  const logTail = (n = 40) => {
    let text = finalLog;
    if (text === null) {
      try {
        text = readFileSync(logPath, 'utf8');
      } catch {
        return '<no log>';
      }
    }
    return text.split('\n').slice(-n).join('\n');
  };

  const stdoutLines = [];
  const address = await new Promise((resolve, reject) => {
    let buf = '';
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      child.kill('SIGKILL');
      reject(new Error(`mangrove did not print 'listening on HOST:PORT' within ${startupTimeoutMs}ms\n` +
        `stdout: ${JSON.stringify(stdoutLines)}\nstderr tail:\n${logTail()}`));
    }, startupTimeoutMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      // keep draining stdout for the process's life
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        stdoutLines.push(line);
        const m = READY_RE.exec(line);
        if (m && !done) {
          done = true;
          clearTimeout(timer);
          resolve({ host: m[1], port: Number(m[2]) });
        }
      }
    });
    exited.then(({ code, signal }) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`mangrove exited before becoming ready (code=${code}, signal=${signal})\n` +
        `args: ${args.join(' ')}\nstderr tail:\n${logTail()}`));
    });
  });

  const server = {
    ...address,
    address: `${address.host}:${address.port}`,
    uri: `mongodb://${address.host}:${address.port}/`,
    pid: child.pid,
    dataDir,
    child,
    stdoutLines,
    logTail,
    alive: () => exitInfo === null,
    // Sends `signal`, waits up to 15s (then SIGKILL); resolves to {code, signal}.
    async stop(signal = 'SIGTERM') {
      if (exitInfo === null) {
        child.kill(signal);
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(t);
      }
      if (finalLog === null) {
        try {
          finalLog = readFileSync(logPath, 'utf8');
        } catch {
          finalLog = '';
        }
      }
      if (keepData || existing) {
        rmSync(path.join(dir, 'server.log'), { force: true });
        if (!existing) return exitInfo; // the data stays for a restart; the caller removes it
      }
      rmSync(dir, { recursive: true, force: true });
      return exitInfo;
    },
  };
  return server;
}
