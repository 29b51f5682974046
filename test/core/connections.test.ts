// How many connections and header lines a client gets: each connection whose head is still
// arriving holds heap, so the traffic listener holds proxy.clientConnections at most (the
// admin and probe listeners ADMIN_MAX_CONNECTIONS), one more is closed unanswered and
// counted, and a request has at most MAX_HEADER_LINES header lines. Real driftguards
// (in-process, and one subprocess under the chart's heap limits), raw sockets on loopback.

import t from 'tap';
import { connect, type Socket, type Server as NetServer } from 'node:net';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, writeRules, AGENT } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';
import { raw, get } from '../support/raw.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { ADMIN_MAX_CONNECTIONS, SILENT_MS } from '../../proxy/admin/server.ts';
import { MAX_HEADER_LINES } from '../../proxy/lib/incoming.ts';
import { startWithTelemetry } from '../telemetry/support.ts';
import { parsePrometheus, sample } from '../telemetry/prometheus.ts';
import { matchEach } from '../support/lists.ts';

const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
t.teardown(async () => { await up.close(); await keys.close(); });

interface Conn { readonly s: Socket; readonly text: () => string; readonly closed: Promise<void> }

/** A connection that has sent `bytes` (a head not finished, say) and reads what comes back. */
async function open(port: number, bytes = 'GET /status HTTP/1.1\r\nHost: a\r\n'): Promise<Conn> {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => {});
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  await new Promise((r) => s.once('connect', r));
  s.write(bytes);
  return { s, text: () => Buffer.concat(chunks).toString('latin1'), closed };
}

/** Wait until `server` holds no connection (it has read every close): 10 s at most. */
async function noConnections(server: NetServer): Promise<boolean> {
  const count = () => new Promise<number>((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
  for (const end = Date.now() + 10_000; Date.now() < end;) {
    if (await count() === 0) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return await count() === 0;
}

/** Whether `c` is closed within `ms` (false: still open). */
const closedWithin = (c: Conn, ms: number) => Promise.race([c.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

t.test('the traffic listener holds proxy.clientConnections at most: one more is closed unanswered, counted, and said once a minute', async (t) => {
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => { r.proxy.clientConnections = 3; }));
  t.teardown(() => dg.stop());
  const port = Number(new URL(dg.url).port);
  const held = [await open(port), await open(port), await open(port)];
  const over = await open(port);
  t.ok(await closedWithin(over, 2_000), 'the fourth connection is closed');
  t.equal(over.text(), '', 'unanswered');
  const another = await open(port);
  t.ok(await closedWithin(another, 2_000), 'and the fifth');
  for (const c of held) t.notOk(await closedWithin(c, 0), 'the three held stay open');
  const m = parsePrometheus(await (await fetch(dg.admin + '/metrics')).text());
  t.equal(sample(m, 'driftguard_connections_dropped_total', { listener: 'traffic', cause: 'connection-limit' }), 2, 'both counted');
  const said = dg.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === 'connections refused: the listener holds as many as it may');
  matchEach(t, said, [{ level: 'warn', listener: 'traffic', connections: 1, limit: 3 }], 'one warn line for the minute, not one per connection');
  t.equal(said.length, 1, 'only one');
  for (const c of held) c.s.destroy();
  await Promise.all(held.map((c) => c.closed));
  // The server counts a connection gone once it has read its close: waited for (100 ms were not
  // always enough on a busy machine, and the next connection was still over the limit).
  t.ok(await noConnections(dg.dg.traffic), 'the server has seen the three close');
  t.equal((await fetch(dg.url + '/status')).status, 200, 'a connection is served once there is room');
});

t.test('a reload changes the limit for the connections that arrive next', async (t) => {
  const rules = baseRules(up.origin, keys.url, (r) => { r.proxy.clientConnections = 1; });
  const dg = await startWithTelemetry(rules);
  t.teardown(() => dg.stop());
  const port = Number(new URL(dg.url).port);
  const first = await open(port);
  t.ok(await closedWithin(await open(port), 2_000), 'a second connection is closed at 1');
  rules.proxy.clientConnections = 2;
  await dg.dg.swap(loadRules(writeRules(rules)));
  const second = await open(port);
  t.notOk(await closedWithin(second, 300), 'a second is held at 2');
  first.s.destroy();
  second.s.destroy();
});

t.test('the admin listener holds ADMIN_MAX_CONNECTIONS at most, and is counted apart', async (t) => {
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url));
  t.teardown(() => dg.stop());
  const port = Number(new URL(dg.admin).port);
  const held: Conn[] = [];
  for (let i = 0; i < ADMIN_MAX_CONNECTIONS; i++) held.push(await open(port));
  const over = await open(port);
  t.ok(await closedWithin(over, 2_000), 'one more than the limit is closed');
  for (const c of held) c.s.destroy();
  await Promise.all(held.map((c) => c.closed));
  // Room for the metrics request: the server has seen them close (100 ms were not always enough).
  t.ok(await noConnections(dg.dg.admin), 'the server has seen them close');
  const m = parsePrometheus(await (await fetch(dg.admin + '/metrics')).text());
  t.equal(sample(m, 'driftguard_connections_dropped_total', { listener: 'admin', cause: 'connection-limit' }), 1);
  t.equal(sample(m, 'driftguard_connections_dropped_total', { listener: 'traffic', cause: 'connection-limit' }), undefined, 'the traffic listener dropped none');
});

t.test('connections to the probe listener that send nothing are closed after SILENT_MS, and the kubelet gets in again', async (t) => {
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => { r.proxy.probes = '127.0.0.1:0'; }));
  t.teardown(() => dg.stop());
  const probes = dg.dg.probes!;
  const port = (probes.address() as { port: number }).port;
  const silent: Conn[] = [];
  // Before the first is opened: none can be closed as silent sooner than SILENT_MS after it
  // (a timer never fires early), however long opening them takes on a busy machine.
  const opened = Date.now();
  for (let i = 0; i < ADMIN_MAX_CONNECTIONS; i++) silent.push(await open(port, ''));
  const connections = () => new Promise<number>((r) => probes.getConnections((_e, n) => r(n)));
  for (let i = 0; i < 50 && await connections() < ADMIN_MAX_CONNECTIONS; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.status, () => 0), 0, 'control: while they are held, the kubelet is refused (as it was for good)');
  await Promise.all(silent.map((c) => c.closed));
  const after = Date.now() - opened;
  t.ok(after >= SILENT_MS - 20, `closed once silent for SILENT_MS, not sooner (${after} ms after the first was opened)`);
  t.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
});

t.test(`a request has ${MAX_HEADER_LINES} header lines at most: one with more is refused as too large`, async (t) => {
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url));
  t.teardown(() => dg.stop());
  const port = Number(new URL(dg.url).port);
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const pad = (n: number) => Array.from({ length: n }, (_, i) => `X-Pad-${i}: ${i}`);
  const seen = up.seen.length;
  // Host, Authorization and Connection are three of them.
  t.equal((await raw(port, get('/items/1', [`Authorization: Bearer ${tok}`, ...pad(MAX_HEADER_LINES - 3)]))).status, 200, `${MAX_HEADER_LINES} lines: served`);
  const over = await raw(port, get('/items/1', [`Authorization: Bearer ${tok}`, ...pad(MAX_HEADER_LINES - 2)]));
  t.equal(over.status, 431);
  t.equal(over.json().reason, 'headers-too-large');
  t.match(over.json().detail, `more than ${MAX_HEADER_LINES} header lines`);
  t.equal(up.seen.length, seen + 1, 'only the first reached the upstream');
});

t.test('thousands of unfinished heads do not run the chart\'s heap out: the process stays up and serves', async (t) => {
  // The chart's limits, as the sidecar runs: before the limits, about 4,700 such connections
  // killed the process (JavaScript heap out of memory) within seconds.
  const values = parse(readFileSync(new URL('../../charts/driftguard/values.yaml', import.meta.url), 'utf8')) as { sidecar: { nodeOptions: string } };
  const file = writeRules(baseRules(up.origin, keys.url, (r) => { r.proxy.listen = '127.0.0.1:0'; r.proxy.admin = '127.0.0.1:0'; }));
  const dg = await runDriftguard(file, [], { NODE_OPTIONS: values.sidecar.nodeOptions });
  t.teardown(() => dg.kill());
  const port = Number(new URL(dg.url).port);
  // 15 KiB of short header lines, each a string of its own once parsed: the most heap a head holds.
  const head = 'GET /status HTTP/1.1\r\nHost: a\r\n' + Array.from({ length: 2_700 }, (_, i) => `${String.fromCharCode(97 + i % 26)}${String.fromCharCode(97 + Math.floor(i / 26) % 26)}:c\r\n`).join('');
  const conns: Socket[] = [];
  for (let i = 0; i < 6_000; i++) {
    const s = connect(port, '127.0.0.1', () => { s.write(head); });
    s.on('error', () => {});
    conns.push(s);
    if (i % 500 === 499) await new Promise((r) => setTimeout(r, 50));
  }
  t.teardown(() => { for (const s of conns) s.destroy(); });
  await new Promise((r) => setTimeout(r, 3_000));
  t.equal(dg.child.exitCode, null, 'still running');
  t.equal((await fetch(dg.admin + '/healthz')).status, 200, 'and answering');
  t.ok(dg.lines.some((l) => l.msg === 'connections refused: the listener holds as many as it may'), 'the refusals were said');
  t.notMatch(dg.output(), /heap out of memory/);
});
