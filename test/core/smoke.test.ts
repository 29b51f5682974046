import t from 'tap';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, startTest, AGENT } from '../support/driftguard.ts';

t.test('an allowed request reaches the upstream with driftguard headers', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await startTest(baseRules(up.origin, keys.url));
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const res = await fetch(`${dg.url}/items/7?x=1`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(res.status, 200);
  await res.text();
  t.equal(up.seen.length, 1);
  t.equal(up.seen[0]!.url, '/items/7?x=1');
  t.equal(up.seen[0]!.headers['driftguard-consumer'], AGENT);
  t.equal(up.seen[0]!.headers['driftguard-operation'], 'getItem');
});
