// Raw wire-protocol helpers for the node tests: build an OP_MSG by hand,
// read one reply, and a recording proxy that logs every relayed opcode.
import net from 'node:net';
import { BSON } from 'mongodb';

export const OP_MSG = 2013;
export const OP_COMPRESSED = 2012;
export const COMPRESSOR_IDS = { noop: 0, snappy: 1, zlib: 2, zstd: 3 };

export function opMsg(doc, requestId = 1, flags = 0) {
  const body = Buffer.concat([Buffer.alloc(5), Buffer.from(BSON.serialize(doc))]);
  body.writeUInt32LE(flags, 0);
  body[4] = 0;
  const header = Buffer.alloc(16);
  header.writeInt32LE(16 + body.length, 0);
  header.writeInt32LE(requestId, 4);
  header.writeInt32LE(0, 8);
  header.writeInt32LE(OP_MSG, 12);
  return Buffer.concat([header, body]);
}

// Connects, sends `bytes`, reads exactly one OP_MSG reply and returns its document.
export function rawRoundTrip(host, port, bytes, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('timed out waiting for a reply'));
    }, timeoutMs);
    sock.on('connect', () => sock.write(bytes));
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length >= 4 && buf.length >= buf.readInt32LE(0)) {
        clearTimeout(timer);
        sock.destroy();
        const opcode = buf.readInt32LE(12);
        if (opcode !== OP_MSG) return reject(new Error(`reply opcode ${opcode}, expected ${OP_MSG}`));
        if (buf[20] !== 0) return reject(new Error(`reply section kind ${buf[20]}`));
        resolve(BSON.deserialize(buf.subarray(21, buf.readInt32LE(0))));
      }
    });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    sock.on('close', () => { clearTimeout(timer); reject(new Error('connection closed before a reply')); });
  });
}

// A loopback proxy that records {direction, opcode, originalOpcode, compressorId}
// for every message it relays.
export async function startWireProxy(targetHost, targetPort) {
  const frames = [];
  const sockets = new Set();
  const pump = (src, dst, direction) => {
    let buf = Buffer.alloc(0);
    src.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 16) {
        const len = buf.readInt32LE(0);
        if (len < 16 || buf.length < len) break;
        const msg = buf.subarray(0, len);
        buf = buf.subarray(len);
        const frame = { direction, opcode: msg.readInt32LE(12), length: len };
        if (frame.opcode === OP_COMPRESSED && len >= 25) {
          frame.originalOpcode = msg.readInt32LE(16);
          frame.compressorId = msg[24];
        }
        frames.push(frame);
        dst.write(msg);
      }
    });
    src.on('close', () => dst.destroy());
    src.on('error', () => dst.destroy());
  };
  const server = net.createServer((down) => {
    const up = net.connect({ host: targetHost, port: targetPort });
    sockets.add(down);
    sockets.add(up);
    pump(down, up, 'c2s');
    pump(up, down, 's2c');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    address: `127.0.0.1:${port}`,
    frames,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
