// The files driftguard reads while it serves (the rules file at each reload, the key set,
// revocation list and admin credential files the rules name) are read synchronously, on the
// thread that serves requests. A named pipe put in a file's place held that thread in open(2)
// for good (every request and probe unanswered, nothing logged), and a rules file too large for
// the heap ended the process (V8's out-of-memory abort) instead of being refused.

import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { testKey, jwks } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules } from '../support/driftguard.ts';
import { cli, runDriftguard } from '../support/subprocess.ts';

const skip = spawnSync('mkfifo', ['--version']).status === 0 ? false : 'needs mkfifo';
const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
t.teardown(async () => { await up.close(); await keys.close(); });

/** A named pipe at `path`, with no writer. */
function fifo(path: string): string {
  execFileSync('mkfifo', [path]);
  return path;
}

t.test('the rules file replaced by a named pipe: the reload is refused, naming it, and the sidecar serves on', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-fifo-'));
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, stringify(baseRules(up.origin, keys.url)));
  const dg = await runDriftguard(file, [], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  renameSync(fifo(join(dir, 'next.yaml')), file);
  const reload = await fetch(`${dg.admin}/reload`, { method: 'POST', signal: AbortSignal.timeout(10_000) });
  t.equal(reload.status, 422, 'the reload is refused');
  t.match((await reload.json() as { error: string }).error, /rules\.yaml: \(top level\): is not a regular file \(a named pipe/);
  const health = await fetch(`${dg.admin}/healthz`, { signal: AbortSignal.timeout(10_000) });
  t.equal(health.status, 200, 'the admin listener answers');
  const res = await fetch(`${dg.url}/status`, { signal: AbortSignal.timeout(10_000) });
  await res.text();
  t.not(res.status, 502, 'and traffic is decided');
});

t.test('a named pipe where the rules name a file: check (and so run) refuses it at its field, without waiting for a writer', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-fifo-'));
  const cases: [string, (r: Record<string, any>) => void, RegExp][] = [
    ['revocation.adminCredentialFile', (r) => { r.revocation = { adminCredentialFile: fifo(join(dir, 'admin-credentials')) }; }, /revocation\.adminCredentialFile: cannot read .*admin-credentials: not a regular file/],
    ['jwks.file', (r) => { r.identity.issuers[0].jwks = { file: fifo(join(dir, 'keys.json')) }; }, /jwks(\.file)?: .*keys\.json: not a regular file/],
    ['revocation.file', (r) => { r.revocation = { file: fifo(join(dir, 'revoked.yaml')) }; }, /revoked\.yaml.*not a regular file/],
  ];
  for (const [name, edit, message] of cases) {
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, stringify(baseRules(up.origin, keys.url, edit)));
    // cli() gives up on a run after 20 s: a read waiting for a writer would end the test so.
    const r = await cli(['check', file]);
    t.equal(r.code, 1, `${name}: refused`);
    t.match(r.stderr, message, `${name}: names the field and the file`);
  }
});

t.test('check still reads a rules file given as a pipe (once), as from a shell', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-fifo-'));
  const path = fifo(join(dir, 'rules.yaml'));
  const source = join(dir, 'source.yaml');
  writeFileSync(source, stringify(baseRules(up.origin, keys.url)));
  // The writer waits in its open until check opens the pipe to read it.
  const writer = spawn('sh', ['-c', `cat "${source}" > "${path}"`], { stdio: 'ignore' });
  t.teardown(() => writer.kill());
  const r = await cli(['check', path]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /rules\.yaml: valid/);
});

t.test('a rules file too large for the heap is refused before it is parsed: a reload is rejected and the sidecar serves on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-big-'));
  const file = join(dir, 'rules.yaml');
  const rules = baseRules(up.origin, keys.url);
  writeFileSync(file, stringify(rules));
  // The chart's heap: a file of a few MiB took V8 out of it while parsing, and the process died.
  const dg = await runDriftguard(file, [], { OTEL_TRACES_EXPORTER: 'none', NODE_OPTIONS: '--max-old-space-size=112 --max-semi-space-size=4' });
  t.teardown(() => dg.kill());
  const big = structuredClone(rules);
  for (let i = 0; i < 30_000; i++) big.consumers.registry.push({ subject: `spiffe://test.local/ns/team${i}/sa/agent-number-${i}`, kind: 'automation', owner: `team-${i}` });
  writeFileSync(file + '.tmp', stringify(big));
  renameSync(file + '.tmp', file);
  const reload = await fetch(`${dg.admin}/reload`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
  t.equal(reload.status, 422, 'the reload is refused');
  t.match((await reload.json() as { error: string }).error, /rules\.yaml: \(top level\): the rules file is \d+ KiB: loading it takes about \d+ MiB of heap, and \d+ of the heap's \d+ MiB are free; make the file smaller, or raise the heap/);
  const health = await fetch(`${dg.admin}/healthz`);
  t.equal(health.status, 200, 'the sidecar serves on');
  // And `check` under the same heap says the same, rather than dying of it.
  const r = await cli(['check', file], { env: { NODE_OPTIONS: '--max-old-space-size=112 --max-semi-space-size=4' } });
  t.equal(r.code, 1);
  t.match(r.stderr, /the rules file is \d+ KiB: loading it takes about/);
});

t.test('a rules file that fits is loaded though the heap holds garbage not collected yet: it is weighed again after a collection', async (t) => {
  // Weighed against the used heap alone, a 650 KiB file was refused on a busy pod ("32 of the
  // heap's 124 MiB are free") that had room once its garbage was collected.
  const child = spawnSync(process.execPath, ['--max-old-space-size=112', '--max-semi-space-size=4', new URL('../rules/heap-garbage-child.ts', import.meta.url).pathname], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  t.equal(child.status, 0, child.stderr);
  t.equal(child.stdout.trim(), 'loaded');
});
