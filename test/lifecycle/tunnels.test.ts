// A WebSocket tunnel is decided once, at its handshake. It must not outlive that decision:
// a revocation of its consumer or a quarantine closes it within a second, and it ends when
// the token it was opened with expires. Real `ws` client and server, real driftguard.

import t, { type Test } from 'tap';
import { connect } from 'node:net';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer } from 'ws';
import { AGENT, BOT, baseRules, writeRules } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { echoServer, eventStream, open, readStream, within } from '../support/tunnels.ts';
import { world, startLifecycle, bearer, monitorsOnly, until, problem } from './support.ts';

t.test('a revocation closes the consumer\'s open tunnels, and only theirs', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(baseRules(up, w.keys.url, (r) => { r.credentials = { taskBindingAt: 'never' }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const url = dg.url.replace('http', 'ws') + '/items/1';
  const agent = await open(url, await w.token());
  const bot = await open(url, await w.token({ sub: BOT }));
  t.teardown(() => { agent.ws.terminate(); bot.ws.terminate(); });
  t.equal(await agent.ask('1'), 'echo:1', 'the agent\'s tunnel works');
  const revoked = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
  t.equal(revoked.status, 201);
  await revoked.text();
  t.equal(await within(agent.closed, 3_000), 1006, 'the agent\'s tunnel is closed');
  t.equal(await bot.ask('2'), 'echo:2', 'another consumer\'s tunnel stays open');
  t.ok(dg.logs.some((l) => l.msg === 'WebSocket tunnels and answers in flight closed: their credential was revoked or their consumer quarantined' && l.tunnels === 1 && l.answers === 0), 'logged, with the count');
});

t.test('in audit mode a revocation leaves the tunnel open', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(baseRules(up, w.keys.url, (r) => { r.credentials = { taskBindingAt: 'never' }; r.revocation = { mode: 'audit' }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agent = await open(dg.url.replace('http', 'ws') + '/items/1', await w.token());
  t.teardown(() => agent.ws.terminate());
  await (await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'test' }) })).text();
  t.equal(await within(agent.closed, 1_500), 'still open');
  t.equal(await agent.ask('3'), 'echo:3');
});

t.test('under proxy.mode audit neither a revocation nor a quarantine closes a tunnel', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const rules = (mode: string) => baseRules(up, w.keys.url, (r) => {
    r.proxy.mode = mode;
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '5m' } });
  });
  const dg = await startLifecycle(rules('enforce'));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // Three enforced denials (insufficient-scope) quarantine the agent under enforce: an enforce
  // quarantine, which the sweeper would act on; then the proxy goes to audit mode.
  const weak = await w.token({ scope: 'items.read' });
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' })).text();
  t.same((await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { mode: string }[] }).quarantined.map((q) => q.mode), ['enforce'], 'the agent is quarantined, enforced');
  await dg.dg.swap(loadRules(writeRules(rules('audit'))));
  // Under audit, the quarantined agent's handshake is a would-deny, let through.
  const url = dg.url.replace('http', 'ws') + '/items/1';
  const quarantined = await open(url, await w.token());
  const revoked = await open(url, await w.token({ sub: BOT }));
  t.teardown(() => { quarantined.ws.terminate(); revoked.ws.terminate(); });
  await (await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: BOT, reason: 'test' }) })).text();
  // Before: both were cut within a second, while a new handshake of either was let through.
  t.equal(await within(Promise.race([quarantined.closed, revoked.closed]), 2_500), 'still open');
  t.equal(await within(quarantined.ask('q'), 2_000), 'echo:q');
  t.equal(await within(revoked.ask('r'), 2_000), 'echo:r');
});

t.test('a tunnel ends when the token it was opened with expires', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(baseRules(up, w.keys.url, (r) => { r.credentials = { taskBindingAt: 'never' }; r.identity.clockSkew = '0s'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agent = await open(dg.url.replace('http', 'ws') + '/items/1', await w.token({ ttl: 2 }));
  t.teardown(() => agent.ws.terminate());
  t.equal(await agent.ask('4'), 'echo:4');
  t.equal(await within(agent.closed, 4_000), 1006, 'closed at exp');
});

t.test('an event stream ends when the token it was decided with expires, as a tunnel does; a download runs on', async (t) => {
  const w = await world();
  const events = eventStream(t);
  // /items/1: server-sent events; /items/2: a long download, one chunk every 50 ms.
  w.up.handler = (req, res) => {
    if (req.url === '/items/1') { events(req, res); return; }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const tick = setInterval(() => res.write(Buffer.alloc(64)), 50);
    res.on('close', () => clearInterval(tick));
  };
  const dg = await startLifecycle(baseRules(w.up.origin, w.keys.url, (r) => { r.credentials = { taskBindingAt: 'never' }; r.identity.clockSkew = '0s'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ ttl: 2 });
  const expiresAt = JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()).exp * 1000;
  const stream = await readStream(t, `${dg.url}/items/1`, tok);
  const download = await readStream(t, `${dg.url}/items/2`, tok);
  t.teardown(() => download.stop());
  // Before: it streamed on for as long as the upstream kept it open.
  t.ok(await until(() => stream.state.ended, 4_500), 'the event stream is cut');
  t.ok(Date.now() >= expiresAt, 'not before its token\'s exp');
  t.ok(stream.state.events > 0, 'after streaming');
  const record = dg.seen.find((x) => x.ctx.req.url === '/items/1');
  t.ok(await until(() => record?.forwarded !== undefined), 'its request is done');
  t.equal(record?.forwarded?.error, 'expired', 'driftguard cut it, not the client');
  t.equal(record?.ctx.extra['cut.reason'], 'invalid-credential', 'for the reason a new request would be refused');
  t.notOk(download.state.ended, 'a download (one answer, not a channel) is not cut');
});

t.test('a quarantine closes the consumer\'s open tunnels', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(baseRules(up, w.keys.url, (r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agent = await open(dg.url.replace('http', 'ws') + '/items/1', await w.token());
  t.teardown(() => agent.ws.terminate());
  const weak = await w.token({ scope: 'items.read' });
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' })).text();
  t.equal(await within(agent.closed, 3_000), 1006, 'closed once quarantined');
});

t.test('a quarantine of an actor closes the tunnels opened through it', async (t) => {
  const w = await world();
  const up = await echoServer(t);
  const dg = await startLifecycle(baseRules(up, w.keys.url, (r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.delegation = { consumers: [{ subject: AGENT, actors: [BOT] }] };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const url = dg.url.replace('http', 'ws') + '/items/1';
  const through = await open(url, await w.token({ claims: { act: { sub: BOT } } }));
  const own = await open(url, await w.token());
  t.teardown(() => { through.ws.terminate(); own.ws.terminate(); });
  // BOT declares getItem and deleteItem only: three calls to /items quarantine it.
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items`, { headers: bearer(await w.token({ sub: BOT })) })).text();
  t.equal(await within(through.closed, 3_000), 1006, 'the tunnel BOT acts through is closed');
  t.equal(await within(own.ask('q'), 1_000), 'echo:q', 'AGENT\'s own stays open');
});

t.test('retry storm (counts: unsuccessful): a WebSocket reconnected after each 101 is healthy and never counts', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({ retryStorm: { maxRepeats: 3, window: '1m' } }); }));
  const wss = new WebSocketServer({ noServer: true });
  w.up.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => wss.handleUpgrade(req, socket, head, () => {}));
  t.teardown(async () => { wss.close(); await dg.close(); await w.close(); });
  const tok = await w.token();
  const statuses: (number | string)[] = [];
  for (let i = 0; i < 6; i++) {
    statuses.push(await new Promise((resolve) => {
      const ws = new WebSocket(dg.url.replace(/^http:/, 'ws:') + '/items/1', { headers: bearer(tok) });
      ws.on('open', () => { ws.close(); resolve(101); });
      ws.on('unexpected-response', (_q, res) => { res.resume(); resolve(res.statusCode!); });
      ws.on('error', (e) => resolve(String(e)));
    }));
  }
  t.same(statuses, [101, 101, 101, 101, 101, 101], 'six reconnects, none a retry storm (it was 429 from the fourth)');
});

t.test('a streamed answer (server-sent events) is cut within a second of its credential\'s revocation, as a tunnel is', async (t) => {
  const w = await world();
  w.up.handler = eventStream(t);
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const stream = (tok: string) => readStream(t, `${dg.url}/items/1`, tok);
  const revoked = await stream(await w.token());
  const other = await stream(await w.token({ sub: BOT }));
  await new Promise((r) => setTimeout(r, 300));
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  const end = Date.now() + 2_500;
  while (!revoked.state.ended && Date.now() < end) await new Promise((r) => setTimeout(r, 25));
  t.ok(revoked.state.ended, 'the revoked consumer\'s stream is cut (it went on streaming)');
  const record = dg.seen.find((x) => x.ctx.consumer?.subject === AGENT);
  t.ok(await until(() => record?.forwarded !== undefined), 'its request is done');
  t.equal(record?.forwarded?.error, 'revoked');
  t.equal(record?.ctx.extra['cut.reason'], 'credential-revoked', 'its record says why');
  t.notOk(other.state.ended, 'another consumer\'s stream goes on');
  t.match(dg.logs.find((l) => String(l.msg).startsWith('WebSocket tunnels and answers in flight closed')), { tunnels: 0, answers: 1 });
  await other.stop();
});

/** GET /items/1 as an event stream over a raw socket, with a WebSocket handshake's headers when `upgrade`: what arrives, and whether it ended. */
function rawStream(t: Test, url: string, tok: string, upgrade: boolean) {
  const u = new URL(url);
  const state = { events: 0, ended: false, text: '' };
  const s = connect(Number(u.port), u.hostname);
  s.on('data', (d) => { state.text += d.toString('latin1'); state.events = (state.text.match(/data:/g) ?? []).length; });
  s.on('error', () => {});
  s.on('close', () => { state.ended = true; });
  s.write(`GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nAccept: text/event-stream\r\n${upgrade ? 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' : ''}\r\n`);
  t.teardown(() => s.destroy());
  return state;
}

t.test('a stream answered to a WebSocket handshake the upstream did not switch is cut by a revocation, and at its token\'s exp, as any stream', async (t) => {
  const w = await world();
  // A server with no WebSocket route: it serves the handshake's GET as it would without it.
  w.up.handler = eventStream(t);
  const dg = await startLifecycle(w.rules((r) => { r.identity.clockSkew = '0s'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const revoked = rawStream(t, dg.url, await w.token(), true);
  const expiring = rawStream(t, dg.url, await w.token({ sub: BOT, ttl: 2 }), true);
  t.ok(await until(() => revoked.events > 0 && expiring.events > 0), 'both stream');
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  // Before: neither an open tunnel nor a streaming answer, it streamed on while a new request was refused.
  t.ok(await until(() => revoked.ended, 2_500), 'the revoked consumer\'s stream is cut');
  const record = dg.seen.find((x) => x.ctx.consumer?.subject === AGENT);
  t.ok(await until(() => record?.forwarded !== undefined), 'its handshake is done');
  t.equal(record?.forwarded?.error, 'revoked', 'cut by driftguard, not the client');
  t.equal(record?.ctx.extra['cut.reason'], 'credential-revoked');
  t.notOk(expiring.ended, 'the other consumer\'s goes on');
  t.ok(await until(() => expiring.ended, 4_000), 'until its token expires');
});

t.test('a handshake the upstream has not answered yet is refused with a problem by a revocation, and at its token\'s exp', async (t) => {
  const w = await world();
  // The upstream reads the handshake and does not answer (yet).
  w.up.handler = (req) => { req.resume(); };
  const dg = await startLifecycle(w.rules((r) => { r.identity.clockSkew = '0s'; r.proxy.timeouts.response = '10s'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const agentTok = await w.token();
  const botTok = await w.token({ sub: BOT, ttl: 2 });
  const revoked = rawStream(t, dg.url, agentTok, true);
  const expiring = rawStream(t, dg.url, botTok, true);
  t.ok(await until(() => w.up.seen.length === 2), 'both handshakes reached the upstream');
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  const problem = (text: string) => JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
  // Before: a reset, which said nothing of why, and a record with status 0.
  t.ok(await until(() => revoked.ended, 2_500), 'the revoked consumer\'s handshake is answered');
  t.match(revoked.text, /^HTTP\/1\.1 401 /, 'with the status a new request gets');
  t.match(problem(revoked.text), { reason: 'credential-revoked', detail: 'the credential was revoked while the upstream had not answered the handshake: it was not switched' });
  const record = dg.seen.find((x) => x.ctx.consumer?.subject === AGENT);
  t.match(record?.forwarded, { failure: 'credential-revoked' }, 'its record names the refusal as the forward stage\'s');
  t.notOk(expiring.ended, 'the other consumer\'s waits on');
  t.ok(await until(() => expiring.ended, 4_000), 'until its token expires');
  t.match(expiring.text, /^HTTP\/1\.1 401 /);
  t.match(problem(expiring.text), { reason: 'invalid-credential', detail: 'the credential expired while the upstream had not answered the handshake: it was not switched' });
  for (const [text, tok] of [[revoked.text, agentTok], [expiring.text, botTok]] as const) t.notOk(text.includes(tok.split('.')[2]!), 'no token in the answer');
});

t.test('a handshake withdrawn while it waited for a pool connection is recorded as never sent', async (t) => {
  const w = await world();
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { req.resume(); if (req.url === '/items/2') void held.then(() => res.end('{}')); else res.end('{}'); };
  const dg = await startLifecycle(w.rules((r) => { r.proxy.connections = 1; r.proxy.timeouts = { connect: '10s', response: '10s' }; r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({}); }));
  t.teardown(async () => { release(); await dg.close(); await w.close(); });
  const first = fetch(`${dg.url}/items/2`, { headers: bearer(await w.token()) });
  t.ok(await until(() => w.up.seen.length === 1), 'the pool\'s one connection is held');
  const waiting = rawStream(t, dg.url, await w.token({ sub: BOT }), true);
  t.ok(await until(() => dg.seen.some((x) => x.ctx.consumer?.subject === BOT && x.decision !== undefined)), 'the handshake is decided, and waits');
  await new Promise((r) => setTimeout(r, 200));
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: BOT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  t.ok(await until(() => waiting.ended, 3_000), 'answered');
  t.match(waiting.text, /^HTTP\/1\.1 401 /);
  release();
  t.equal((await first).status, 200);
  t.equal(w.up.seen.length, 1, 'the upstream never saw the handshake');
  // Before: recorded as a call that reached the upstream, with upstream time and a CLIENT span in error.
  t.match(dg.seen.find((x) => x.ctx.consumer?.subject === BOT)?.forwarded, { failure: 'credential-revoked', notSent: true });
});

t.test('under proxy.mode audit a handshake still waiting for the upstream at its token\'s exp is cut, never answered with a refusal', async (t) => {
  const w = await world();
  w.up.handler = (req) => { req.resume(); };
  const dg = await startLifecycle(w.rules((r) => { r.proxy.mode = 'audit'; r.identity.clockSkew = '0s'; r.proxy.timeouts.response = '10s'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const waiting = rawStream(t, dg.url, await w.token({ sub: BOT, ttl: 2 }), true);
  t.ok(await until(() => waiting.ended, 4_500), 'ended at its token\'s exp, as a tunnel is');
  // Before: 401 invalid-credential, a refusal audit mode never makes (a new handshake with the token is forwarded).
  t.equal(waiting.text, '', 'with no answer that claims a refusal');
});

t.test('a client that half-closes during a handshake\'s answer the upstream did not switch gets it cut with a reset, not a clean end', async (t) => {
  const w = await world();
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let n = 0;
    const pump = (): void => { while (n < 200 && !res.destroyed) { n++; if (!res.write(chunk)) { res.once('drain', pump); return; } } if (n >= 200) res.end(); };
    pump();
  };
  const dg = await startLifecycle(w.rules((r) => { r.monitors = monitorsOnly({}); r.credentials = { taskBindingAt: 'never' }; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const c = connect(Number(new URL(dg.url).port), '127.0.0.1');
  t.teardown(() => c.destroy());
  let how = 'a clean end';
  let got = 0;
  let closed = false;
  c.on('error', (e: NodeJS.ErrnoException) => { how = e.code ?? e.message; });
  c.on('close', () => { closed = true; });
  c.on('data', (d: Buffer) => { got += d.length; });
  c.pause();
  c.write(`GET /items/1 HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nauthorization: Bearer ${await w.token()}\r\n\r\n`);
  await new Promise((r) => setTimeout(r, 500)); // the answer streams; the client does not read yet
  c.end(); // done sending, still reading: a FIN ends the handshake (README)
  await new Promise((r) => setTimeout(r, 200));
  c.resume();
  t.ok(await until(() => closed, 5_000), 'closed');
  t.ok(got < 200 * 64 * 1024, 'the answer was cut short');
  t.equal(how, 'ECONNRESET', 'with a reset: a body that runs to the close cannot look whole');
});

t.test('a client that leaves during a handshake\'s answer the upstream did not switch is recorded as a client that left', async (t) => {
  const w = await world();
  w.up.handler = eventStream(t);
  const dg = await startLifecycle(w.rules());
  t.teardown(async () => { await dg.close(); await w.close(); });
  const c = connect(Number(new URL(dg.url).port), '127.0.0.1');
  c.on('error', () => {});
  c.on('data', () => c.destroy());
  c.write(`GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.token()}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
  const record = () => dg.seen.find((s) => s.ctx.req.url === '/items/1');
  t.ok(await until(() => record()?.forwarded !== undefined, 3_000), 'its handshake is done');
  // Before: `UNKNOWN`, the abort's error, counted as an upstream cut.
  t.match(record()?.forwarded, { status: 200, aborted: true, error: 'client closed' });
});

t.test('an upload still streaming to the upstream when its credential is revoked is cut there within a second', async (t) => {
  const w = await world();
  let upstreamGot = 0;
  let upstreamClosed = false;
  w.up.handler = (req) => {
    req.on('data', (c: Buffer) => { upstreamGot += c.length; });
    req.on('close', () => { upstreamClosed = true; });
  };
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({}); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ scope: 'items.write' });
  // A chunked upload (streamed, not read by the monitors) that goes on as long as it is let.
  const { request } = await import('node:http');
  const url = new URL(`${dg.url}/items/1/blob`);
  const req = request({ host: url.hostname, port: url.port, path: url.pathname, method: 'PUT', headers: { ...bearer(tok), 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } });
  req.on('error', () => {});
  const feed = setInterval(() => { if (!req.destroyed) req.write(Buffer.alloc(1024)); }, 20);
  t.teardown(() => { clearInterval(feed); req.destroy(); });
  t.ok(await until(() => upstreamGot > 4096), 'the upload streams to the upstream');
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  t.ok(await until(() => upstreamClosed, 2_500), 'the upstream\'s request is cut (it went on receiving)');
});

t.test('an answer not started to a request wholly sent is delivered after its credential\'s revocation; the next request is refused', async (t) => {
  // The upstream is acting on a request decided before the revocation: cutting its answer
  // only hides the outcome, and the client retries a write it does not know happened.
  const w = await world();
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  let arrived = false;
  // The upstream holds its answer 2.2 s and more: past the base rules' 2 s response timeout,
  // whose 504 raced the release (undici looks at its timers about every half second), and won
  // under load.
  w.up.handler = (_req, res) => { arrived = true; void held.then(() => res.end('done')); };
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({}); r.proxy.timeouts.response = '10s'; }));
  t.teardown(async () => { release(); await dg.close(); await w.close(); });
  const tok = await w.token({ scope: 'items.write' });
  const answer = fetch(`${dg.url}/items/1/blob`, { method: 'PUT', headers: { ...bearer(tok), 'content-type': 'application/octet-stream' }, body: 'blob-1' });
  t.ok(await until(() => arrived), 'the request reached the upstream');
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: AGENT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  // Two sweeps go by while the upstream is still deciding.
  await new Promise((r) => setTimeout(r, 2_200));
  release();
  const r = await answer;
  t.equal(r.status, 200);
  t.equal(await r.text(), 'done', 'the whole answer, not cut');
  const next = await fetch(`${dg.url}/items/1/blob`, { method: 'PUT', headers: { ...bearer(tok), 'content-type': 'application/octet-stream' }, body: 'blob-2' });
  await next.text();
  t.equal(next.status, 401, 'the next request is refused');
});

t.test('a request withdrawn for a quarantine placed while it waited for an upstream connection is told when to come back (Retry-After)', async (t) => {
  const w = await world();
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  let arrived = 0;
  w.up.handler = (req, res) => { arrived++; void held.then(() => res.end('{}')); };
  const dg = await startLifecycle(w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '15m' } });
    r.proxy.connections = 1; r.proxy.timeouts.connect = '10s'; r.proxy.timeouts.response = '10s';
  }));
  t.teardown(async () => { release(); await dg.close(); await w.close(); });
  const first = fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }).then((r) => r.text());
  t.ok(await until(() => arrived === 1), 'a request holds the only connection');
  const waiting = fetch(`${dg.url}/items/2`, { headers: bearer(await w.token({ sub: BOT })) });
  t.ok(await until(() => dg.seen.length === 2 && dg.seen[1]!.decision !== undefined), 'the bot\'s request is decided and waits for the pool');
  // Two refusals quarantine the bot.
  const weak = await w.token({ sub: BOT, scope: 'items.read' });
  for (let i = 0; i < 2; i++) await (await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' })).text();
  const withdrawn = await waiting;
  // Before: the 403 with no Retry-After, where every other quarantine refusal has one.
  const body = await problem(t, withdrawn, 'consumer-quarantined', 403);
  t.match(body.detail, /waited for an upstream connection: it was not sent/);
  t.ok(Number(withdrawn.headers.get('retry-after')) > 890, `Retry-After: the quarantine's seconds (${withdrawn.headers.get('retry-after')})`);
  t.equal(body.retryAfter, Number(withdrawn.headers.get('retry-after')), 'and retryAfter in the problem');
  release();
  await first;
  t.equal(arrived, 1, 'never sent');
});

t.test('an upload whose body is still arriving while it waits for an upstream connection is withdrawn with 401 when its credential is revoked, and the connection closed', async (t) => {
  const w = await world();
  const arrived: string[] = [];
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { arrived.push(req.url!); req.resume(); if (req.url === '/items/1') void held.then(() => res.end('one')); else req.on('end', () => res.end('two')); };
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({}); r.proxy.connections = 1; r.proxy.timeouts.connect = '10s'; r.proxy.timeouts.response = '10s'; }));
  t.teardown(async () => { release(); await dg.close(); await w.close(); });
  const first = fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }).then((r) => r.text());
  t.ok(await until(() => arrived.length === 1), 'a request holds the only connection');
  const s = connect(Number(new URL(dg.url).port), '127.0.0.1');
  t.teardown(() => { s.destroy(); });
  let got = '';
  let closed = false;
  s.on('data', (c: Buffer) => { got += c.toString('latin1'); });
  s.on('error', () => {});
  s.on('close', () => { closed = true; });
  await new Promise((r) => s.once('connect', r));
  // A tenth of the body: the rest never comes.
  s.write(`PUT /items/2/blob HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${await w.token({ scope: 'items.write', omit: ['jti'], claims: { jti: 'upload-1' } })}\r\nContent-Length: 10000\r\n\r\n${'x'.repeat(1000)}`);
  t.ok(await until(() => dg.seen.length === 2 && dg.seen[1]!.decision !== undefined), 'the upload is decided and waits for the pool');
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'jti', value: 'upload-1', reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  t.ok(await until(() => closed, 3_000), 'the connection is closed (the rest of the body is never read)');
  // Before: closed with no answer at all, so the client could not tell whether its write was made.
  t.match(got, /^HTTP\/1\.1 401 /, 'answered 401');
  t.match(got, /\r\nconnection: close\r\n/i, 'saying the connection closes');
  t.match(got, /waited for an upstream connection: it was not sent/);
  release();
  t.equal(await first, 'one');
  await new Promise((r) => setTimeout(r, 200));
  t.same(arrived, ['/items/1'], 'the upload never reached the upstream');
});

t.test('a request still waiting for an upstream connection when its credential is revoked is never sent', async (t) => {
  // Decided before the revocation but queued for the pool's only connection: nothing was
  // acted on, so the sweep stops it (before, it was left as "wholly sent" and went upstream
  // once the connection was free).
  const w = await world();
  const arrived: string[] = [];
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { arrived.push(req.url!); if (req.url === '/items/1') void held.then(() => res.end('one')); else res.end('two'); };
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({}); r.proxy.connections = 1; r.proxy.timeouts.connect = '10s'; r.proxy.timeouts.response = '10s'; }));
  t.teardown(async () => { release(); await dg.close(); await w.close(); });
  const first = fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }).then((r) => r.text());
  t.ok(await until(() => arrived.length === 1), 'the agent\'s request holds the only connection');
  let settled = false;
  const second = fetch(`${dg.url}/items/2`, { headers: bearer(await w.token({ sub: BOT })) })
    .then(async (r) => ({ status: r.status, body: await r.json() as Record<string, unknown> }), (e: Error) => ({ status: 0, body: { error: e.message } })).finally(() => { settled = true; });
  t.ok(await until(() => dg.seen.length === 2 && dg.seen[1]!.decision !== undefined), 'the bot\'s request is decided and waits for the pool');
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: BOT, reason: 'compromised' }) });
  t.equal(made.status, 201);
  await made.text();
  t.ok(await until(() => settled, 3_000), 'the sweep stops it');
  // Before: its connection was reset, unanswered (a client could not tell whether it was sent).
  t.match(await second, { status: 401, body: { reason: 'credential-revoked', detail: /waited for an upstream connection: it was not sent/ } }, 'told why, with nothing sent');
  const record = dg.seen.find((x) => x.ctx.consumer?.subject === BOT);
  t.match(record?.forwarded, { failure: 'credential-revoked', notSent: true }, 'recorded as refused by the forward stage, nothing sent');
  release();
  t.equal(await first, 'one', 'the request already sent gets its answer');
  // The pool's connection is free now: a request still queued would go out at once.
  await new Promise((r) => setTimeout(r, 200));
  t.same(arrived, ['/items/1'], 'the revoked consumer\'s request never reached the upstream');
  t.match(dg.logs.find((l) => String(l.msg).startsWith('WebSocket tunnels and answers in flight closed')), { tunnels: 0, answers: 1 });
});
