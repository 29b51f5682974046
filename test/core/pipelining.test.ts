// HTTP/1.1 pipelining: a client may send many requests on one connection before reading any
// answer. driftguard handles them one at a time, in order, each decided as if sent alone; a
// connection with more than MAX_PIPELINED waiting is a flood, and is cut. Raw sockets against a
// real driftguard and upstream on loopback.

import t from 'tap';
import { connect, type Socket } from 'node:net';
import { world } from './world.ts';
import { MAX_PIPELINED, MAX_WAITING } from '../../proxy/lib/pipelining.ts';
import { noopObserver, type Observer } from '../../proxy/observe.ts';
import { matchEach } from '../support/lists.ts';

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
    + `GET /items HTTP/1.1\r\nHost: a\r\n${auth}\r\n`
    + 'GET /status?last HTTP/1.1\r\nHost: a\r\n\r\n',
  );
  await until('five answers', () => statuses(c.text()).length === 5);
  t.same(statuses(c.text()), [200, 200, 401, 200, 200], 'in the order sent');
  const text = c.text();
  t.ok(text.indexOf('GET /status 0') < text.indexOf('GET /items/1 0') && text.indexOf('GET /items/1 0') < text.indexOf('GET /items 0'), 'each answer is its own request\'s');
  t.match(text, /missing-credential/);
  t.equal(w.up.seen.length, 4, 'the refused one never reached the upstream');
  t.equal(most, 1, 'one at a time: a connection holds at most one upstream call (four at once before)');
  c.s.destroy();
});

t.test('a request with a body waiting behind an answer slower than proxy.timeouts.request is not cut: its time starts with its turn', async (t) => {
  // Node's request timeout, counted from its first byte while its body waited unread, cut the
  // connection with the earlier answer half sent: no answer at all.
  const w = await world(t, (r) => { r.proxy.timeouts = { connect: '1s', response: '5s', request: '1s' }; });
  w.up.handler = (req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => { bytes += c.length; });
    req.on('end', () => setTimeout(() => { res.writeHead(200); res.end(`${req.method} ${req.url} ${bytes}`); }, req.url === '/status' ? 1_500 : 0));
  };
  const c = await socketTo(w.port);
  const body = 'x'.repeat(1_000_000);
  c.s.write(`GET /status HTTP/1.1\r\nHost: a\r\n\r\nPUT /items/1/blob HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${await w.tok()}\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  await until('both answers', () => statuses(c.text()).length === 2 || c.s.destroyed);
  t.same(statuses(c.text()), [200, 200]);
  const text = c.text();
  t.ok(text.indexOf('GET /status 0') >= 0 && text.indexOf('GET /status 0') < text.indexOf('PUT /items/1/blob 1000000'), 'in order, the body whole');
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
  matchEach(t, w.logs.filter((l) => l.msg === 'connections closed: too many pipelined requests'), [{ connections: 1, limit: MAX_PIPELINED }], 'one warning');
  // Another flooding connection within the minute is counted, not logged: no line per connection.
  const d = await socketTo(w.port);
  d.s.pause();
  d.s.write('GET /status HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(5_000));
  await d.closed;
  t.equal(w.logs.filter((l) => l.msg === 'connections closed: too many pipelined requests').length, 1, 'still one line');
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

t.test('past MAX_WAITING on all connections, the connection holding the most is cut, not a newcomer pipelining two', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '10s'; });
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { req.resume(); if (req.url === '/items/slow') void held.then(() => { if (!res.destroyed) res.end('late'); }); else res.end('ok'); };
  t.teardown(() => release());
  const token = await w.tok();
  // Four connections, each a slow call and MAX_PIPELINED waiting behind it: every place taken.
  const floods = await Promise.all([0, 1, 2, 3].map(() => socketTo(w.port)));
  for (const f of floods) f.s.write(`GET /items/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n` + 'GET /status HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(MAX_PIPELINED));
  await until('the slow calls upstream', () => w.up.seen.filter((r) => r.url === '/items/slow').length === 4);
  await new Promise((r) => setTimeout(r, 200));
  const newcomer = await socketTo(w.port);
  newcomer.s.write('GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await newcomer.closed;
  // Before: the newcomer's connection was cut unanswered, and counted as its flood.
  t.same(statuses(newcomer.text()), [200, 200], 'both of the newcomer\'s requests answered');
  const cut = await Promise.race([Promise.any(floods.map((f) => f.closed)).then(() => true), new Promise((r) => setTimeout(() => r(false), 2_000))]);
  t.ok(cut, 'a flooding connection was cut instead');
  t.match(w.logs.find((l) => l.msg === 'connections closed: too many pipelined requests'), { limit: 128 });
  release();
});

t.test('places filled thinly, by many connections of one waiting request each: the newcomer is cut, not an established client that pipelines a few', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '20s'; r.proxy.timeouts.connect = '20s'; });
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { req.resume(); if (req.url === '/items/slow') void held.then(() => { if (!res.destroyed) res.end('{}'); }); else res.end('{}'); };
  t.teardown(() => release());
  const token = await w.tok();
  const slow = `GET /items/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n\r\n`;
  const status = 'GET /status HTTP/1.1\r\nHost: x\r\n\r\n';
  const established = await socketTo(w.port);
  established.s.write(slow + status.repeat(4));
  const thin = await Promise.all(Array.from({ length: MAX_WAITING - 4 }, () => socketTo(w.port)));
  t.teardown(() => { for (const c of [established, ...thin]) c.s.destroy(); });
  for (const c of thin) c.s.write(slow + status);
  await until('every slow call upstream', () => w.up.seen.filter((r) => r.url === '/items/slow').length === MAX_WAITING - 3, 10_000);
  await new Promise((r) => setTimeout(r, 200));
  const newcomer = await socketTo(w.port);
  newcomer.s.write(slow + status);
  await newcomer.closed;
  let closed = false;
  void established.closed.then(() => { closed = true; });
  await new Promise((r) => setTimeout(r, 300));
  // Before (since 0fc6767): the established client's connection was cut in the newcomer's place.
  t.notOk(closed, 'the client pipelining four keeps its connection');
  release();
  await until('the established client\'s five answers', () => statuses(established.text()).length === 5, 10_000);
  t.same(statuses(established.text()), [200, 200, 200, 200, 200]);
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

t.test('after an answer that ends its connection, the requests waiting behind it are not decided', async (t) => {
  const decided: string[] = [];
  const counting: Observer = { begin: (ctx) => ({ ...noopObserver.begin(ctx), decided: () => { decided.push(ctx.req.url ?? ''); } }) };
  const w = await world(t, () => {}, { observer: counting });
  // No length: an HTTP/1.0 answer can then only end with the connection.
  w.up.handler = (req, res) => { req.resume(); setTimeout(() => { res.writeHead(200, { 'content-type': 'text/plain' }); res.write('streamed'); res.end(); }, 50); };
  const c = await socketTo(w.port);
  c.s.write('GET /status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n'.repeat(3));
  await c.closed;
  t.same(statuses(c.text().replace(/HTTP\/1\.0/g, 'HTTP/1.1')), [200], 'one answer, then the connection ends');
  t.equal(w.up.seen.length, 1);
  t.same(decided, ['/status'], 'the two behind it were neither decided nor recorded');
});

t.test('bytes after a request marked Connection: close do not cost that request its answer', async (t) => {
  const w = await world(t);
  const c = await socketTo(w.port);
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /status?2 HTTP/1.1\r\nHost: a\r\n\r\n');
  await c.closed;
  t.same(statuses(c.text()), [200], 'answered (it was cut with no answer), and only it');
  t.equal(w.up.seen.length, 1);
});

t.test('requests with bodies wait their turn too, one at most: a second waiting body is a flood', async (t) => {
  const w = await world(t);
  let inUpstream = 0;
  let most = 0;
  w.up.handler = (req, res) => { inUpstream++; most = Math.max(most, inUpstream); req.resume(); setTimeout(() => { inUpstream--; res.writeHead(200); res.end('ok'); }, 30); };
  // One behind the first: answered in turn.
  const c = await socketTo(w.port);
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx'.repeat(2));
  await until('two answers', () => statuses(c.text()).length === 2);
  t.equal(most, 1, 'one at a time (ten at once when bodies started early)');
  c.s.destroy();
  // Each waiting body is buffered whole up to 64 KiB: 32 of them held 2 MB per connection.
  const d = await socketTo(w.port);
  d.s.write('GET /status HTTP/1.1\r\nHost: a\r\n\r\n' + `POST /anything HTTP/1.1\r\nHost: a\r\nContent-Length: 65000\r\n\r\n${'x'.repeat(65_000)}`.repeat(32));
  await d.closed;
  t.ok(statuses(d.text()).length <= 1, 'cut: at most the first was answered');
  t.equal(most, 1);
  t.ok(w.logs.some((l) => l.msg === 'connections closed: too many pipelined requests'), 'counted as a flood');
});

t.test('a write pipelined behind a refused request is not carried out when the refusal closes the connection', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  // Verified once: the write's decision then takes no time, as for any caller with a cached token.
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
  const c = await socketTo(w.port);
  c.s.write(`GET /status?_method=DELETE HTTP/1.1\r\nHost: a\r\n\r\nPUT /items/1/blob HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${tok}\r\nContent-Length: 3\r\n\r\nabc`);
  await c.closed;
  t.same(statuses(c.text()), [400]);
  t.equal(w.up.seen.length, 1, 'the upstream never acted on a write whose answer nobody would get (only the first GET)');
});

t.test('a refused upload trickled after its answer is cut at proxy.timeouts.request', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts = { connect: '1s', response: '5s', request: '1s' }; });
  const c = await socketTo(w.port);
  c.s.write('PUT /items/1/blob HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nx');
  const drip = setInterval(() => { if (!c.s.destroyed) c.s.write('x'); }, 300);
  t.teardown(() => clearInterval(drip));
  // A bounded wait: the request limit is 1 s; a client dripping every 300 ms kept it open for good.
  const first = await Promise.race([c.closed.then(() => 'cut'), new Promise((r) => setTimeout(() => r('still open'), 3_000))]);
  t.same(statuses(c.text()), [401], 'refused at once');
  t.equal(first, 'cut', 'then cut within about the limit (it stayed open as long as the client dripped)');
});

t.test('a WebSocket handshake pipelined behind a request still being answered closes the connection: nothing can be answered in order', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => { req.resume(); setTimeout(() => { res.writeHead(200); res.end('ok'); }, 300); };
  const c = await socketTo(w.port);
  c.s.write('GET /status HTTP/1.1\r\nHost: a\r\n\r\nGET /items/1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  await c.closed;
  t.same(statuses(c.text()), [], 'no answer out of order (the 401 for the handshake went out first, read as the answer to /status)');
});

t.test('after a flood cut, nothing else read with it is decided', async (t) => {
  const decided: string[] = [];
  const counting: Observer = { begin: (ctx) => ({ ...noopObserver.begin(ctx), decided: () => { decided.push(ctx.req.url ?? ''); } }) };
  const w = await world(t, () => {}, { observer: counting });
  w.up.handler = (req, res) => { req.resume(); setTimeout(() => { res.writeHead(200); res.end('ok'); }, 200); };
  const c = await socketTo(w.port);
  const post = 'POST /items HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx';
  c.s.write(`GET /status HTTP/1.1\r\nHost: a\r\n\r\n${post}${post}${'GET /status?after HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(3)}`);
  await c.closed;
  await new Promise((r) => setTimeout(r, 300));
  t.same(decided, ['/status'], 'only the first, started before the cut (the three after it were decided too)');
});

/** A head Node's parser refuses (a header line without a colon). */
const MALFORMED = 'GET /items/2 HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n';

t.test('a whole request with bytes behind it that are no request: it is answered as itself, once, and the connection ends', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  // A GET: no body, so the fault cannot be its own.
  let c = await socketTo(w.port);
  c.s.write(`GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n\r\n` + MALFORMED);
  await c.closed;
  t.same(statuses(c.text()), [200], 'its own answer, and no other');
  t.notMatch(c.text(), /could not be parsed/, 'not refused for a body it never had');
  t.match(c.text(), /\r\nconnection: close\r\n/i, 'said to close: nothing behind it will be answered');
  t.equal(w.up.seen.length, 1);
  // A POST whose token is cached: decided, and sent upstream, before the parser reached the bad head.
  await w.call('GET', '/items/0', { token: tok });
  const before = w.up.seen.length;
  const body = '{"a":1}';
  c = await socketTo(w.port);
  c.s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}` + MALFORMED);
  await c.closed;
  t.equal(w.up.seen.length - before, 1, 'sent upstream once');
  t.same(statuses(c.text()), [200], 'and its client gets the upstream\'s answer (it was cut, unanswered)');
});
