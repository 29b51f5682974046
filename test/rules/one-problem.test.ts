// One problem per field in the lifecycle sections: a duration refused (too long, 0, not a
// duration) is not refused again by its field's own bound ("must be at least 1s").
import t from 'tap';
import { loadRules, RulesError } from '../../proxy/rules/load.ts';
import '../../proxy/lifecycle/config.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';

const cases: [string, (r: Record<string, any>) => void, string][] = [
  ['revocation.interval: 30d', (r) => { r.revocation = { interval: '30d' }; }, 'revocation.interval'],
  ['revocation.interval: 0s', (r) => { r.revocation = { interval: '0s' }; }, 'revocation.interval'],
  ['credentials.maxTokenLifetime.low: 73000d', (r) => { r.credentials = { maxTokenLifetime: { low: '73000d' } }; }, 'credentials.maxTokenLifetime.low'],
  ['credentials.maxTokenLifetime.low: PT', (r) => { r.credentials = { maxTokenLifetime: { low: 'PT' } }; }, 'credentials.maxTokenLifetime.low'],
];
for (const [what, patch, field] of cases) {
  t.test(what, async (t) => {
    let problems: readonly { field: string; message: string }[] = [];
    try { loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', patch))); } catch (e) { if (e instanceof RulesError) problems = e.problems; else throw e; }
    const mine = problems.filter((p) => p.field === field);
    t.equal(mine.length, 1, `one problem at ${field} (got: ${mine.map((p) => p.message).join(' | ')})`);
  });
}
