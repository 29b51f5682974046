// A body sent in tiny pieces (`1\r\na\r\n`, a byte a chunk) costs Node's parser a JavaScript
// call per piece: 13 times what the same bytes cost in one piece, with no token needed, since
// a refused request's body is read to its end. Past 16,384 pieces averaging under 16 bytes of
// refused bodies on one connection (lib/incoming.ts, MAX_TINY_PIECES), the connection is
// closed after the answer. A forwarded body is its allowed caller's, and is never cut for it.

import t, { type Test } from 'tap';
import { connect } from 'node:net';
import { world } from '../core/world.ts';
import { MAX_TINY_PIECES } from '../../proxy/lib/incoming.ts';

/** Send `head`, then `body`, then a pipelined GET /status; what came back by the time the connection closed. */
function send(port: number, head: string, body: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    s.setEncoding('latin1');
    s.on('data', (c: string) => { got += c; });
    s.on('error', () => {});
    s.on('close', () => resolve(got));
    s.write(head);
    let off = 0;
    const pump = () => {
      while (off < body.length) {
        const c = body.subarray(off, off + 64 * 1024);
        off += c.length;
        if (!s.write(c)) { s.once('drain', pump); return; }
      }
      // Not end(): a client's FIN is taken as its leaving, and its request aborted.
      s.write('GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    };
    pump();
  });
}

const pieces = (n: number, size: number) => Buffer.from(`${size.toString(16)}\r\n${'a'.repeat(size)}\r\n`.repeat(n) + '0\r\n\r\n');
const put = (token?: string) => `PUT /items/1/blob HTTP/1.1\r\nHost: x\r\n${token ? `Authorization: Bearer ${token}\r\n` : ''}Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`;
const answers = (text: string) => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];

t.test('a refused request whose body comes a byte a chunk: its answer, then the connection closes unread', async (t) => {
  const w = await world(t);
  const got = await send(w.port, put(), pieces(4 * MAX_TINY_PIECES, 1));
  // Before: the whole body was read (and the pipelined GET answered) at a JavaScript call a byte.
  t.same(answers(got), ['HTTP/1.1 401'], 'the refusal only: the request pipelined behind the body is never read');
});

t.test('refused request after refused request, each under the bound, on one connection: counted together, and cut', async (t) => {
  const w = await world(t);
  // Eight refusals of 10,000 one-byte pieces each: the connection's 16,384th tiny piece cuts it.
  const each = Buffer.concat([Buffer.from(put()), pieces(10_000, 1)]);
  const got = await send(w.port, Buffer.concat(Array.from({ length: 7 }, () => each)).toString('latin1') + put(), pieces(10_000, 1));
  const statuses = answers(got);
  t.ok(statuses.length >= 1 && statuses.length < 8, `cut within the second refused body (${statuses.length} answers)`);
  t.ok(statuses.every((s) => s === 'HTTP/1.1 401'), 'each answered one a refusal');
});

t.test('pieces that came while a refusal was decided count too: a token whose signature fails, refused after a verify', async (t) => {
  const w = await world(t);
  const good = await w.tok();
  // The signature's last characters changed: refused (401) only once its verify has run,
  // while the body arrives.
  const forged = good.slice(0, -4) + (good.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  // One request at a time on one connection (pipelined, a second waiting body is a flood).
  const s = connect(w.port, '127.0.0.1');
  let got = '';
  let closed = false;
  s.setEncoding('latin1');
  s.on('data', (c: string) => { got += c; });
  s.on('error', () => {});
  s.on('close', () => { closed = true; });
  await new Promise((r) => s.once('connect', r));
  let sent = 0;
  for (; sent < 8 && !closed; sent++) {
    s.write(Buffer.concat([Buffer.from(put(forged)), pieces(8_000, 1)]));
    for (const end = Date.now() + 5_000; answers(got).length <= sent && !closed && Date.now() < end;) await new Promise((r) => setTimeout(r, 10));
  }
  for (const end = Date.now() + 2_000; !closed && Date.now() < end;) await new Promise((r) => setTimeout(r, 10));
  s.destroy();
  // Before: none of them counted (each body came while its decision waited): all eight answered, the connection open.
  t.ok(closed && sent < 8, `the connection was closed after ${answers(got).length} refusals`);
  t.ok(answers(got).every((x) => x === 'HTTP/1.1 401'), 'each answered one a refusal');
});

/** An allowed PUT with `n` pieces of `size` bytes, and a GET pipelined behind it: both answered 200, and every byte forwarded. */
async function forwardedWhole(t: Test, n: number, size: number): Promise<void> {
  const w = await world(t);
  let received = 0;
  w.up.handler = (req, res) => { req.on('data', (c: Buffer) => { received += c.length; }); req.on('end', () => res.end('{}')); };
  const got = await send(w.port, put(await w.tok()), pieces(n, size));
  t.same(answers(got), ['HTTP/1.1 200', 'HTTP/1.1 200'], 'the PUT and the GET behind it');
  t.equal(received, n * size, 'every byte');
}

// Before: cut on both sides once past the bound, as a stream of short rows (fetch with a
// ReadableStream, a generator: a chunk a row) was.
t.test('an allowed request\'s body, forwarded, is its caller\'s: a byte a chunk reaches the upstream whole', (t) => forwardedWhole(t, 2 * MAX_TINY_PIECES, 1));

t.test('a body in many pieces of any size worth sending is forwarded whole', (t) => forwardedWhole(t, 2 * MAX_TINY_PIECES, 64));
