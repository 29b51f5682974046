// The layout the kubelet gives a ConfigMap mounted as a directory, reproduced in a temp dir:
//   ..2026_11_25_10_00_00.000000001/rules.yaml   the data, in a timestamped directory
//   ..data -> ..2026_11_25_10_00_00.000000001    the one symlink that moves
//   rules.yaml -> ..data/rules.yaml               what driftguard is pointed at
// An update writes a new timestamped directory and renames a new `..data` symlink over the
// old one (atomic), then deletes the old directory. driftguard runs as a real subprocess.

import t from 'tap';
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, renameSync, rmSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream } from '../support/servers.ts';
import { baseRules, AGENT } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

let stamp = 0;
function timestamped(): string {
  stamp++;
  return `..2026_11_25_10_0${stamp}_00.00000000${stamp}`;
}

/** Create the ConfigMap volume with `rules` as its only key. */
function configMap(rules: unknown): { dir: string; file: string; update(rules: unknown): void } {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-cm-'));
  const write = (content: unknown) => {
    const data = timestamped();
    mkdirSync(join(dir, data));
    writeFileSync(join(dir, data, 'rules.yaml'), typeof content === 'string' ? content : stringify(content));
    return data;
  };
  const first = write(rules);
  symlinkSync(first, join(dir, '..data'));
  symlinkSync(join('..data', 'rules.yaml'), join(dir, 'rules.yaml'));
  return {
    dir, file: join(dir, 'rules.yaml'),
    update(content) {
      const old = readlinkSync(join(dir, '..data'));
      const data = write(content);
      symlinkSync(data, join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
      rmSync(join(dir, old), { recursive: true });
    },
  };
}

function withProbe(rules: Record<string, any>, n: number): Record<string, any> {
  const next = structuredClone(rules);
  next.contract.operations.push({ id: `probe${n}`, method: 'GET', path: `/probe${n}`, sensitivity: 'low', public: true });
  return next;
}

async function status(url: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await fetch(url, { headers });
  await res.text();
  return res.status;
}

t.test('ConfigMap symlink swap, SIGHUP and POST /reload in a real subprocess', async (t) => {
  const up = await upstream();
  t.teardown(() => up.close());
  // The signing keys live in a mounted Secret of their own (not watched): SIGHUP or
  // POST /reload picks up a rotation there.
  const secret = mkdtempSync(join(tmpdir(), 'driftguard-secret-'));
  const oldKey = await testKey('ES256');
  const newKey = await testKey('ES256');
  writeFileSync(join(secret, 'jwks.json'), JSON.stringify(jwks(oldKey)));
  const rules = baseRules(up.origin, 'http://127.0.0.1:9/unused', (r) => {
    r.identity.issuers[0].jwks = { file: join(secret, 'jwks.json') };
  });
  const cm = configMap(rules);
  const dg = await runDriftguard(cm.file, [], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  const tokens = [
    await token({ key: oldKey, sub: AGENT, scope: 'items.read', contract: '2026-09' }),
    await token({ key: newKey, sub: AGENT, scope: 'items.read', contract: '2026-09' }),
  ];

  t.not(await status(`${dg.url}/probe1`), 200, 'GET /probe1 is not an operation yet');

  // 1. The kubelet swaps ..data: the watcher reloads.
  cm.update(withProbe(rules, 1));
  await dg.waitFor((l) => l.msg === 'rules reloaded' && l.trigger === 'file change');
  t.equal(await status(`${dg.url}/probe1`), 200, 'the swapped-in rules are in force');

  // 2. An invalid ConfigMap: rejected, reported, the last good rules keep serving.
  cm.update('proxy:\n  upstream: 42\n');
  const rejected = await dg.waitFor((l) => l.msg?.startsWith('rules reload rejected') && l.trigger === 'file change');
  t.match(rejected.error, /rules\.yaml:2:\d+: proxy\.upstream/, 'the log names file, line and field');
  t.equal(await status(`${dg.url}/probe1`), 200, 'the last good rules keep serving');
  const ready = await fetch(`${dg.admin}/readyz`);
  const body = await ready.json() as any;
  t.equal(ready.status, 200);
  t.equal(body.reload.lastResult, 'failed');
  t.match(body.reload.lastError, /proxy\.upstream/);

  // 3. SIGHUP reloads too (here: rejected again, by the SIGHUP trigger).
  dg.child.kill('SIGHUP');
  await dg.waitFor((l) => l.msg?.startsWith('rules reload rejected') && l.trigger === 'SIGHUP');

  // 4. POST /reload answers with what happened; not to a web page.
  const fromPage = await fetch(`${dg.admin}/reload`, { method: 'POST', headers: { origin: 'http://evil.example' } });
  t.equal(fromPage.status, 403, 'a web page cannot drive a reload');
  t.match(await fromPage.text(), /not accepted from web pages/);
  const post = await fetch(`${dg.admin}/reload`, { method: 'POST' });
  const result = await post.json() as any;
  t.equal(post.status, 422);
  t.equal(result.changed, false);
  t.match(result.error, /proxy\.upstream/);

  // 5. A good ConfigMap again, then a key rotated in the Secret: SIGHUP picks it up.
  cm.update(withProbe(rules, 2));
  await dg.waitFor((l) => l.msg === 'rules reloaded' && l.trigger === 'file change' && l.to !== rejected.rules);
  t.equal(await status(`${dg.url}/probe2`), 200);
  t.equal(await status(`${dg.url}/items/7`, { authorization: `Bearer ${tokens[1]}` }), 401, 'the new key is not trusted yet');
  writeFileSync(join(secret, 'jwks.json'), JSON.stringify(jwks(oldKey, newKey)));
  dg.child.kill('SIGHUP');
  await dg.waitFor((l) => l.msg === 'rules reloaded' && l.trigger === 'SIGHUP');
  t.equal(await status(`${dg.url}/items/7`, { authorization: `Bearer ${tokens[1]}` }), 200, 'SIGHUP loaded the rotated keys');

  // 6. The old key retired; POST /reload picks that up.
  writeFileSync(join(secret, 'jwks.json'), JSON.stringify(jwks(newKey)));
  const retired = await fetch(`${dg.admin}/reload`, { method: 'POST' });
  t.equal(retired.status, 200);
  t.equal((await retired.json() as any).changed, true);
  t.equal(await status(`${dg.url}/items/7`, { authorization: `Bearer ${tokens[0]}` }), 401, 'the retired key is refused');
  const again = await (await fetch(`${dg.admin}/readyz`)).json() as any;
  t.equal(again.reload.lastResult, 'succeeded');
  t.notOk('lastError' in again.reload);

  dg.child.kill('SIGTERM');
  t.same(await dg.exited, { code: 0, signal: null });
  for (const tok of tokens) t.notOk(dg.output().includes(tok), 'no token in driftguard\'s output');
});

t.test('a rules directory replaced (a release link switched and the old release deleted; rm -r and mkdir) is watched again', async (t) => {
  const up = await upstream();
  t.teardown(() => up.close());
  const key = await testKey('ES256');
  const secret = mkdtempSync(join(tmpdir(), 'driftguard-secret-'));
  writeFileSync(join(secret, 'jwks.json'), JSON.stringify(jwks(key)));
  const rules = baseRules(up.origin, 'http://127.0.0.1:9/unused', (r) => { r.identity.issuers[0].jwks = { file: join(secret, 'jwks.json') }; });
  // root/current -> v1, driftguard pointed at root/current/rules.yaml.
  const root = mkdtempSync(join(tmpdir(), 'driftguard-releases-'));
  const release = (name: string, n: number) => { mkdirSync(join(root, name)); writeFileSync(join(root, name, 'rules.yaml'), stringify(withProbe(rules, n))); };
  release('v1', 1);
  symlinkSync('v1', join(root, 'current'));
  const dg = await runDriftguard(join(root, 'current', 'rules.yaml'), [], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  // The status of GET /probe<n> once it is 200, or after 6 s (a change settles for a second first).
  const reloaded = async (n: number) => {
    for (let i = 0; i < 60 && await status(`${dg.url}/probe${n}`) !== 200; i++) await new Promise((r) => setTimeout(r, 100));
    return status(`${dg.url}/probe${n}`);
  };
  t.equal(await status(`${dg.url}/probe1`), 200);

  // The link switched to v2, v1 deleted: seen (its files' deletion is an event).
  release('v2', 2);
  symlinkSync('v2', join(root, 'next'));
  renameSync(join(root, 'next'), join(root, 'current'));
  rmSync(join(root, 'v1'), { recursive: true });
  t.equal(await reloaded(2), 200, 'the switched release is in force');
  // v2 edited in place: before, never seen (the watch was on v1, deleted).
  writeFileSync(join(root, 'v2', 'rules.yaml'), stringify(withProbe(rules, 3)));
  t.equal(await reloaded(3), 200, 'an edit of the new release is seen');

  // A deploy tool that replaces the directory: rm -r, mkdir, write.
  rmSync(join(root, 'v2'), { recursive: true });
  release('v2', 4);
  t.equal(await reloaded(4), 200, 'the replaced directory\'s rules are in force');
  writeFileSync(join(root, 'v2', 'rules.yaml'), stringify(withProbe(rules, 5)));
  t.equal(await reloaded(5), 200, 'and an edit after it is seen');
  const ready = await (await fetch(`${dg.admin}/readyz`)).json() as any;
  t.equal(ready.reload.watching, 'events');
  dg.child.kill('SIGTERM');
  t.same(await dg.exited, { code: 0, signal: null });
});
