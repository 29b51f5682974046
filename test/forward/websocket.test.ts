// WebSocket handshakes through driftguard, with a real WebSocket client and server (the `ws`
// package) on loopback: a handshake is decided like any request; an allowed one becomes a
// byte-for-byte tunnel to the upstream, a denied one gets its problem and never reaches the
// upstream, an upstream's refusal reaches the client as it was sent, and drain lets tunnels
// finish within the grace period and cuts them after it. Any other Upgrade (h2c) is dropped.

import t, { type Test } from 'tap';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { connect } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { world, keys, AGENT, HUMAN, ALL_SCOPES } from '../core/world.ts';
import { upstream, jwksServer, type Upstream } from '../support/servers.ts';
import { jwks, token } from '../support/keys.ts';
import { baseRules } from '../support/driftguard.ts';
import { collector, startWithTelemetry, traceparent, randomHex, KIND } from '../telemetry/support.ts';
import { parsePrometheus, sample } from '../telemetry/prometheus.ts';
import { raw } from '../support/raw.ts';
import { until } from '../lifecycle/support.ts';
import { HALF_CLOSED_MS } from '../../proxy/forward/tunnel.ts';

interface Handshake { readonly url: string; readonly headers: IncomingMessage['headers']; readonly rawHeaders: string[] }

/** A WebSocket echo server on the world's upstream: each message comes back prefixed `echo:`. */
function echoUpstream(upstream: Upstream): { handshakes: Handshake[]; refuse?: (socket: Duplex) => void; server: WebSocketServer } {
  const wss = new WebSocketServer({ noServer: true });
  const u = { handshakes: [] as Handshake[], refuse: undefined as ((socket: Duplex) => void) | undefined, server: wss };
  upstream.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    u.handshakes.push({ url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders });
    if (u.refuse) { u.refuse(socket); return; }
    wss.handleUpgrade(req, socket, head, (ws) => {
      wss.emit('connection', ws, req);
      ws.on('message', (data, isBinary) => ws.send(isBinary ? Buffer.concat([Buffer.from('echo:'), data as Buffer]) : `echo:${data.toString()}`, { binary: isBinary }));
    });
  });
  return u;
}

interface Opened { readonly ws: WebSocket; readonly headers: IncomingMessage['headers'] }
interface Refused { readonly status: number; readonly headers: IncomingMessage['headers']; readonly body: string }

/** Open a WebSocket through driftguard: the open socket and the 101's headers, or the refusal. */
function open(dg: { readonly url: string }, path: string, headers: Record<string, string> = {}): Promise<Opened | Refused> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(dg.url.replace(/^http:/, 'ws:') + path, { headers });
    let upgradeHeaders: IncomingMessage['headers'] = {};
    ws.on('upgrade', (res) => { upgradeHeaders = res.headers; });
    ws.on('open', () => resolve({ ws, headers: upgradeHeaders }));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    ws.on('error', reject);
  });
}

function next(ws: WebSocket): Promise<{ data: Buffer; binary: boolean }> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data, binary) => resolve({ data: data as Buffer, binary }));
    ws.once('close', () => reject(new Error('closed before a message')));
  });
}

/** A WebSocket handshake for /items/7 as raw bytes, with this token (none: no Authorization). */
function rawHandshake(tok?: string): string {
  return `GET /items/7 HTTP/1.1\r\nhost: x\r\n${tok ? `authorization: Bearer ${tok}\r\n` : ''}connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
}

/** driftguard with telemetry (its decision log, spans to a real collector), an echo upstream and a key server, torn down after `t`. */
async function traced(t: Test, traces: Record<string, unknown>) {
  const k = await keys();
  const up = await upstream();
  const echo = echoUpstream(up);
  const keyServer = await jwksServer(jwks(k.es));
  const otlp = await collector();
  const dg = await startWithTelemetry(baseRules(up.origin, keyServer.url, (r) => { r.telemetry = { traces: { endpoint: otlp.url, ...traces } }; }));
  t.teardown(async () => { await dg.stop(); await up.close(); await keyServer.close(); await otlp.close(); });
  return { k, echo, otlp, dg };
}

const closed = (ws: WebSocket) => new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));

t.test('an allowed handshake becomes a tunnel to the upstream, both ways', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  const tok = await w.tok();
  const o = await open(w.dg, '/items/7?watch=1', { authorization: `Bearer ${tok}`, 'driftguard-consumer': 'forged' });
  if (!('ws' in o)) return t.fail(`refused with ${o.status}: ${o.body}`);
  t.teardown(() => o.ws.terminate());
  t.equal(up.handshakes.length, 1, 'the upstream got one handshake');
  const h = up.handshakes[0]!;
  t.equal(h.url, '/items/7?watch=1', 'path and query as sent');
  t.equal(h.headers.upgrade, 'websocket', 'the upstream was asked to upgrade');
  t.match(h.headers.connection, /upgrade/i);
  t.type(h.headers['sec-websocket-key'], 'string', 'Sec-WebSocket-Key went on (end to end)');
  t.equal(h.headers['driftguard-consumer'], AGENT, 'driftguard named the consumer; the forged header was dropped');
  t.equal(h.headers['driftguard-operation'], 'getItem');
  t.equal(h.headers['driftguard-decision'], 'allow');
  t.equal(h.rawHeaders.filter((n, i) => i % 2 === 0 && n.toLowerCase() === 'upgrade').length, 1, 'one Upgrade header, not the client\'s and undici\'s');
  t.equal(o.headers.upgrade, 'websocket', 'the client got the 101 with Upgrade');
  t.type(o.headers['sec-websocket-accept'], 'string', 'and the upstream\'s Sec-WebSocket-Accept (ws checked it)');

  o.ws.send('hello');
  const text = await next(o.ws);
  t.equal(text.data.toString(), 'echo:hello', 'a text message went there and back');
  // 2 MiB each way: more than the sockets' buffers, so back-pressure is exercised.
  const big = Buffer.alloc(2 * 1024 * 1024, 0x5a);
  o.ws.send(big);
  const back = await next(o.ws);
  t.ok(back.binary, 'binary frame');
  t.equal(back.data.length, big.length + 5, 'all 2 MiB came back');
  t.ok(back.data.subarray(5).equals(big), 'byte for byte');
});

t.test('the upstream closing the WebSocket closes it for the client, with its code, and the tunnel', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  up.server.on('connection', (ws) => ws.on('message', (m) => { if (m.toString() === 'bye') ws.close(4000, 'done here'); }));
  const o = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if (!('ws' in o)) return t.fail(`refused with ${o.status}: ${o.body}`);
  const reason = new Promise<[number, string]>((resolve) => o.ws.once('close', (code, why) => resolve([code, why.toString()])));
  o.ws.send('bye');
  t.same(await reason, [4000, 'done here'], 'the close frame went through');
  t.ok(await until(() => w.dg.dg.tunnels === 0 && w.dg.dg.inFlight === 0), 'and the tunnel is gone');
});

t.test('bytes the client sends right behind its handshake reach the upstream after the 101', async (t) => {
  const w = await world(t);
  echoUpstream(w.up);
  // A masked text frame "early" (RFC 6455 §5.2), sent in the same write as the handshake:
  // driftguard holds it while it decides, then hands it on once the upstream has switched.
  const mask = Buffer.from([1, 2, 3, 4]);
  const payload = Buffer.from('early');
  const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!))]);
  const handshake = rawHandshake(await w.tok());
  const socket = connect(w.port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  let got = Buffer.alloc(0);
  const echoed = new Promise<string>((resolve, reject) => {
    socket.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      const rest = got.subarray(end + 4);
      // An unmasked server frame: 0x81, the length, the payload.
      if (rest.length >= 2 && rest.length >= 2 + rest[1]!) resolve(`${got.subarray(0, got.indexOf('\r\n')).toString()} | ${rest.subarray(2, 2 + rest[1]!).toString()}`);
    });
    socket.on('error', reject);
    setTimeout(() => reject(new Error(`no echo within 5 s; got ${JSON.stringify(got.toString('latin1'))}`)), 5_000).unref();
  });
  socket.write(Buffer.concat([Buffer.from(handshake, 'latin1'), frame]));
  t.equal(await echoed, 'HTTP/1.1 101 Switching Protocols | echo:early');
});

t.test('a warned handshake is tunneled with the deprecation headers on its 101', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  const o = await open(w.dg, '/search', { authorization: `Bearer ${await w.tok()}` });
  if (!('ws' in o)) return t.fail(`refused with ${o.status}: ${o.body}`);
  t.teardown(() => o.ws.terminate());
  t.match(o.headers.deprecation, /^@\d+$/, 'Deprecation on the 101');
  t.match(o.headers['driftguard-warning'], /deprecated/, 'driftguard-warning on the 101');
  t.equal(up.handshakes[0]?.headers['driftguard-decision'], 'warn');
});

t.test('a denied handshake gets its problem and never reaches the upstream', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  const none = await open(w.dg, '/items/7');
  if ('ws' in none) return t.fail('opened without a token');
  t.equal(none.status, 401);
  t.equal(none.headers['content-type'], 'application/problem+json');
  t.equal(none.headers['www-authenticate'], 'Bearer realm="driftguard"');
  t.equal(none.headers.connection, 'close', 'the connection closes after the problem');
  t.equal(JSON.parse(none.body).code, 'missing-credential');
  t.equal(Number(none.headers['content-length']), Buffer.byteLength(none.body), 'Content-Length is the body\'s');

  const tok = await w.tok({ scope: 'items.write' });
  const scope = await open(w.dg, '/items/7', { authorization: `Bearer ${tok}` });
  if ('ws' in scope) { scope.ws.terminate(); return t.fail('opened without the operation\'s scope'); }
  t.equal(scope.status, 403);
  t.equal(JSON.parse(scope.body).code, 'insufficient-scope');
  t.match(scope.headers['www-authenticate'], /error="insufficient_scope", scope="items.read"/);
  t.notOk(scope.body.includes(tok) || JSON.stringify(scope.headers).includes(tok), 'the token is not echoed');
  t.equal(up.handshakes.length, 0, 'the upstream saw no handshake');
  t.equal(w.up.seen.length, 0, 'nor any request');
});

t.test('in audit mode a would-deny handshake is tunneled, flagged both ways', async (t) => {
  const w = await world(t, (r) => { r.proxy.mode = 'audit'; });
  const up = echoUpstream(w.up);
  const o = await open(w.dg, '/items/7');
  if (!('ws' in o)) return t.fail(`refused with ${o.status}: ${o.body}`);
  t.teardown(() => o.ws.terminate());
  t.equal(o.headers['driftguard-warning'], 'missing-credential', 'the client sees what would have been denied');
  t.equal(up.handshakes[0]?.headers['driftguard-decision'], 'would-deny', 'and so does the upstream');
  o.ws.send('audited');
  t.equal((await next(o.ws)).data.toString(), 'echo:audited');
});

t.test('an upstream that refuses the upgrade answers the client itself', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  up.refuse = (socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 15\r\nx-upstream: no\r\ndriftguard-warning: forged\r\n\r\nno sockets here');
  const o = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if ('ws' in o) return t.fail('opened although the upstream refused');
  t.equal(o.status, 403);
  t.equal(o.body, 'no sockets here');
  t.equal(o.headers['x-upstream'], 'no', 'the upstream\'s headers');
  t.equal(o.headers['driftguard-warning'], undefined, 'but not a driftguard- header it made up');

  // Chunked: the body runs to the close, without the upstream's framing.
  up.refuse = (socket) => socket.end('HTTP/1.1 426 Upgrade Required\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n');
  const chunked = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if ('ws' in chunked) return t.fail('opened although the upstream refused');
  t.equal(chunked.status, 426);
  t.equal(chunked.body, 'firstsecond');

  // Under any other transfer coding the body would reach the client still coded: a 502, as for
  // any request.
  up.refuse = (socket) => socket.end('HTTP/1.1 403 Forbidden\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n');
  const coded = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if ('ws' in coded) return t.fail('opened although the upstream refused');
  t.equal(coded.status, 502);
  t.equal(JSON.parse(coded.body).reason, 'upstream-unavailable');
  t.match(JSON.parse(coded.body).detail, /UPSTREAM_TRANSFER_CODING/);
});

t.test('a refusal the client does not read is cut after clientIdle, which frees the upstream connection', async (t) => {
  const w = await world(t, (r) => { r.proxy.connections = 1; r.proxy.timeouts = { connect: '500ms', response: '500ms', clientIdle: '1s' }; });
  const up = echoUpstream(w.up);
  // A refusal far larger than the sockets' buffers: its writes wait for a client that never reads.
  let written = 0;
  up.refuse = (socket) => {
    socket.on('error', () => {});
    const chunk = Buffer.alloc(1 << 20, 0x61);
    socket.write(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: ${64 << 20}\r\n\r\n`);
    const more = () => { while (written < 64 << 20 && !socket.destroyed) { written += chunk.length; if (!socket.write(chunk)) { socket.once('drain', more); return; } } };
    more();
  };
  const client = connect(w.port, '127.0.0.1');
  client.on('error', () => {});
  t.teardown(() => client.destroy());
  await new Promise<void>((r) => client.once('connect', r));
  client.pause(); // reads nothing, ever
  client.write(`GET /items/7 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${await w.tok()}\r\n\r\n`);
  t.ok(await until(() => written > 0, 3000), 'the upstream is answering');
  // Held for ever, it kept the one pool connection: every later call was a 504.
  await new Promise((r) => setTimeout(r, 2500));
  const later = await w.call('GET', '/items/8', { token: await w.tok() });
  t.equal(later.status, 200, `the upstream connection was freed: ${later.text.slice(0, 120)}`);
  t.ok(written < 64 << 20, 'the refusal was cut, not sent whole');
});

t.test('an upstream that switches to another protocol than the WebSocket asked for is a 502, never a tunnel', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  let later = '';
  up.refuse = (socket) => {
    socket.on('data', (d: Buffer) => { later += d.toString('latin1'); });
    socket.on('error', () => {});
    socket.on('end', () => socket.destroy());
    socket.write('HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n');
  };
  const o = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if ('ws' in o) { o.ws.terminate(); return t.fail('tunneled an h2c switch'); }
  t.equal(o.status, 502);
  const body = JSON.parse(o.body) as { reason: string; detail: string };
  t.equal(body.reason, 'upstream-unavailable');
  t.match(body.detail, /another protocol than the WebSocket asked for \(UPSTREAM_UPGRADE_MISMATCH\)/);
  t.equal(later, '', 'nothing of the client\'s reached the upstream after its 101');
});

t.test('an upstream that cannot be reached is a 502 problem', async (t) => {
  // Port 1, where nothing listens: the upstream's own port, once closed, could be bound again by
  // another test's server before the handshake (the suite runs two files at once).
  const w = await world(t, (r) => { r.proxy.upstream = 'http://127.0.0.1:1'; });
  const o = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if ('ws' in o) return t.fail('opened with no upstream');
  t.equal(o.status, 502);
  t.equal(JSON.parse(o.body).code, 'upstream-unavailable');
});

t.test('any other Upgrade is dropped and the request served as plain HTTP/1.1', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  const tok = await w.tok();
  // Java's HttpClient offers h2c on every plain-HTTP request.
  const h2c = await raw(w.port, `GET /items/7 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`);
  t.equal(h2c.status, 200, 'answered by the upstream over HTTP/1.1');
  // A WebSocket Upgrade on a request with a body is not a handshake (RFC 6455 §4.1: GET).
  const post = await raw(w.port, `POST /items HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\nconnection: upgrade\r\nupgrade: websocket\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}`);
  t.equal(post.status, 200);
  t.equal(up.handshakes.length, 0, 'no upgrade reached the upstream');
  t.equal(w.up.seen.length, 2);
  for (const a of [h2c, post]) t.equal(a.headers.connection, 'close', 'the connection closes after the answer');
  for (const s of w.up.seen) {
    t.equal(s.headers.upgrade, undefined, `${s.method}: no Upgrade`);
    t.equal(s.headers['http2-settings'], undefined, `${s.method}: no header named in Connection`);
  }
});

t.test('a request pipelined behind a declined Upgrade is not left waiting: the connection closes after the first answer', async (t) => {
  const w = await world(t);
  echoUpstream(w.up);
  const tok = await w.tok();
  const socket = connect(w.port, '127.0.0.1');
  let got = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => { got += d; });
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  const closed = new Promise<number>((resolve) => { const t0 = Date.now(); socket.once('close', () => resolve(Date.now() - t0)); });
  // Node's parser drops what was read after a declined Upgrade's head: the second request is never answered.
  socket.write(`GET /items/7 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\nGET /items/8 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\n\r\n`);
  const after = await closed;
  t.ok(after < 2000, `closed after the first answer, not at the keep-alive timeout (${after} ms)`);
  t.match(got, /^HTTP\/1\.1 200 OK\r\n/, 'the first request answered');
  t.match(got, /\r\nconnection: close\r\n/i, 'saying the connection closes: the client sends the rest again');
});

/** A raw handshake on a socket that never closes its own side (allowHalfOpen): what it reads, and when driftguard closes. */
function halfOpenHandshake(port: number, auth?: string): { socket: ReturnType<typeof connect>; status: () => string; closed: Promise<void> } {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  let got = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => { got += d; });
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.write(rawHandshake(auth));
  return { socket, status: () => got.slice(0, Math.max(0, got.indexOf('\r\n'))), closed };
}

t.test('an answered handshake\'s connection is closed even if the client never closes its side', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  up.refuse = (socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno');
  const denied = halfOpenHandshake(w.port);
  const refused = halfOpenHandshake(w.port, await w.tok());
  t.ok(await until(() => denied.status() !== '' && refused.status() !== ''), 'both answered');
  t.equal(denied.status(), 'HTTP/1.1 401 Unauthorized');
  t.equal(refused.status(), 'HTTP/1.1 403 Forbidden');
  // Half-open, these held a file descriptor and a request in flight until the client chose to
  // close: every drain waited its whole grace for them.
  t.ok(await until(() => w.dg.dg.tunnels === 0 && w.dg.dg.inFlight === 0, 5_000), 'driftguard let go of both connections, client still there');
  // A write to a connection driftguard closed for good is refused by its end (a reset), which
  // the next write sees.
  for (let i = 0; i < 3; i++) {
    for (const s of [denied.socket, refused.socket]) if (!s.destroyed) s.write('x');
    await new Promise((r) => setTimeout(r, 100));
  }
  const within = (p: Promise<void>) => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2_000).unref())]);
  t.ok(await within(denied.closed) && await within(refused.closed), 'the connections are closed, not half-open');
});

t.test('a client that leaves during its handshake is not tunneled, and its decision says so', async (t) => {
  const { k, echo, dg } = await traced(t, {});
  let upgraded = 0;
  echo.server.on('connection', () => { upgraded++; });
  // The upstream takes a second to switch; the client leaves (FIN) before that.
  echo.refuse = (socket) => setTimeout(() => { if (!socket.destroyed) socket.end('HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n'); }, 1_000);
  const socket = connect(Number(new URL(dg.url).port), '127.0.0.1');
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  let got = '';
  socket.on('data', (d: Buffer) => { got += d.toString('latin1'); });
  const tok = await token({ key: k.es, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09' });
  socket.write(rawHandshake(tok));
  t.ok(await until(() => echo.handshakes.length === 1), 'the handshake reached the upstream');
  socket.end();
  t.ok(await until(() => dg.dg.tunnels === 0 && dg.dg.inFlight === 0, 800), 'seen at once, not when the upstream answers');
  await new Promise((r) => setTimeout(r, 1_300));
  t.equal(got, '', 'the client was sent no 101');
  t.equal(upgraded, 0, 'and the upstream opened no WebSocket');
  const log = (await dg.stop()).trim().split('\n').map((l) => JSON.parse(l));
  t.same(log.map((l) => [l.operation, l.status]), [['getItem', 0]], 'recorded with status 0: the client left before any answer');
});

t.test('more than 64 KiB sent before the 101 closes the connection', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  up.refuse = (socket) => setTimeout(() => { if (!socket.destroyed) socket.end('HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n'); }, 1_000);
  const socket = connect(w.port, '127.0.0.1');
  socket.on('error', () => {});
  t.teardown(() => socket.destroy());
  const closedSocket = new Promise<boolean>((resolve) => { socket.once('close', () => resolve(true)); setTimeout(() => resolve(false), 900).unref(); });
  socket.write(rawHandshake(await w.tok()));
  socket.write(Buffer.alloc(65 * 1024, 1));
  t.ok(await closedSocket, 'closed before the upstream answered, not held in memory');
  t.ok(await until(() => w.dg.dg.tunnels === 0 && w.dg.dg.inFlight === 0));
});

t.test('drain waits for open tunnels within the grace period and cuts them after it', async (t) => {
  const w = await world(t);
  echoUpstream(w.up);
  const first = await open(w.dg, '/items/1', { authorization: `Bearer ${await w.tok()}` });
  const second = await open(w.dg, '/items/2', { authorization: `Bearer ${await w.tok()}` });
  if (!('ws' in first) || !('ws' in second)) return t.fail('refused');
  t.equal(w.dg.dg.inFlight, 2, 'each tunnel counts as in flight');
  first.ws.close();
  await closed(first.ws);
  t.ok(await until(() => w.dg.dg.inFlight === 1), 'a closed tunnel no longer counts');
  const secondClosed = closed(second.ws);
  let drained = false;
  const draining = w.dg.dg.drain(400).then(() => { drained = true; });
  await new Promise((r) => setTimeout(r, 100));
  t.notOk(drained, 'drain waits while a tunnel is open');
  second.ws.send('still there?');
  t.equal((await next(second.ws)).data.toString(), 'echo:still there?', 'the tunnel works during the grace period');
  await draining;
  t.equal(await secondClosed, 1006, 'cut after the grace period (no close frame: driftguard does not speak WebSocket)');
  t.ok(w.logs.some((l) => l.msg === 'grace period over; cutting requests still in flight' && l.inFlight === 1), 'the cut is logged');
});

t.test('a tunnel whose client ended its half stays open while the upstream sends, and is closed HALF_CLOSED_MS after it falls silent', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  let upstreamClosed = false;
  let upstreamSocket!: Duplex;
  let sending: NodeJS.Timeout | undefined;
  // An upstream that switches protocols, goes on sending for a while after the client's end
  // (a download), then falls silent without ending its half (its socket is half-open, as an
  // HTTP server's are).
  up.refuse = (socket) => {
    upstreamSocket = socket;
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    socket.on('error', () => {});
    socket.once('close', () => { upstreamClosed = true; clearInterval(sending); });
  };
  const client = halfOpenHandshake(w.port, await w.tok());
  t.ok(await until(() => client.status() !== ''), 'answered');
  t.equal(client.status(), 'HTTP/1.1 101 Switching Protocols');
  let received = 0;
  client.socket.on('data', (d: string) => { received += d.length; });
  client.socket.end();
  const busyMs = HALF_CLOSED_MS + 1_000;
  sending = setInterval(() => { upstreamSocket.write('x'.repeat(100)); }, 500);
  await new Promise((r) => setTimeout(r, busyMs));
  clearInterval(sending);
  t.equal(w.dg.dg.tunnels, 1, 'still open after HALF_CLOSED_MS: the upstream was sending (a download after the client\'s end)');
  t.ok(received >= 100 * Math.floor(busyMs / 500) - 200, `and the client got it (${received} bytes)`);
  const silentAt = performance.now();
  t.ok(await until(() => w.dg.dg.tunnels === 0, HALF_CLOSED_MS + 5_000), 'cut once silent for HALF_CLOSED_MS (before: held for tunnelIdle, an hour)');
  t.ok(performance.now() - silentAt >= HALF_CLOSED_MS - 600, 'not sooner');
  await client.closed;
  // driftguard's end of the upstream connection is closed too: the upstream's next writes are refused.
  for (let i = 0; i < 5 && !upstreamClosed; i++) {
    upstreamSocket.write('late');
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(upstreamClosed, 'the upstream connection is closed');
});

t.test('a tunnel whose upstream ended its half still carries what the client sends, until the client ends too', async (t) => {
  const w = await world(t);
  const up = echoUpstream(w.up);
  let got = '';
  let upstreamClosed = false;
  up.refuse = (socket) => {
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    socket.once('close', () => { upstreamClosed = true; });
    // The upstream has said all it will: it ends its half at once.
    setTimeout(() => socket.end(), 100);
  };
  const client = halfOpenHandshake(w.port, await w.tok());
  let clientEnded = false;
  client.socket.once('end', () => { clientEnded = true; });
  t.ok(await until(() => client.status() !== ''), 'answered');
  t.equal(client.status(), 'HTTP/1.1 101 Switching Protocols');
  t.ok(await until(() => clientEnded), 'the upstream\'s end reached the client');
  client.socket.write('after the upstream\'s end');
  t.ok(await until(() => got.includes('after the upstream\'s end')), 'and what the client sends after it still reaches the upstream (before: the tunnel was closed at once, and it was lost)');
  t.equal(w.dg.dg.tunnels, 1, 'the tunnel is open while the client has not ended');
  client.socket.end();
  t.ok(await until(() => w.dg.dg.tunnels === 0 && upstreamClosed), 'the client\'s end closes it');
  await client.closed;
});

t.test('a tunnel silent both ways for proxy.timeouts.tunnelIdle is closed; one carrying bytes stays open', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.tunnelIdle = '400ms'; });
  echoUpstream(w.up);
  const silent = await open(w.dg, '/items/1', { authorization: `Bearer ${await w.tok()}` });
  const busy = await open(w.dg, '/items/2', { authorization: `Bearer ${await w.tok()}` });
  if (!('ws' in silent) || !('ws' in busy)) return t.fail('refused');
  const silentClosed = closed(silent.ws);
  let busyClosed = false;
  busy.ws.once('close', () => { busyClosed = true; });
  // The busy one talks every 100 ms, in turn each way: a message out, its echo back.
  const started = performance.now();
  for (let i = 0; i < 12; i++) {
    busy.ws.send(`ping ${i}`);
    t.equal((await next(busy.ws)).data.toString(), `echo:ping ${i}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(performance.now() - started > 1_200, 'the busy tunnel outlived three idle periods');
  t.notOk(busyClosed, 'and is still open');
  const cut = await Promise.race([silentClosed, new Promise<string>((r) => setTimeout(() => r('still open'), 2_000))]);
  t.equal(cut, 1006, 'the silent one was cut (no close frame: driftguard does not speak WebSocket)');
  t.ok(await until(() => w.dg.dg.tunnels === 1), 'and no longer counts as a tunnel');
  busy.ws.close();
  await closed(busy.ws);
});

t.test('a tunnel ends at its operation\'s sunset, and where a deprecation starts that blocks its consumer', async (t) => {
  // In about two seconds, on whole seconds as the rules write them: /status (public) is sunset,
  // and getItem (made high-sensitivity here) becomes deprecated, which blocks an automation.
  const soon = new Date(Math.ceil((Date.now() + 2_000) / 1000) * 1000).toISOString();
  const w = await world(t, (r) => {
    const op = (id: string) => r.contract.operations.find((o: { id: string }) => o.id === id);
    op('status').deprecated = { since: '2026-01-01', sunset: soon };
    Object.assign(op('getItem'), { sensitivity: 'high', deprecated: { since: soon } });
  });
  echoUpstream(w.up);
  const anonymous = await open(w.dg, '/status');
  const agent = await open(w.dg, '/items/1', { authorization: `Bearer ${await w.tok()}` });
  const human = await open(w.dg, '/items/2', { authorization: `Bearer ${await w.tok({ sub: HUMAN })}` });
  if (!('ws' in anonymous) || !('ws' in agent) || !('ws' in human)) return t.fail('refused');
  t.teardown(() => { anonymous.ws.terminate(); agent.ws.terminate(); human.ws.terminate(); });
  const [anonymousClosed, agentClosed] = [closed(anonymous.ws), closed(agent.ws)];
  const within = <T>(p: Promise<T>, ms: number) => Promise.race([p, new Promise<string>((r) => setTimeout(() => r('still open'), ms))]);
  // Before: the public one stayed open for good, the agent's until its token expired.
  t.equal(await within(anonymousClosed, 5_000), 1006, 'the sunset operation\'s tunnel is cut');
  t.equal(await within(agentClosed, 3_000), 1006, 'the automation\'s tunnel is cut when the deprecation that blocks it starts');
  human.ws.send('still here');
  t.equal((await next(human.ws)).data.toString(), 'echo:still here', 'a person is only warned of a deprecation: their tunnel stays');
  const again = await open(w.dg, '/status');
  t.equal('status' in again ? again.status : 101, 410, 'as a new handshake is refused');
});

t.test('close() with a tunnel open cuts it and returns, and may be called again', async (t) => {
  const w = await world(t);
  echoUpstream(w.up);
  const o = await open(w.dg, '/items/7', { authorization: `Bearer ${await w.tok()}` });
  if (!('ws' in o)) return t.fail(`refused with ${o.status}: ${o.body}`);
  const cut = closed(o.ws);
  // A server's close waits for every connection, and Node no longer tracks a tunnel's socket:
  // close() must cut it itself, or it never returns.
  let timer: NodeJS.Timeout | undefined;
  const returned = await Promise.race([
    w.dg.dg.close().then(() => true),
    new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), 5_000); }),
  ]);
  clearTimeout(timer);
  t.ok(returned, 'close() returned with the tunnel open');
  t.equal(await cut, 1006, 'the client\'s connection was cut');
  await w.dg.dg.close();
  t.pass('a second close() returns too (the world\'s teardown closes again)');
});

t.test('the handshake is traced and logged like any decision, with the status the client got, and no secret', async (t) => {
  const { k, echo, otlp, dg } = await traced(t, { serviceName: 'driftguard-test', batch: { scheduledDelay: '50ms' } });
  const tok = await token({ key: k.es, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09' });
  const traceId = randomHex(16);
  const o = await open(dg, '/items/7', { authorization: `Bearer ${tok}`, traceparent: traceparent(traceId, randomHex(8)), cookie: 'session=cookie-secret' });
  if (!('ws' in o)) return t.fail(`refused with ${o.status}: ${o.body}`);
  t.match(o.headers.traceresponse, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`), 'traceresponse on the 101');
  t.equal(echo.handshakes[0]?.headers.traceparent?.slice(0, 35), `00-${traceId}`, 'the trace went on to the upstream');
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  const client = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
  t.equal(server.attributes['http.response.status_code'], 101, 'SERVER span: the 101');
  t.equal(server.attributes['driftguard.decision'], 'allow');
  t.equal(server.attributes['driftguard.operation'], 'getItem');
  t.equal(client.attributes['http.response.status_code'], 101, 'CLIENT span: the upstream\'s 101');
  t.equal(client.parentSpanId, server.spanId);
  const gauges = async () => {
    const m = parsePrometheus(await (await fetch(dg.admin + '/metrics')).text());
    return [sample(m, 'driftguard_websocket_tunnels'), sample(m, 'driftguard_in_flight_requests')];
  };
  t.same(await gauges(), [1, 1], 'the open tunnel is counted, and in flight');
  // The span ends at the handshake: the tunnel is still open.
  o.ws.send('after the span');
  t.equal((await next(o.ws)).data.toString(), 'echo:after the span');
  o.ws.close();
  await closed(o.ws);
  t.ok(await until(async () => (await gauges())[0] === 0), 'and no longer once closed');

  const none = await open(dg, '/items/7', { traceparent: traceparent(randomHex(16), randomHex(8)) });
  if ('ws' in none) return t.fail('opened without a token');
  const log = (await dg.stop()).trim().split('\n').map((l) => JSON.parse(l));
  t.same(log.map((l) => [l.decision, l.status, l.operation]), [['allow', 101, 'getItem'], ['deny', 401, 'getItem']], 'one decision log line per handshake, with the status the client got');
  const written = JSON.stringify(log) + otlp.bodies.join('') + dg.logs.join('');
  for (const secret of [tok, tok.split('.')[2]!, 'cookie-secret']) t.notOk(written.includes(secret), 'no token or cookie in logs or spans');
});
