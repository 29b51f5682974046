// An allowed request whose chunked body is broken before it is forwarded: the forward stage
// refuses it (400 malformed-request), and the metrics count it as what it is, a decision's
// forward-stage reason, not an upstream failure (nothing was forwarded). The real CLI as a
// subprocess, its /metrics and decision log.

import t from 'tap';
import { upstream, jwksServer } from '../support/servers.ts';
import { testKey, jwks, token } from '../support/keys.ts';
import { baseRules, writeRules, AGENT } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';
import { raw } from '../support/raw.ts';

t.test('a broken chunked body after an allow is no upstream failure', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await runDriftguard(writeRules(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'stdout', allowSampleRate: 1 } };
  })));
  t.teardown(async () => { dg.kill(); await up.close(); await keys.close(); });
  const tok = await token({ key, sub: AGENT, scope: 'items.write', contract: '2026-09' });
  const bad = await raw(Number(new URL(dg.url).port), `POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n`);
  t.equal(bad.status, 400);
  // The decision line is written out every 100 ms and comes through the child's stdout: waited
  // for (a fixed 500 ms was not always enough on a busy machine), 10 s at most.
  for (const end = Date.now() + 10_000; !dg.output().includes('"/items"') && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
  const metrics = await (await fetch(`${dg.admin}/metrics`)).text();
  // Before: driftguard_upstream_failures_total{reason="malformed-request"} 1.
  t.notMatch(metrics, /driftguard_upstream_failures_total\{reason="malformed-request"\}/, 'not an upstream failure');
  t.match(metrics, /driftguard_decisions_total\{[^}]*reason="malformed-request"[^}]*\} 1/, 'a decision with the forward stage\'s reason');
  const line = dg.output().split('\n').find((l) => l.includes('"/items"'));
  t.match(line, /"decision":"allow"/, 'the record keeps its decision');
  t.match(line, /"reason":"malformed-request"/, 'with the forward stage\'s reason');
  t.equal(up.seen.length, 0, 'nothing forwarded');
});
