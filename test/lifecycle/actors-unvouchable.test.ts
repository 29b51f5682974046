// A registry entry no issuer can vouch for (issuer '' after loading): here a service account
// written in mixed case while a kubernetes issuer is trusted (the oauth issuer may not vouch for
// it, being a service account; the kubernetes issuer may not, its prefix is case-sensitive).
// Its declared operations still restrict a chain that names it (the entry bound to no issuer is
// among the consumers the name could be).
import t from 'tap';
import { world, startLifecycle, bearer, trustAlso } from './support.ts';
import { HUMAN } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules } from '../support/driftguard.ts';
import { namedActorConsumers } from '../../proxy/checks/consumers.ts';
import { actChain } from '../../proxy/identity/act.ts';

const K = 'https://kubernetes.default.svc.cluster.local';
const MIXED = 'System:ServiceAccount:ai:Agent';

t.test('declared operations of an entry nobody can vouch for, named in a chain', async (t) => {
  const w = await world();
  const raw = w.rules((r) => {
    trustAlso(r, K);
    r.identity.issuers[1].profile = 'kubernetes';
    r.consumers.registry.push({ subject: MIXED, kind: 'automation', owner: 'team-ai', operations: ['getItem'] });
    r.consumers.unknown = 'allow';
    r.delegation = { mode: 'enforce', unlisted: 'allow', consumers: [] };
  });
  const loaded = loadRules(writeRules(raw));
  t.comment(`registry issuer of ${MIXED}: ${JSON.stringify(loaded.consumers.registry.get(MIXED)?.issuer)}`);
  const cred = { issuer: ISSUER, act: actChain({ act: { sub: MIXED } })! };
  const weighed = namedActorConsumers(loaded, cred, MIXED, 0);
  t.comment(`consumers weighed for act {sub: ${MIXED}}: ${JSON.stringify(weighed.map((c) => [c.key, c.operations ? [...c.operations] : null]))}`);
  const dg = await startLifecycle(raw);
  t.teardown(async () => { await dg.close(); await w.close(); });
  const get = async (path: string) => { const res = await fetch(`${dg.url}${path}`, { headers: bearer(await w.token({ sub: HUMAN, claims: { act: { sub: MIXED } } })) }); const text = await res.text(); return `${res.status} ${res.status === 200 ? '' : JSON.parse(text).code}`; };
  const declared = await get('/items/1');
  const undeclared = await get('/items');
  t.comment(`getItem (declared) -> ${declared}; listItems (undeclared) -> ${undeclared}`);
  t.match(undeclared, /^403 undeclared-operation/, 'the declaration of the actor the chain names holds');
});
