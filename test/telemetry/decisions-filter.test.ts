// GET /decisions?reason= matches the decision's reason or any of its warnings (README, Recent
// decisions): a warn that carries two warnings is found by either, the one that is not its
// reason included (an operator looking for callers of a deprecated operation by
// ?reason=deprecated-operation must not miss those whose first warning was another).
import t from 'tap';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, AGENT } from '../support/driftguard.ts';
import { startWithTelemetry } from './support.ts';

t.test('a warn with two warnings is found by the second one', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    // oldSearch: deprecated (no sunset, low sensitivity) and now also changed in 2026-09.
    const op = r.contract.operations.find((o: { id: string }) => o.id === 'oldSearch');
    op.changedIn = '2026-09';
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'none' }, recent: { size: 50 } };
  }));
  t.teardown(async () => { await dg.stop(); await up.close(); await keys.close(); });
  const old = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-06' });
  const res = await fetch(dg.url + '/search', { headers: { authorization: `Bearer ${old}` } });
  await res.text();
  t.equal(res.status, 200, 'warned, forwarded');
  const all = await (await fetch(dg.admin + '/decisions')).json() as { decisions: { reason: string; warnings: string[] }[] };
  const d = all.decisions[0]!;
  t.same([...d.warnings].sort(), ['deprecated-operation', 'stale-contract'], `two warnings (reason ${d.reason})`);
  for (const reason of d.warnings) {
    const by = await (await fetch(dg.admin + `/decisions?reason=${reason}`)).json() as { count: number };
    t.equal(by.count, 1, `?reason=${reason} finds it${reason === d.reason ? ' (its own reason)' : ' (a warning that is not its reason)'}`);
  }
});
