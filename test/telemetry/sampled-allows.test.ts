// telemetry.decisionLog.allowSampleRate below 1 samples allows, but never an allow whose forward
// failed or whose answer was cut: that line is where an incident's trail starts.

import t from 'tap';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, AGENT } from '../support/driftguard.ts';
import { startWithTelemetry } from './support.ts';

t.test('at allowSampleRate 0, a failed forward and a cut answer are logged, a whole answer is not', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  up.handler = (req, res) => {
    if (req.url === '/items/2') { req.socket.destroy(); return; }
    if (req.url === '/items/3') { res.writeHead(200, { 'content-length': '100' }); res.write('partial'); setTimeout(() => res.destroy(), 20); return; }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  };
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { allowSampleRate: 0 } };
  }));
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const call = async (path: string) => {
    const res = await fetch(dg.url + path, { headers: { authorization: `Bearer ${tok}` } });
    try { await res.text(); } catch { /* the cut answer */ }
    return res.status;
  };
  t.equal(await call('/items/1'), 200);
  t.equal(await call('/items/2'), 502, 'the upstream dropped the connection');
  t.equal(await call('/items/3'), 200, 'the head went out, the body was cut');
  // The client sees the cut as driftguard passes it on, a moment before the decision is recorded.
  // 10 s at most (100 polls of 20 ms were the machine's deadline, short on a busy one).
  for (const end = Date.now() + 10_000; Date.now() < end && ((await (await fetch(`${dg.admin}/decisions`)).json()) as { count: number }).count < 3;) await new Promise((r) => setTimeout(r, 20));
  const lines = (await dg.stop()).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(lines.map((l) => [l.path, l.decision, l.status]), [['/items/2', 'allow', 502], ['/items/3', 'allow', 200]], 'the failed and the cut, not the whole one');
  t.equal(lines[1]!.cut, 'UND_ERR_SOCKET', 'cut by the upstream (its error)');
});
