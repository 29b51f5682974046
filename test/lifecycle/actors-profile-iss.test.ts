// The other direction: an act level whose iss is a trusted spiffe (or kubernetes) issuer that
// can never vouch for the subject it names is a level nobody vouches for: the agent quarantined
// or revoked as ["<token issuer>","agent-x"] is held there too.
import t from 'tap';
import { world, startLifecycle, bearer, trustAlso, monitorsOnly, withSpire, SPIRE } from './support.ts';
import { HUMAN } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, baseRules } from '../support/driftguard.ts';
import { actorIssuers } from '../../proxy/checks/consumers.ts';
import { actChain } from '../../proxy/identity/act.ts';

const X = 'agent-x';
const status = async (res: Response) => { const text = await res.text(); return `${res.status}${res.status === 200 ? '' : ' ' + JSON.parse(text).code}`; };

for (const kind of ['quarantine', 'revocation'] as const)
t.test(`agent-x (${kind} as ["ISSUER","agent-x"]) named under the spiffe issuer's iss`, async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    withSpire(r);
    if (kind === 'quarantine') r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '5m' } });
    else r.revocation = { mode: 'enforce' };
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  if (kind === 'quarantine') {
    for (let i = 0; i < 2; i++) await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: X, scope: '' })) }));
    const q = await (await fetch(`${dg.admin}/quarantine`)).json() as any;
    t.comment('quarantined ' + JSON.stringify(q.quarantined.map((x: any) => x.subject)));
  } else {
    const res = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'subject', value: JSON.stringify([ISSUER, X]), reason: 'r' }) });
    t.equal(res.status, 201); await res.text();
  }
  const plain = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: X } } })) }));
  const untrusted = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: X, iss: 'https://attacker.example' } } })) }));
  const spire = await status(await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: X, iss: SPIRE } } })) }));
  t.comment(`act {X} -> ${plain}; act {X, iss attacker} -> ${untrusted}; act {X, iss SPIRE (trusted, cannot vouch for "agent-x")} -> ${spire}`);
  t.not(plain, '200'); t.not(untrusted, '200');
  t.not(spire, '200', 'the spiffe issuer cannot vouch for agent-x: nobody vouches, the token issuer\'s agent-x is weighed');
});

t.test('unit: a kubernetes issuer named as the iss of a non-service-account actor', async (t) => {
  const K = 'https://kubernetes.default.svc.cluster.local';
  const rules = loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks', (r) => {
    r.identity.issuers.push({ ...structuredClone(r.identity.issuers[0]), issuer: K, profile: 'kubernetes', algorithms: ['ES256'] });
    for (const c of r.consumers.registry) c.issuer = ISSUER;
  })));
  const weighed = actorIssuers(rules, { issuer: ISSUER, act: actChain({ act: { sub: X, iss: K } })! }, X, 0);
  t.comment('weighed ' + JSON.stringify(weighed));
  t.ok(weighed.includes(ISSUER), 'the token issuer\'s agent-x is weighed');
});
