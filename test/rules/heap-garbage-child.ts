// Child of heap.test.ts, run under the chart's heap flags (the tap loader does not fit in them):
// a rules file of about 650 KiB, loaded once with the heap holding about 60 MiB of garbage not
// collected yet, as a sidecar under load does between major collections. Prints what happened.
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { baseRules } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';

const rules = baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks') as Record<string, any>;
for (let i = 0; i < 5000; i++) rules.contract.operations.push({ id: `op${i}`, method: 'GET', path: `/generated/path/number/${i}/with/some/length`, sensitivity: 'low', public: true });
const file = join(mkdtempSync(join(tmpdir(), 'dg-heap-')), 'rules.yaml');
writeFileSync(file, stringify(rules));
// Objects that live a while (promoted to the old space, as cached entries are), then dropped.
let keep: unknown[][] = [];
for (let round = 0; round < 14; round++) { const batch: unknown[] = []; for (let i = 0; i < 20_000; i++) batch.push({ a: 'x'.repeat(40) + i, b: [i, i + 1] }); keep.push(batch); }
keep = [];
try {
  loadRules(file);
  process.stdout.write('loaded\n');
} catch (err) {
  process.stdout.write(`refused: ${(err as Error).message}\n`);
}
