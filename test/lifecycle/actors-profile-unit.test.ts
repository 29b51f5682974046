// Who vouches for an act level, with loaded rules of an OAuth, a kubernetes and a spiffe issuer:
// a name only another profile may vouch for is weighed as every consumer it could be.
import t from 'tap';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, baseRules } from '../support/driftguard.ts';
import { ISSUER } from '../support/keys.ts';
import { actorIssuers, namedActorConsumers, automationActor, resolveConsumer } from '../../proxy/checks/consumers.ts';
import { actChain } from '../../proxy/identity/act.ts';

const K = 'https://kubernetes.default.svc.cluster.local';
const S = 'https://spire.example';
const rules = loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks', (r) => {
  r.identity.issuers.push({ ...structuredClone(r.identity.issuers[0]), issuer: K, profile: 'kubernetes', algorithms: ['ES256'] });
  r.identity.issuers.push({ ...structuredClone(r.identity.issuers[0]), issuer: S, profile: 'spiffe', trustDomain: 'spire.example', algorithms: ['ES256'] });
  for (const c of r.consumers.registry) c.issuer = ISSUER;
  r.consumers.unknown = 'allow';
  r.consumers.defaultKind = 'automation';
})));

for (const [sub, vouch] of [['system:serviceaccount:ai:agent', K], ['spiffe://spire.example/ns/ai/sa/agent', S]] as const) {
  t.test(sub, async (t) => {
    const cred = { issuer: ISSUER, act: actChain({ act: { sub } })! };
    const own = resolveConsumer(rules, { subject: sub, issuer: vouch })!;
    const weighed = actorIssuers(rules, cred, sub, 0);
    const keys = namedActorConsumers(rules, cred, sub, 0).map((c) => c.key);
    const consumer = resolveConsumer(rules, { subject: 'person', issuer: ISSUER })!;
    t.comment(`agent's own key ${own.key}; weighed issuers ${JSON.stringify(weighed)}; keys ${JSON.stringify(keys)}; monitored as ${JSON.stringify(automationActor(rules, consumer, cred))}`);
    t.ok(keys.includes(own.key), 'the key its own calls (and its quarantine) live under is weighed');
  });
}
