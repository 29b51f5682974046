// revocation.maxEntries over the list sources (proxy/lifecycle/lists.ts): a list whose
// entries, with the other sources' in force, would pass it is refused; the last good list
// stays. Such a refusal is not the list's own fault, so the list is read and counted again at
// the next interval, and ended revocations take no room. A real file, and a real HTTP list
// server that answers 304 to a matching If-None-Match.

import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListSource } from '../../proxy/lifecycle/lists.ts';
import { RevocationStore, type Revocation } from '../../proxy/lifecycle/revocations.ts';

const list = (n: number) => JSON.stringify({ revocations: Array.from({ length: n }, (_, i) => ({ kind: 'jti', value: `j${i}`, reason: 'r' })) });
const admin = (i: number, endMs = Infinity): Revocation => ({ id: `a${i}`, kind: 'subject', value: `s${i}`, reason: 'r', endMs, createdMs: 0, source: 'admin' });
const options = { log: () => {}, now: Date.now, timeoutMs: 1000, maxEntries: 10 };

t.test('a file list refused for the other sources\' entries is applied once they are lifted, unchanged', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'dg-limit-')), 'list.json');
  writeFileSync(file, list(3));
  const store = new RevocationStore();
  const source = new ListSource('file', file, store, options);
  await source.start(3_600_000);
  source.close();
  for (let i = 0; i < 5; i++) store.add(admin(i));
  await new Promise((resolve) => setTimeout(resolve, 20));
  writeFileSync(file, list(8));
  await source.refresh();
  t.equal(store.countSource('file'), 3, '8 + 5 > 10: refused, the last good list stays');
  t.match(source.status.lastError, /the list has 8 entries; with the 5 the other sources take, that is more than revocation\.maxEntries \(10\)/);
  for (let i = 0; i < 5; i++) store.remove('admin', `a${i}`);
  await source.refresh();
  t.equal(store.countSource('file'), 8, 'read and counted again: applied (before: skipped as broken until the file changed)');
  t.equal(source.status.lastError, undefined);
});

t.test('a URL list refused for the other sources\' entries is applied once they are lifted, unchanged', async (t) => {
  const body = list(8);
  let fetches = 0;
  const server = createServer((req, res) => {
    fetches++;
    const etag = `"${body.length}"`;
    if (req.headers['if-none-match'] === etag) { res.writeHead(304, { etag }).end(); return; }
    res.writeHead(200, { 'content-type': 'application/json', etag }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise((resolve) => server.close(resolve)));
  const store = new RevocationStore();
  for (let i = 0; i < 5; i++) store.add(admin(i));
  const source = new ListSource('url', `http://127.0.0.1:${(server.address() as AddressInfo).port}/list.json`, store, options);
  await source.start(3_600_000);
  source.close();
  t.equal(store.countSource('url'), 0, 'refused at first');
  t.equal(source.status.lastSuccessAt, undefined, 'never applied (the sidecar is not ready)');
  for (let i = 0; i < 5; i++) store.remove('admin', `a${i}`);
  await source.refresh();
  t.equal(fetches, 2);
  t.equal(store.countSource('url'), 8, 'fetched whole again and applied (before: 304 to the refused ETag, never applied)');
  t.type(source.status.lastSuccessAt, 'string');
});

t.test('ended revocations take no room', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'dg-limit-')), 'list.json');
  writeFileSync(file, list(8));
  const store = new RevocationStore();
  for (let i = 0; i < 5; i++) store.add(admin(i, Date.now() - 1000));
  const source = new ListSource('file', file, store, options);
  await source.start(3_600_000);
  source.close();
  t.equal(store.countSource('file'), 8, 'the five ended admin revocations do not count (before: start-up refused)');
  t.equal(store.size, 8, 'and they are gone');
});

t.test('check weighs a list file beside the journal\'s admin revocations, as start-up does', async (t) => {
  // A journal of large admin revocations (written by a version that counted each once) left
  // no room for the list: start-up stopped, and check said the rules were valid.
  const { checkListFile } = await import('../../proxy/lifecycle/lists.ts');
  const { unitsOf } = await import('../../proxy/lifecycle/revocations.ts');
  const file = join(mkdtempSync(join(tmpdir(), 'dg-limit-')), 'list.json');
  writeFileSync(file, list(3));
  const heavy: Revocation = { ...admin(0), value: 'ж'.repeat(4096), reason: 'ж'.repeat(1024) };
  t.ok(unitsOf(heavy) > 7, `a 4 KiB value beyond Latin-1 takes ${unitsOf(heavy)} units`);
  t.doesNotThrow(() => checkListFile(file, Date.now(), 10), 'alone, the list fits');
  t.throws(() => checkListFile(file, Date.now(), 10, unitsOf(heavy)), /the list has 3 entries; with the \d+ the other sources take, that is more than revocation\.maxEntries \(10\)/);
});

t.test('driftguard check counts the journal\'s admin revocations when it weighs the list file', async (t) => {
  const { checkLifecycleFiles } = await import('../../proxy/lifecycle/index.ts');
  const { loadRules } = await import('../../proxy/rules/load.ts');
  const { baseRules, writeRules } = await import('../support/driftguard.ts');
  const dir = mkdtempSync(join(tmpdir(), 'dg-limit-'));
  writeFileSync(join(dir, 'list.json'), list(3));
  const heavy = { ...admin(0), value: 'ж'.repeat(4096), reason: 'ж'.repeat(1024), endMs: Date.now() + 3_600_000 };
  writeFileSync(join(dir, 'revocations.journal'), `${JSON.stringify({ op: 'add', revocation: heavy })}\n`);
  const rules = loadRules(writeRules(baseRules('http://127.0.0.1:9', 'http://127.0.0.1:9/jwks.json', (r) => { r.revocation = { file: 'list.json', journal: 'revocations.journal', maxEntries: 10 }; }), dir));
  t.throws(() => checkLifecycleFiles(rules, Date.now()), /list\.json:1:1.*the list has 3 entries; with the \d+ the other sources take/);
});

t.test('a reload naming a new list file weighs it beside the admin API\'s revocations, as start-up and check do', async (t) => {
  // Weighed alone, the reload was taken, the new list then refused for room when applied, and
  // the previous list stayed in force: what only the new one revoked went on being forwarded.
  const { world, startLifecycle } = await import('./support.ts');
  const { loadRules } = await import('../../proxy/rules/load.ts');
  const { writeRules } = await import('../support/driftguard.ts');
  const w = await world();
  const dir = mkdtempSync(join(tmpdir(), 'dg-limit-'));
  writeFileSync(join(dir, 'a.json'), list(1));
  writeFileSync(join(dir, 'b.json'), list(2));
  const rules = (file: string) => w.rules((r) => { r.revocation = { file: join(dir, file), maxEntries: 15 }; });
  const dg = await startLifecycle(rules('a.json'), { dir });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const made = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'jti', value: 'ж'.repeat(4096), reason: 'ж'.repeat(1000) }) });
  t.equal(made.status, 201, 'one large admin revocation: 14 units');
  await t.rejects(dg.dg.swap(loadRules(writeRules(rules('b.json'), dir))), /b\.json:1:1: \(top level\): the list has 2 entries; with the 14 the other sources take, that is more than revocation\.maxEntries \(15\)/);
});
