// POST /reload is an admin write: each one reads, parses and validates the whole rules file on
// the thread that serves requests. It had only the web-page check, so anything that could reach
// the admin listener (the pod's own app on loopback, an SSRF in it) could keep the sidecar
// re-parsing its rules, while a revocation needed the admin credential.

import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { stringify } from 'yaml';
import { testKey, jwks } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
t.teardown(async () => { await up.close(); await keys.close(); });

const SECRET = 's3cret-admin-credential-7f2a';

t.test('with an admin credential file, POST /reload needs its credential, as a revocation does', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-reload-guard-'));
  writeFileSync(join(dir, 'admin-credentials'), `ops ${SECRET}\n`, { mode: 0o600 });
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, stringify(baseRules(up.origin, keys.url, (r) => { r.revocation = { adminCredentialFile: 'admin-credentials' }; })));
  const dg = await runDriftguard(file, [], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  const post = (authorization?: string) => fetch(`${dg.admin}/reload`, { method: 'POST', headers: authorization ? { authorization } : {} });
  const none = await post();
  t.equal(none.status, 401, 'no credential: refused');
  t.match(await none.text(), /admin writes need a bearer admin credential/);
  const wrong = await post('Bearer not-the-secret');
  t.equal(wrong.status, 401, 'a wrong one: refused');
  await wrong.text();
  t.notOk(dg.lines.some((l) => /rules (unchanged|reloaded)/.test(String(l.msg))), 'neither reloaded anything');
  const right = await post(`Bearer ${SECRET}`);
  t.equal(right.status, 200, 'the credential: reloaded');
  t.same(await right.json(), { changed: false, hash: (await (await fetch(`${dg.admin}/readyz`)).json() as { rules: string }).rules });
  const line = await dg.waitFor((l) => l.msg === 'rules unchanged');
  t.equal(line.trigger, 'POST /reload by ops', 'the log says who asked');
  t.notOk(dg.output().includes(SECRET), 'the credential is nowhere in the output');
});

// A non-loopback address of this machine, to reach the admin listener from outside loopback.
const outside = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

t.test('without one, POST /reload is taken from loopback only', { skip: outside ? false : 'needs a non-loopback IPv4 address on this machine' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dg-reload-guard-'));
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, stringify(baseRules(up.origin, keys.url)));
  // The admin listener on the machine's own address: a client there is not on loopback.
  const dg = await runDriftguard(file, ['--admin', `${outside}:0`], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(() => dg.kill());
  const { port } = new URL(dg.admin);
  const status = await new Promise<number>((resolve, reject) => {
    const req = request({ host: outside, port, method: 'POST', path: '/reload', localAddress: outside }, (res) => { res.resume(); resolve(res.statusCode!); });
    req.on('error', reject);
    req.end();
  });
  t.equal(status, 403, 'refused from a non-loopback address');
  t.notOk(dg.lines.some((l) => /rules (unchanged|reloaded)/.test(String(l.msg))), 'nothing was reloaded');
});
