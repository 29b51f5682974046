// A body sent in tiny pieces (`1\r\na\r\n`, a byte a chunk) costs Node's parser a JavaScript
// call per piece: 13 times what the same bytes cost in one piece, with no token needed, since
// a refused request's body is read to its end. Past 16,384 pieces averaging under 16 bytes the
// body is cut (lib/incoming.ts, MAX_TINY_PIECES): a refused request's connection closes after
// its answer, and a forwarded one is cut on both sides. Bodies in pieces of any purpose pass.

import t from 'tap';
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

t.test('an allowed request whose body comes a byte a chunk is never forwarded whole', async (t) => {
  const w = await world(t);
  let received = 0;
  let ended = false;
  w.up.handler = (req, res) => { req.on('data', (c: Buffer) => { received += c.length; }); req.on('end', () => { ended = true; res.end('{}'); }); req.on('error', () => {}); };
  const got = await send(w.port, put(await w.tok()), pieces(4 * MAX_TINY_PIECES, 1));
  // Cut while it is decided (the token's first verify): a 400, nothing forwarded; cut while it
  // streams: both connections, no answer. Which one depends on how fast the pieces come.
  const [answer, ...more] = answers(got);
  t.same(more, [], 'the request pipelined behind the body is never read');
  if (answer !== undefined) {
    t.equal(answer, 'HTTP/1.1 400');
    t.match(got, /"reason":"malformed-request"/);
    t.match(got, /the request body came in too many tiny pieces \(over 16384 averaging under 16 bytes\): nothing was forwarded/);
    t.equal(received, 0, 'nothing forwarded');
  }
  t.notOk(ended, 'the upstream never got the whole body');
  t.ok(received < 4 * MAX_TINY_PIECES, `the upstream got part of it at most (${received} bytes)`);
});

t.test('a body in many pieces of any size worth sending is forwarded whole', async (t) => {
  const w = await world(t);
  let received = 0;
  w.up.handler = (req, res) => { req.on('data', (c: Buffer) => { received += c.length; }); req.on('end', () => res.end('{}')); };
  const got = await send(w.port, put(await w.tok()), pieces(2 * MAX_TINY_PIECES, 64));
  t.same(answers(got), ["HTTP/1.1 200", "HTTP/1.1 200"], 'the PUT and the GET behind it');
  t.equal(received, 2 * MAX_TINY_PIECES * 64, 'every byte');
});
