// Every rules file shipped in rules/ (the demo and the examples) is valid: an example that
// no longer loads is worse than none.
import t from 'tap';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadRules } from '../../proxy/rules/load.ts';

const dir = join(import.meta.dirname, '..', '..', 'rules');
const files = [join(dir, 'demo.yaml'), ...readdirSync(join(dir, 'examples')).filter((f) => f.endsWith('.yaml')).map((f) => join(dir, 'examples', f))];

t.ok(files.length >= 2, 'the demo and at least one example');
for (const file of files) {
  t.test(file.slice(dir.length + 1), async (t) => {
    const rules = loadRules(file);
    t.ok(rules.contract.operations.length > 0, 'has operations');
    t.ok(rules.identity.issuers.length > 0, 'has issuers');
  });
}

t.test('the demo\'s sunsets are decades away: what it prints (a deprecated operation warned, or refused as deprecated) stays true', async (t) => {
  // They were 2027-06-01: from then on `make demo` printed two expectations a 410 contradicted.
  const rules = loadRules(join(dir, 'demo.yaml'));
  const soon = Date.now() + 20 * 365 * 86_400_000;
  for (const op of rules.contract.operations) {
    const sunset = op.deprecated?.sunsetMs;
    if (sunset !== undefined && sunset > Date.now()) t.ok(sunset > soon, `${op.id}: sunset ${new Date(sunset).toISOString()} more than 20 years away`);
  }
});
