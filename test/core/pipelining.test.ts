// HTTP/1.1 pipelining: a client may send many requests on one connection before reading any
// answer. driftguard handles them one at a time, in order, each decided as if sent alone; a
// connection with more than MAX_PIPELINED waiting is a flood, and is cut. Raw sockets against a
// real driftguard and upstream on loopback.

import t from 'tap';
import { connect, type Socket } from 'node:net';
import { world } from './world.ts';
import { MAX_PIPELINED } from '../../proxy/server.ts';

/** Open a raw connection; `text()` is everything read so far. */
async function socketTo(port: number): Promise<{ s: Socket; text(): string; closed: Promise<void> }> {
  const s = connect(port, '127.0.0.1');
  await new Promise((r) => s.once('connect', r));
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => {});
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  return { s, text: () => Buffer.concat(chunks).toString('latin1'), closed };
}

async function until(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// A problem body has no final newline: a status line may follow it on the same line.
const statuses = (text: string): number[] => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));

t.test('pipelined requests are handled one at a time, in order, each decided as if sent alone', async (t) => {
  const w = await world(t);
  let inUpstream = 0;
  let most = 0;
  w.up.handler = (req, res) => {
    inUpstream++;
    most = Math.max(most, inUpstream);
    let bytes = 0;
    req.on('data', (c: Buffer) => { bytes += c.length; });
    req.on('end', () => setTimeout(() => { inUpstream--; res.writeHead(200, { 'content-type': 'text/plain' }); res.end(`${req.method} ${req.url} ${bytes}`); }, 30));
  };
  const auth = `Authorization: Bearer ${await w.tok()}\r\n`;
  const c = await socketTo(w.port);
  c.s.write(
    'GET /status HTTP/1.1\r\nHost: a\r\n\r\n'
    + `GET /items/1 HTTP/1.1\r\nHost: a\r\n${auth}\r\n`
    + 'GET /items/2 HTTP/1.1\r\nHost: a\r\n\r\n' // no token: refused, and no upstream call
    + `POST /items HTTP/1.1\r\nHost: a\r\n${auth}Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{"n":12345}`
    + 'GET /status?last HTTP/1.1\r\nHost: a\r\n\r\n',
  );
  await until('five answers', () => statuses(c.text()).length === 5);
  t.same(statuses(c.text()), [200, 200, 401, 200, 200], 'in the order sent');
  const text = c.text();
  t.ok(text.indexOf('GET /status 0') < text.indexOf('GET /items/1 0') && text.indexOf('GET /items/1 0') < text.indexOf('POST /items 11'), 'each answer is its own request\'s, the body with its request');
  t.match(text, /missing-credential/);
  t.equal(w.up.seen.length, 4, 'the refused one never reached the upstream');
  t.equal(most, 1, 'one at a time: a connection holds at most one upstream call (four at once before)');
  c.s.destroy();
});

t.test('the last pipelined request\'s body, still arriving when its turn comes, is read', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => { bytes += c.length; });
    req.on('end', () => setTimeout(() => { res.writeHead(200); res.end(`${req.url} ${bytes}`); }, req.url === '/status' ? 50 : 0));
  };
  const c = await socketTo(w.port);
  c.s.write(`GET /status HTTP/1.1\r\nHost: a\r\n\r\nPOST /items HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${await w.tok()}\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"n":`);
  // The first answer goes out, then the second request starts with half its body.
  await until('the first answer', () => statuses(c.text()).length === 1);
  await new Promise((r) => setTimeout(r, 50));
  c.s.write('12345}');
  await until('the second answer', () => statuses(c.text()).length === 2);
  t.same(statuses(c.text()), [200, 200]);
  t.match(c.text(), /\/items 11/, 'its whole body reached the upstream');
  c.s.destroy();
});

t.test('a flood of pipelined requests on one connection is cut, not handled: the sidecar and its pool stay free', async (t) => {
  const w = await world(t);
  // A slow upstream: handled all at once, these held every pool connection.
  w.up.handler = (req, res) => { req.resume(); setTimeout(() => { res.writeHead(200); res.end('ok'); }, 200); };
  const c = await socketTo(w.port);
  c.s.pause(); // it never reads its answers
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(5_000));
  await c.closed;
  t.ok(w.up.seen.length <= 1, `at most the first reached the upstream (${w.up.seen.length}; all 64 pool connections before)`);
  t.equal(w.logs.filter((l) => l.msg === 'connection closed: too many pipelined requests waiting').length, 1, 'one warning for the connection');
  t.equal(w.logs.find((l) => l.msg === 'connection closed: too many pipelined requests waiting')?.limit, MAX_PIPELINED);
  const other = await w.call('GET', '/status');
  t.equal(other.status, 200, 'another client is served');
  await until('nothing in flight', () => w.dg.dg.inFlight === 0);
  t.equal(w.dg.dg.inFlight, 0, 'the waiting requests are not counted in flight once their connection is gone');
});

t.test('up to MAX_PIPELINED waiting are all answered', async (t) => {
  const w = await world(t);
  const c = await socketTo(w.port);
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(MAX_PIPELINED + 1));
  await until('every answer', () => statuses(c.text()).length === MAX_PIPELINED + 1);
  t.equal(w.up.seen.length, MAX_PIPELINED + 1);
  t.notOk(c.s.destroyed, 'the connection stays open');
  c.s.destroy();
});

t.test('a client that leaves with requests waiting leaves nothing in flight', async (t) => {
  const w = await world(t);
  let release: (() => void) | undefined;
  w.up.handler = (req, res) => { req.resume(); release = () => { res.writeHead(200); res.end('ok'); }; };
  const c = await socketTo(w.port);
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(4));
  await until('the first at the upstream', () => release !== undefined);
  t.equal(w.dg.dg.inFlight, 4, 'the one handled and the three waiting');
  c.s.destroy();
  await until('nothing in flight', () => w.dg.dg.inFlight === 0);
  release!();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(w.up.seen.length, 1, 'the waiting ones were never handled');
});
