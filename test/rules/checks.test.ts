// Rules checks of proxy/rules/load.ts that the malformed-rules table did not reach, one case
// each: each must stop the load with a problem at its own field.

import t from 'tap';
import { loadRules, RulesError, type RulesProblem } from '../../proxy/rules/load.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';

function problems(patch: (r: Record<string, any>) => void): readonly RulesProblem[] {
  try { loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', patch))); } catch (err) { if (err instanceof RulesError) return err.problems; throw err; }
  return [];
}

const spire = (issuer: string) => ({ issuer, profile: 'spiffe', trustDomain: 'prod.example', audiences: ['a'], algorithms: ['ES256'], jwks: { url: 'https://spire.example/keys' } });
const cases: [string, (r: Record<string, any>) => void, RegExp, RegExp][] = [
  ['identity.maxTokenLifetime under a second', (r) => { r.identity.maxTokenLifetime = { automation: '500ms' }; }, /^identity\.maxTokenLifetime\.automation$/, /less than 1s/],
  ['an issuer listed twice', (r) => { r.identity.issuers.push(structuredClone(r.identity.issuers[0])); }, /^identity\.issuers\[1\]\.issuer$/, /listed twice/],
  ['a trust domain served by two issuers', (r) => { r.identity.issuers.push(spire('https://spire-a'), spire('https://spire-b')); }, /^identity\.issuers\[2\]\.trustDomain$/, /already identity\.issuers\[1\]/],
  ['a sunset before its since', (r) => { r.contract.operations.find((o: any) => o.id === 'getItem').deprecated = { since: '2026-06-01', sunset: '2026-01-01' }; }, /deprecated\.sunset$/, /sunset is before since/],
  ['an operation that replaces itself', (r) => { r.contract.operations.find((o: any) => o.id === 'getItem').deprecated = { since: '2026-01-01', replacement: 'getItem' }; }, /deprecated\.replacement$/, /cannot replace itself/],
  ['a consumer subject listed twice', (r) => { r.consumers.registry.push(structuredClone(r.consumers.registry[0])); }, /^consumers\.registry\[\d+\]\.subject$/, /listed twice/],
];
for (const [what, patch, field, message] of cases) {
  t.test(what, async (t) => {
    const found = problems(patch);
    const hit = found.find((p) => field.test(p.field));
    t.ok(hit, `a problem at ${field} (got ${found.map((p) => `${p.field}: ${p.message}`).join('; ') || 'none: the rules loaded'})`);
    t.match(hit?.message, message);
  });
}
