// Graceful shutdown of a real subprocess: SIGTERM stops accepting, requests in flight finish
// within the grace period (a slow upstream holds them), new connections are refused, the
// process exits 0; past the grace period what still runs is cut and the process still exits.

import t, { type Test } from 'tap';
import { connect } from 'node:net';
import { request } from 'node:http';
import type { ServerResponse } from 'node:http';
import { createServer } from 'node:http';
import { upstream, listen, close } from '../support/servers.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { runDriftguard, cli } from '../support/subprocess.ts';

/** An upstream whose answers wait until the test releases them. */
async function slowUpstream() {
  const up = await upstream();
  const held: ServerResponse[] = [];
  up.handler = (req, res) => { req.resume(); held.push(res); };
  const release = () => {
    for (const res of held.splice(0)) res.writeHead(200, { 'content-type': 'application/json' }).end('{"slow":true}');
  };
  return { up, held, release };
}

/** A real OTLP/HTTP receiver (JSON encoding): the spans driftguard flushes on shutdown land here. */
async function otlpReceiver() {
  const spans: Record<string, any>[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; });
    req.on('end', () => {
      if (req.url === '/v1/traces') {
        try {
          for (const rs of JSON.parse(body).resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
        } catch { /* counted as nothing */ }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  const port = await listen(server);
  return { spans, endpoint: `http://127.0.0.1:${port}`, close: () => close(server) };
}

/** GET on a connection of its own; resolves with status, connection header and body, or the error. */
function get(url: string): Promise<{ status?: number; connection?: string; body?: string; error?: string }> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection!, body }));
      res.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

/** A keep-alive connection left idle after one answer (the first chunk of it), and its close. */
async function keptAlive(url: string, path: string): Promise<{ answer: string; closed: Promise<void> }> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1');
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const answered = new Promise<string>((resolve) => socket.once('data', (c: Buffer) => resolve(c.toString('latin1'))));
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  return { answer: await answered, closed };
}

function tryConnect(url: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(port), hostname);
    s.once('connect', () => { s.destroy(); resolve('connected'); });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

async function until(what: string, cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Rules in front of `origin` that wait a minute for its answers, with keys nobody serves (the public /status needs none). */
function slowRules(origin: string): string {
  return writeRules(baseRules(origin, 'http://127.0.0.1:9/unused', (r) => {
    r.identity.issuers[0].jwks = { url: 'http://127.0.0.1:9/unused', timeout: '200ms' };
    r.proxy.timeouts.response = '60s';
  }));
}

t.test('SIGTERM: in-flight requests complete, new connections are refused, exit 0', async (t) => {
  const slow = await slowUpstream();
  t.teardown(() => slow.up.close());
  const file = slowRules(slow.up.origin);
  const otlp = await otlpReceiver();
  t.teardown(() => otlp.close());
  // Spans are only sent on shutdown (the batch delay is a minute): what arrives was flushed.
  const dg = await runDriftguard(file, ['--grace', '10s'], {
    OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint, OTEL_BSP_SCHEDULE_DELAY: '60000',
  });
  t.teardown(() => dg.kill());

  // A keep-alive connection idle after one answer (a denial: it never reaches the upstream):
  // closed at once on SIGTERM, not held for the grace period.
  const idle = await keptAlive(dg.url, '/not-an-operation');
  t.match(idle.answer, /^HTTP\/1\.1 4\d\d /, 'one answer on the keep-alive connection');
  const idleClosed = idle.closed;

  const inFlight = [get(`${dg.url}/status`), get(`${dg.url}/status`), get(`${dg.url}/status`)];
  await until('three requests at the upstream', () => slow.held.length === 3);

  dg.child.kill('SIGTERM');
  await dg.waitFor((l) => l.msg?.startsWith('draining'));
  t.equal(await tryConnect(dg.url), 'ECONNREFUSED', 'new connections are refused');
  await idleClosed;
  t.pass('the idle keep-alive connection was closed');
  const ready = await fetch(`${dg.admin}/readyz`);
  const body = await ready.json() as any;
  t.equal(ready.status, 503, 'not ready while draining');
  t.ok(body.reasons.includes('shutting down'), 'because it is shutting down');
  t.equal(dg.child.exitCode, null, 'still running while requests are in flight');

  slow.release();
  const answers = await Promise.all(inFlight);
  for (const a of answers) {
    t.equal(a.status, 200, 'the in-flight request completed');
    t.equal(a.body, '{"slow":true}');
    t.equal(a.connection, 'close', 'and told its client to reconnect elsewhere');
  }
  t.same(await dg.exited, { code: 0, signal: null }, 'exit code 0');
  // SERVER spans (kind 2): the denial answered before SIGTERM and the three drained requests.
  t.equal(otlp.spans.filter((s) => s.kind === 2 && s.name === 'GET /status').length, 3, 'the drained requests\' spans were flushed before exit');
  t.equal(otlp.spans.filter((s) => s.kind === 2).length, 4, 'and the earlier one\'s');
  t.ok(dg.lines.some((l) => l.msg === 'stopped'));
  t.notOk(dg.lines.some((l) => l.msg?.startsWith('grace period over')), 'nothing was cut');
});

t.test('--drain-delay: after SIGTERM new connections are still served, not ready, each answer closing its connection; then the drain', async (t) => {
  const up = await upstream();
  t.teardown(() => up.close());
  const held: ServerResponse[] = [];
  up.handler = (req, res) => {
    req.resume();
    if (req.url?.includes('hold')) held.push(res);
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  };
  const dg = await runDriftguard(slowRules(up.origin), ['--grace', '10s', '--drain-delay', '3s'], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());

  // A keep-alive connection idle after one answer: closed as the stop begins (its client
  // reconnects, through the Service, to another pod), not left for the delay.
  const idle = await keptAlive(dg.url, '/status');
  t.match(idle.answer, /^HTTP\/1\.1 200 /, 'one answer on the keep-alive connection');
  const idleClosed = idle.closed;
  const inFlight = get(`${dg.url}/status?hold=1`);
  await until('the request at the upstream', () => held.length === 1);

  dg.child.kill('SIGTERM');
  const stopping = await dg.waitFor((l) => l.msg === 'stopping');
  t.match(stopping, { graceMs: 10_000, drainDelayMs: 3_000 }, 'the stop names its grace and its delay');
  await dg.waitFor((l) => l.msg?.startsWith('drain delay'));
  await idleClosed;
  t.pass('the idle keep-alive connection was closed');
  // Before the drain, a new connection (routed here before the endpoints caught up) is served.
  // (A drain line already written would mean the delay ran out before this: the test says so.)
  const during = await get(`${dg.url}/status`);
  t.notOk(dg.lines.some((l) => l.msg?.startsWith('draining')), 'still in the drain delay when that request was answered');
  t.same(during, { status: 200, connection: 'close', body: '{"ok":true}' }, 'a new connection during the delay is answered, and told to reconnect elsewhere');
  const ready = await fetch(`${dg.admin}/readyz`);
  t.equal(ready.status, 503, 'not ready during the delay');
  t.ok(((await ready.json()) as any).reasons.includes('shutting down'));

  // Then the drain, as without a delay: new connections refused, in flight finished.
  await dg.waitFor((l) => l.msg?.startsWith('draining'));
  t.equal(await tryConnect(dg.url), 'ECONNREFUSED', 'after the delay new connections are refused');
  for (const res of held.splice(0)) res.writeHead(200, { 'content-type': 'application/json' }).end('{"slow":true}');
  t.same(await inFlight, { status: 200, connection: 'close', body: '{"slow":true}' }, 'the request in flight since before the stop completed');
  t.same(await dg.exited, { code: 0, signal: null }, 'exit code 0');
  const order = dg.lines.map((l) => l.msg).filter((m) => m === 'stopping' || m?.startsWith('drain delay') || m?.startsWith('draining') || m === 'stopped');
  t.same(order.map((m) => m.split(':')[0]), ['stopping', 'drain delay', 'draining', 'stopped'], 'in that order');
});

t.test('SIGTERM with a request whose body was read in flight: it completes, is recorded, exit 0', async (t) => {
  const slow = await slowUpstream();
  t.teardown(() => slow.up.close());
  const file = slowRules(slow.up.origin);
  const dg = await runDriftguard(file, ['--grace', '10s']);
  t.teardown(() => dg.kill());
  // Node takes the socket off a request whose body it has read: the drain's close of the
  // connection after its answer read req.socket, null, and the process died (exit 1, no record).
  const withBody = new Promise<{ status?: number; error?: string }>((resolve) => {
    const req = request(`${dg.url}/status`, { method: 'GET', agent: false, headers: { 'content-length': '5' } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode! }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end('hello');
  });
  await until('the request at the upstream', () => slow.held.length === 1);
  dg.child.kill('SIGTERM');
  await dg.waitFor((l) => l.msg?.startsWith('draining'));
  slow.release();
  t.same(await withBody, { status: 200 }, 'answered');
  t.same(await dg.exited, { code: 0, signal: null }, 'exit code 0');
  const decisions = dg.output().split('\n').filter((l) => l.includes('"msg":"decision"')).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(decisions.some((l) => l.path === '/status' && l.status === 200), 'its decision recorded (the decision log, on stdout)');
  t.ok(dg.lines.some((l) => l.msg === 'stopped'));
});

t.test('a request still running past the grace period is cut, and the process still exits', async (t) => {
  const slow = await slowUpstream();
  t.teardown(() => slow.up.close());
  const file = slowRules(slow.up.origin);
  const dg = await runDriftguard(file, ['--grace', '300ms'], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());

  const stuck = get(`${dg.url}/status`);
  await until('the request at the upstream', () => slow.held.length === 1);
  dg.child.kill('SIGTERM');
  const cut = await stuck;
  t.ok(cut.error, `the client saw its request cut (${cut.error})`);
  t.same(await dg.exited, { code: 0, signal: null }, 'exited 0 on its own');
  const warning = dg.lines.find((l) => l.msg?.startsWith('grace period over'));
  t.ok(warning, 'the cut is logged');
  t.equal(warning?.inFlight, 1);
  // Cut before its answer started: status 0, as a client that left would have, and only `cut`
  // says driftguard ended it (with the upstream holding the request, perhaps acting on it).
  const line = dg.output().split('\n').filter((l) => l.includes('"msg":"decision"')).map((l) => JSON.parse(l.slice(l.indexOf('{'))) as Record<string, unknown>)[0];
  t.match(line, { decision: 'allow', status: 0, cut: 'drain' }, 'recorded as cut by the drain, not as a client that left');
  // dg.exited resolved above while the upstream still held the request (released only now): a
  // driftguard that waited for it would never have exited, and the test would time out.
  slow.release();
});

t.test('an answer the grace period cut mid-body is recorded as cut by the drain, not by the client', async (t) => {
  const up = await upstream();
  t.teardown(() => up.close());
  let started!: () => void;
  const streaming = new Promise<void>((r) => { started = r; });
  // A download that never ends: its head and first bytes go out, then it waits.
  up.handler = (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/plain' }); res.write('x'.repeat(1000)); started(); };
  const file = slowRules(up.origin);
  const dg = await runDriftguard(file, ['--grace', '300ms'], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  const download = get(`${dg.url}/status`);
  await streaming;
  await new Promise((r) => setTimeout(r, 100));
  dg.child.kill('SIGTERM');
  t.ok((await download).error, 'the client saw its download cut');
  t.same(await dg.exited, { code: 0, signal: null });
  const line = dg.output().split('\n').filter((l) => l.includes('"msg":"decision"')).map((l) => JSON.parse(l.slice(l.indexOf('{'))))[0];
  t.match(line, { status: 200, cut: 'drain' }, 'driftguard cut it (before: recorded as cut by the client, who was still reading)');
});

t.test('an answer the grace period cut that runs to the close (to HTTP/1.0, a handshake\'s) is reset, and recorded as cut by the drain', async (t) => {
  const up = await upstream();
  t.teardown(() => up.close());
  let started = 0;
  // Downloads that never end; the upstream has no WebSocket route, so it serves a handshake's GET too.
  up.handler = (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/plain' }); res.write('x'.repeat(1000)); started++; };
  const dg = await runDriftguard(slowRules(up.origin), ['--grace', '300ms'], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  const raw = (head: string) => new Promise<string>((resolve) => {
    const { hostname, port } = new URL(dg.url);
    const s = connect(Number(port), hostname);
    let how = 'a clean end';
    s.on('error', (e: NodeJS.ErrnoException) => { how = e.code ?? e.message; });
    s.on('close', () => resolve(how));
    s.resume(); // read to the end: a paused socket never sees a FIN
    s.write(head);
  });
  const old = raw('GET /status HTTP/1.0\r\nhost: x\r\n\r\n');
  const handshake = raw('GET /status HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
  await until('both answers streaming', () => started === 2);
  await new Promise((r) => setTimeout(r, 100));
  dg.child.kill('SIGTERM');
  // Before: a FIN, after which a body that runs to the close looks whole.
  t.equal(await old, 'ECONNRESET', 'HTTP/1.0: reset');
  t.equal(await handshake, 'ECONNRESET', 'the handshake\'s answer: reset');
  t.same(await dg.exited, { code: 0, signal: null });
  const lines = dg.output().split('\n').filter((l) => l.includes('"msg":"decision"')).map((l) => JSON.parse(l.slice(l.indexOf('{'))));
  t.equal(lines.length, 2, 'both recorded');
  // Before: the handshake's was recorded as a client that left, with status 0.
  for (const line of lines) t.match(line, { status: 200, cut: 'drain' }, 'cut by the drain, after the upstream\'s 200');
});

/** Rules whose start-up waits about 1.5 s for a revocation list URL: a window for signals. */
async function slowStart(t: Test): Promise<string> {
  const list = createServer((_req, res) => { setTimeout(() => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"revocations":[]}'); }, 1_500); });
  const port = await listen(list);
  t.teardown(() => { list.closeAllConnections(); return close(list); });
  return writeRules(baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/unused', (r) => {
    r.identity.issuers[0].jwks = { url: 'http://127.0.0.1:9/unused', timeout: '200ms' };
    r.revocation = { url: `http://127.0.0.1:${port}/list.json` };
  }));
}

const starting = (stderr: string) => stderr.includes('no revocation.journal');

t.test('SIGHUP during start-up is a reload once started, not the end of the process', async (t) => {
  const r = await cli(['run', '--config', await slowStart(t)], { signals: [
    { when: starting, signal: 'SIGHUP' },
    { when: (e) => e.includes('"trigger":"SIGHUP"'), signal: 'SIGTERM' },
  ] });
  t.same([r.code, r.signal], [0, null], 'exit 0 after the SIGTERM (before: killed by the SIGHUP, no log line)');
  const lines = r.stderr.trim().split('\n').map((l) => { try { return JSON.parse(l); } catch { return {}; } });
  const at = (msg: string) => lines.findIndex((l) => l.msg === msg);
  t.ok(at('signal during start-up; handled once started') >= 0, 'the early signal is logged');
  const listening = at('driftguard listening');
  const reloaded = lines.findIndex((l) => l.trigger === 'SIGHUP');
  t.ok(listening >= 0 && reloaded >= 0, 'both are logged');
  t.ok(listening < reloaded, 'and the reload ran once started');
});

t.test('SIGTERM during start-up stops gracefully once started: exit 0', async (t) => {
  const r = await cli(['run', '--config', await slowStart(t)], { signals: [{ when: starting, signal: 'SIGTERM' }] });
  t.same([r.code, r.signal], [0, null], 'exit 0 (before: killed by the signal)');
  t.match(r.stderr, '"msg":"stopped"');
})

t.test('a second stop signal during start-up exits 1 at once, as during a drain', async (t) => {
  const r = await cli(['run', '--config', await slowStart(t)], { signals: [
    { when: starting, signal: 'SIGTERM' },
    { when: (e) => e.includes('signal during start-up'), signal: 'SIGINT' },
  ] });
  // Before: every signal was held, and the process waited for its start-up whatever it was sent.
  t.same([r.code, r.signal], [1, null], 'exit 1');
  t.match(r.stderr, '"msg":"second stop signal during start-up; exiting now"');
  t.notMatch(r.stderr, '"msg":"driftguard listening"', 'before start-up had finished');
});
