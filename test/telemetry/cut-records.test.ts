// A forwarded request driftguard cuts before its answer started, for the client's doing, is
// recorded as cut, not as a client that left: its decision-log line is written whatever
// allowSampleRate says (a cut is where an incident's trail starts), with `cut` naming why, and
// driftguard_answers_cut_total{by="client"} counts it. Before, each was a plain allow with
// status 0 and no `cut`, sampled away. The real CLI as a subprocess, its stdout and /metrics.

import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { upstream, jwksServer, type Upstream } from '../support/servers.ts';
import { testKey, jwks, token } from '../support/keys.ts';
import { baseRules, writeRules, AGENT } from '../support/driftguard.ts';
import { runDriftguard, type Subprocess } from '../support/subprocess.ts';
import { MAX_PIPELINED } from '../../proxy/lib/pipelining.ts';

async function started(t: Test, timeouts: Record<string, string> = {}): Promise<{ dg: Subprocess; up: Upstream; tok: string; client: () => Socket }> {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await runDriftguard(writeRules(baseRules(up.origin, keys.url, (r) => {
    r.proxy.timeouts = { ...r.proxy.timeouts, ...timeouts };
    // No allow is logged: only what must be.
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'stdout', allowSampleRate: 0 } };
  })));
  t.teardown(async () => { dg.kill(); await up.close(); await keys.close(); });
  const tok = await token({ key, sub: AGENT, scope: 'items.read items.write', contract: '2026-09' });
  const client = () => { const s = connect(Number(new URL(dg.url).port), '127.0.0.1'); s.on('error', () => {}); return s; };
  return { dg, up, tok, client };
}

/** The decision line for `path`, once written (every 100 ms, through the child's stdout). */
async function lineFor(dg: Subprocess, path: string): Promise<Record<string, unknown> | undefined> {
  const find = () => dg.output().split('\n').filter((l) => l.startsWith('{') && l.includes(`"path":"${path}"`)).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.decision !== undefined);
  for (const end = Date.now() + 10_000; !find() && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
  return find();
}

const until = async (cond: () => boolean) => { for (const end = Date.now() + 5_000; !cond() && Date.now() < end;) await new Promise((r) => setTimeout(r, 10)); };

t.test('an upload whose chunked framing breaks after it reached the upstream: cut "body unparsable"', async (t) => {
  const { dg, up, tok, client } = await started(t);
  up.handler = (req) => { req.resume(); };
  const s = client();
  s.write(`PUT /items/7/blob HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
  await until(() => up.seen.length === 1);
  s.write('ZZ\r\n');
  t.match(await lineFor(dg, '/items/7/blob'), { decision: 'allow', status: 0, cut: 'body unparsable' });
  t.match(await (await fetch(`${dg.admin}/metrics`)).text(), /driftguard_answers_cut_total\{by="client"\} 1/);
  s.destroy();
});

t.test('an upload that stalls after it reached the upstream, closed at clientIdle: cut "client idle"', async (t) => {
  const { dg, up, tok, client } = await started(t, { response: '500ms', clientIdle: '1s' });
  up.handler = (req) => { req.resume(); };
  const s = client();
  s.write(`PUT /items/7/blob HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Length: 100000\r\n\r\nhello`);
  await until(() => up.seen.length === 1);
  t.match(await lineFor(dg, '/items/7/blob'), { decision: 'allow', status: 0, cut: 'client idle' });
  s.destroy();
});

t.test('a forwarded request on a connection cut as a pipelining flood: cut "pipelining flood"', async (t) => {
  const { dg, up, tok, client } = await started(t);
  let release = () => {};
  const held = new Promise<void>((r) => { release = r; });
  t.teardown(() => release());
  up.handler = (req, res) => { req.resume(); void held.then(() => { if (!res.destroyed) res.end('{}'); }); };
  const s = client();
  // A write the upstream holds, and more pipelined behind it than one connection may wait.
  s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Length: 2\r\n\r\n{}`);
  await until(() => up.seen.length === 1);
  s.write('GET /status HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(MAX_PIPELINED + 2));
  t.match(await lineFor(dg, '/items'), { decision: 'allow', status: 0, cut: 'pipelining flood' });
  t.match(await (await fetch(`${dg.admin}/metrics`)).text(), /driftguard_answers_cut_total\{by="client"\} 1/);
  s.destroy();
});

t.test('an upload trickled past proxy.timeouts.request after it reached the upstream: cut "request timeout"', async (t) => {
  const { dg, up, tok, client } = await started(t, { request: '1s' });
  up.handler = (req) => { req.resume(); };
  const s = client();
  s.write(`PUT /items/7/blob HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Length: 100000\r\n\r\nhello`);
  // A byte every 200 ms: never idle, never done.
  const trickle = setInterval(() => { if (!s.destroyed) s.write('x'); }, 200);
  t.teardown(() => clearInterval(trickle));
  await until(() => up.seen.length === 1);
  t.match(await lineFor(dg, '/items/7/blob'), { decision: 'allow', status: 0, cut: 'request timeout' });
  s.destroy();
});
