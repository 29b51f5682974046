// The reason table, the README's reason table and the code must agree: a code added to the
// table but not documented, or documented but gone, fails here.
import t from 'tap';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { REASONS, problemType, isReasonCode, type ReasonCode } from '../../proxy/decision/reasons.ts';
import { reasonTableMarkdown } from '../../proxy/decision/table.ts';

const root = join(import.meta.dirname, '..', '..');

t.test('README carries the reason table generated from proxy/decision/reasons.ts', async (t) => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  t.ok(readme.includes(reasonTableMarkdown()), 'README reason table is out of date: run `node proxy/decision/table.ts` and paste it');
  const documented = [...readme.matchAll(/^\| `([a-z-]+)` \| (\d{3}) \|/gm)].map((m) => m[1]!);
  t.same(documented.sort(), Object.keys(REASONS).sort(), 'every documented code exists, every code is documented');
});

t.test('every reason code used in the source is in the table', async (t) => {
  const used = new Set<string>();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith('.ts')) for (const m of readFileSync(p, 'utf8').matchAll(/reason: '([a-z-]+)'/g)) used.add(m[1]!);
    }
  };
  walk(join(root, 'proxy'));
  t.ok(used.size > 10, 'found the reason codes the checks use');
  for (const code of used) t.ok(isReasonCode(code), `${code} is in the reason table`);
});

t.test('statuses and problem types are well formed', async (t) => {
  for (const [code, info] of Object.entries(REASONS) as [ReasonCode, (typeof REASONS)[ReasonCode]][]) {
    t.ok(info.status >= 200 && info.status < 600, `${code} status`);
    t.match(problemType(code), /^https:\/\/driftguard\.io\/problems\/[a-z-]+$/);
    t.ok(info.title.length > 0 && info.action.length > 0, `${code} documented`);
  }
});

t.test('README carries the rules reference generated from rules/schema.json', async (t) => {
  const { rulesReferenceMarkdown } = await import('../../proxy/rules/reference.ts');
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  t.ok(readme.includes(rulesReferenceMarkdown()), 'README rules reference is out of date: run `node proxy/rules/reference.ts` and paste it');
  // One row a field: the jwks forms' shared fields (refresh, cooldown, timeout) were listed twice.
  const fields = rulesReferenceMarkdown().split('\n').slice(2).map((row) => row.split(' | ')[0]);
  t.same(fields.filter((f, i) => fields.indexOf(f) !== i), [], 'no field listed twice');
  t.match(rulesReferenceMarkdown(), '| `identity.issuers[].jwks.url` | string | one of `file`, `discovery`, `url` |', 'the forms\' keys say they are alternatives, not each required');
});
