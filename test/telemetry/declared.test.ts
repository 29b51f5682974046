// The contract version a caller declares is in the record of its call even when a check before
// the contract check refused it (scopes, here): a responder reading `changedIn` sees the other
// side of the comparison too. Read as the contract check reads it, not judged.

import t from 'tap';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, AGENT } from '../support/driftguard.ts';
import { startWithTelemetry } from './support.ts';

t.test('a call refused before the contract check still records the contract version its token declares', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => { r.telemetry = { traces: { exporter: 'none' }, decisionLog: { allowSampleRate: 1 } }; }));
  t.teardown(async () => { await up.close(); await keys.close(); });
  const call = async (contract: string | undefined, headers: Record<string, string> = {}) => {
    const tok = await token({ key, sub: AGENT, scope: 'items.read', ...(contract ? { contract } : {}) });
    const res = await fetch(`${dg.url}/payments`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'idempotency-key': 'k', ...headers }, body: '{}' });
    await res.text();
    return res.status;
  };
  t.equal(await call('2026-06'), 403, 'refused for its scopes (before the contract check)');
  t.equal(await call(undefined, { 'contract-version': '2026-01' }), 403, 'the header declares it');
  t.equal(await call('2026-06', { 'contract-version': '2026-01' }), 403, 'claim and header disagree');
  t.equal(await call('1999-01'), 403, 'no published version');
  const lines = (await dg.stop()).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(lines.map((l) => [l.reason, l.declaredContract]), [
    ['insufficient-scope', '2026-06'], ['insufficient-scope', '2026-01'], ['insufficient-scope', undefined], ['insufficient-scope', undefined],
  ], 'the declared version where there is one to read, and none where the contract check would have refused it');
  t.ok(lines.every((l) => l.changedIn === '2026-09'), 'beside the version that changed the operation');
});
