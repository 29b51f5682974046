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

t.test('a subject a header cannot carry as it is reaches the upstream percent-encoded, not as a 502', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  // Unknown consumers allowed: the subject comes from the token alone.
  const dg = await startTest(baseRules(up.origin, keys.url, (r) => { r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const cases: [string, string][] = [
    [AGENT, AGENT],
    ['josé@example.com', 'jos%C3%A9@example.com'],
    ['agent-€', 'agent-%E2%82%AC'],
    ['agent\nx-injected: 1', 'agent%0Ax-injected:%201'],
    [' 100% agent ', '%20100%25%20agent%20'],
    ['lone-\ud800', 'lone-%EF%BF%BD'],
  ];
  for (const [sub, sent] of cases) {
    const tok = await token({ key, sub, scope: 'items.read', contract: '2026-09' });
    const res = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
    await res.text();
    t.equal(res.status, 200, `${JSON.stringify(sub)}: forwarded`);
    const seen = up.seen.at(-1)!;
    t.equal(seen.headers['driftguard-consumer'], sent, `${JSON.stringify(sub)}: as ${sent}`);
    t.equal(seen.headers['x-injected'], undefined, 'no header of its own');
    if (!sub.includes('\ud800')) t.equal(decodeURIComponent(sent), sub, 'and decodes to the subject');
  }
});
