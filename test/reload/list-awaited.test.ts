// After a reload refused for the revocation list the rules name, writing the list right beside
// the rules loads them (README, Rules hot reload: What counts as a change): whether the list
// was missing, or there with a problem (refused when the reload is prepared, checkListFile).
import t from 'tap';
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { testKey, jwks } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
t.teardown(async () => { await up.close(); await keys.close(); });

const put = (file: string, text: string) => { writeFileSync(file + '.tmp', text); renameSync(file + '.tmp', file); };
const reloadState = async (admin: string) => ((await (await fetch(`${admin}/readyz`)).json()) as { reload: Record<string, any> }).reload;
async function until(cond: () => Promise<boolean>, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 200))) if (await cond()) return true;
  return cond();
}

for (const [what, first] of [['missing', undefined], ['present with a problem', 'revocations:\n  - { kind: nonsense, value: x }\n']] as const) {
  t.test(`a revocation list file ${what} when the rules naming it arrive, then written right: the rules load`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'dg-r27-'));
    const file = join(dir, 'rules.yaml');
    const list = join(dir, 'revoked.yaml');
    put(file, stringify(baseRules(up.origin, keys.url)));
    const dg = await runDriftguard(file, [], { OTEL_TRACES_EXPORTER: 'none' });
    t.teardown(() => dg.kill());
    if (first !== undefined) put(list, first);
    put(file, stringify(baseRules(up.origin, keys.url, (r) => { r.revocation = { file: 'revoked.yaml' }; })));
    t.ok(await until(async () => (await reloadState(dg.admin)).failed >= 1, 8000), 'the reload is refused');
    t.match((await reloadState(dg.admin)).lastError, /revoked\.yaml/, 'naming the list');
    put(list, 'revocations:\n  - { kind: task, value: ticket-1, reason: done }\n');
    const loaded = await until(async () => (await reloadState(dg.admin)).succeeded >= 1, 8000);
    t.ok(loaded, `the list written right reloads the rules (reload: ${JSON.stringify(await reloadState(dg.admin))})`);
  });
}
