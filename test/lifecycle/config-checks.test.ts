// Load-time checks of the lifecycle sections (proxy/lifecycle/config.ts) no other test reached,
// one case each: a journal whose folder is a file, an admin credential file with no credential,
// a delegation consumer listed twice.

import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRules, RulesError, type RulesProblem } from '../../proxy/rules/load.ts';
import '../../proxy/lifecycle/config.ts';
import { baseRules, writeRules, AGENT, BOT } from '../support/driftguard.ts';

function problems(patch: (r: Record<string, any>) => void): readonly RulesProblem[] {
  try { loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks.json', patch))); } catch (err) { if (err instanceof RulesError) return err.problems; throw err; }
  return [];
}
const dir = mkdtempSync(join(tmpdir(), 'dg-review-lc-'));
writeFileSync(join(dir, 'afile'), 'x');
writeFileSync(join(dir, 'admin-empty'), '# operators\n\n');

const cases: [string, (r: Record<string, any>) => void, string, RegExp][] = [
  ['a journal whose folder is a file', (r) => { r.revocation = { journal: join(dir, 'afile', 'journal') }; }, 'revocation.journal', /is not a directory/],
  ['an admin credential file with no credential in it', (r) => { r.revocation = { adminCredentialFile: join(dir, 'admin-empty') }; }, 'revocation.adminCredentialFile', /holds no credential/],
  ['a delegation consumer listed twice: the second would replace the first\'s actors', (r) => { r.delegation = { consumers: [{ subject: AGENT, actors: [BOT] }, { subject: AGENT, actors: [] }] }; }, 'delegation.consumers[1].subject', /listed twice/],
];
for (const [what, patch, field, message] of cases) {
  t.test(what, async (t) => {
    const found = problems(patch);
    const hit = found.find((p) => p.field === field);
    t.ok(hit, `a problem at ${field} (got ${found.map((p) => `${p.field}: ${p.message}`).join('; ') || 'none: the rules loaded'})`);
    t.match(hit?.message, message);
  });
}
