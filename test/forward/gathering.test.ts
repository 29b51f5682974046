// A request's small body chunks are gathered into few buffers (proxy/lib/incoming.ts): every
// byte must still reach the reader once and in order, however the client cuts and times its
// writes and however the reader reads (flowing, paused and resumed as undici does on
// back-pressure, 'readable' and read(), late), and no body may stall. Seeded random bodies
// over real sockets to a real Node server, its requests read through the gathering.

import t from 'tap';
import { createServer, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { gatherSmallChunks } from '../../proxy/lib/incoming.ts';
import { listen, close } from '../support/servers.ts';

type Reader = 'pause-resume' | 'readable' | 'late' | 'async-iterator';

function random(seed: number) {
  let s = seed >>> 0;
  const rnd = () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 2 ** 32; };
  return { rnd, int: (a: number, b: number) => a + Math.floor(rnd() * (b - a + 1)) };
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Read `req` the `reader` way; resolves to its bytes' length and sha256. */
async function read(req: IncomingMessage, reader: Reader, r: ReturnType<typeof random>): Promise<{ n: number; sha: string }> {
  const h = createHash('sha256');
  let n = 0;
  const add = (c: Buffer) => { h.update(c); n += c.length; };
  const ended = new Promise<void>((resolve) => req.once('end', resolve));
  if (reader === 'pause-resume') {
    req.on('data', (c: Buffer) => { add(c); if (r.rnd() < 0.3) { req.pause(); setTimeout(() => req.resume(), r.int(0, 20)); } });
  } else if (reader === 'readable') {
    req.on('readable', () => { let c: Buffer | null; while ((c = req.read(r.int(1, 100)) as Buffer | null) !== null) add(c); });
  } else if (reader === 'late') {
    await sleep(r.int(0, 200));
    req.on('data', add);
  } else {
    for await (const c of req) { add(c as Buffer); if (r.rnd() < 0.2) await sleep(r.int(1, 10)); }
  }
  await ended;
  return { n, sha: h.digest('hex') };
}

for (const [reader, seeds] of [['pause-resume', [7, 8, 9, 10]], ['readable', [1]], ['late', [2]], ['async-iterator', [3]]] as const) {
  t.test(`bodies in random small chunks and writes, read ${reader}: every byte once, in order, none stalled`, async (t) => {
    for (const seed of seeds) {
      const r = random(seed);
      const server = createServer((req, res) => {
        gatherSmallChunks(req);
        void read(req, reader, r).then((got) => res.end(JSON.stringify(got)));
      });
      const port = await listen(server);
      const one = async (): Promise<string | undefined> => {
        const size = r.rnd() < 0.5 ? r.int(1, 3_000) : r.int(3_000, 200_000);
        const body = randomBytes(size);
        const want = createHash('sha256').update(body).digest('hex');
        const chunked = r.rnd() < 0.6;
        let wire = body;
        if (chunked) {
          const parts: Buffer[] = [];
          for (let o = 0; o < size;) {
            const c = Math.min(size - o, r.rnd() < 0.7 ? r.int(1, 30) : r.int(1, 8_000));
            parts.push(Buffer.from(c.toString(16) + '\r\n'), body.subarray(o, o + c), Buffer.from('\r\n'));
            o += c;
          }
          wire = Buffer.concat(parts);
        }
        const s = connect(port, '127.0.0.1');
        s.on('error', () => {});
        let got = '';
        s.on('data', (d: Buffer) => { got += d.toString(); });
        const closed = new Promise<void>((resolve) => s.on('close', () => resolve()));
        s.write(`POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n${chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${size}`}\r\n\r\n`);
        for (let o = 0; o < wire.length;) {
          const w = r.rnd() < 0.5 ? r.int(1, 20) : r.int(1, 20_000);
          s.write(wire.subarray(o, o + w));
          o += w;
          const p = r.rnd();
          if (p < 0.05) await sleep(r.int(1, 20)); else if (p < 0.3) await new Promise((resolve) => setImmediate(resolve));
        }
        if (chunked) { if (r.rnd() < 0.3) await sleep(r.int(10, 100)); s.write('0\r\n\r\n'); }
        const stalled = setTimeout(() => s.destroy(), 5_000);
        await closed;
        clearTimeout(stalled);
        const m = /\{"n":(\d+),"sha":"(\w+)"\}/.exec(got);
        if (!m) return `${size} bytes${chunked ? ', chunked' : ''}: no answer within 5 s (the body stalled)`;
        if (m[2] !== want) return `${size} bytes${chunked ? ', chunked' : ''}: ${m[1]} bytes read, not the body sent`;
        return undefined;
      };
      const failures: string[] = [];
      let next = 0;
      const N = 40;
      await Promise.all(Array.from({ length: 3 }, async () => { while (next < N) { next++; const f = await one(); if (f) failures.push(f); } }));
      await close(server);
      t.same(failures, [], `seed ${seed}: ${N} bodies whole`);
    }
  });
}
