// The probe listener: the kubelet and Prometheus reach /healthz, /readyz and /metrics on the
// pod IP, while the decision ring, the owner view and the revocation list stay on the
// loopback admin listener.

import t from 'tap';
import type { AddressInfo } from 'node:net';
import { testKey, jwks } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { startDriftguard } from '../../proxy/server.ts';
import { features } from '../../proxy/features.ts';

t.test('proxy.probes serves health, readiness and metrics only; the admin listener serves the rest', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = loadRules(writeRules(baseRules(up.origin, keys.url, (r) => {
    r.proxy.probes = '127.0.0.1:0';
    r.telemetry = { traces: { exporter: 'none' }, decisionLog: { output: 'none' } };
  })));
  const wired = await features(rules, () => {});
  const dg = startDriftguard(rules, { observer: wired.observer, deps: wired.deps, log: () => {} });
  wired.attach(dg);
  await dg.listening;
  t.teardown(async () => { await dg.close(); await wired.shutdown(); await up.close(); await keys.close(); });
  t.ok(dg.probes, 'a probe listener exists');
  const probes = `http://127.0.0.1:${(dg.probes!.address() as AddressInfo).port}`;
  const admin = `http://127.0.0.1:${(dg.admin.address() as AddressInfo).port}`;

  for (const path of ['/healthz', '/readyz', '/metrics']) {
    const res = await fetch(probes + path);
    await res.text();
    t.not(res.status, 404, `${path} on the probe listener`);
  }
  // A path the probe listener does not serve is quoted back redacted (it was quoted whole).
  const tok = 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ';
  for (const base of [probes, admin]) {
    const res = await fetch(`${base}/x/${tok}`);
    t.equal(res.status, 404);
    t.notMatch(await res.text(), 'c2lnbmF0dXJlLXNpZ25hdHVyZQ', `${base === probes ? 'probe' : 'admin'} listener: no token in its 404`);
  }
  for (const path of ['/decisions', '/consumers', '/revocations', '/quarantine']) {
    const onProbes = await fetch(probes + path);
    await onProbes.text();
    t.equal(onProbes.status, 404, `${path} is not on the probe listener`);
    const onAdmin = await fetch(admin + path);
    await onAdmin.text();
    t.equal(onAdmin.status, 200, `${path} is on the admin listener`);
  }
  const reload = await fetch(probes + '/reload', { method: 'POST' });
  await reload.text();
  t.equal(reload.status, 404, 'no writes on the probe listener');
});

t.test('proxy.probes must be host:port and differ from proxy.admin', async (t) => {
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:1/jwks.json', (r) => { r.proxy.probes = 'nope'; }))), { code: 'ERR_RULES_INVALID', problems: [{ field: 'proxy.probes' }] });
  t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:1/jwks.json', (r) => { r.proxy.admin = '127.0.0.1:15021'; r.proxy.probes = '127.0.0.1:15021'; }))), { code: 'ERR_RULES_INVALID', problems: [{ field: 'proxy.probes' }] });
});

t.test('/readyz names each key set not fetched yet: its issuer, its origin and path, and why', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = loadRules(writeRules(baseRules(up.origin, keys.url, (r) => {
    // A second issuer whose keys cannot be fetched (nothing listens on port 1), at a URL whose
    // userinfo and query carry a credential.
    for (const c of r.consumers.registry) c.issuer ??= r.identity.issuers[0].issuer;
    r.identity.issuers.push({ ...r.identity.issuers[0], issuer: 'https://second.test', jwks: { url: 'http://user:pa55word@127.0.0.1:1/keys/jwks.json?token=s3cret', refresh: '5m', cooldown: '30s', timeout: '1s' } });
  })));
  const dg = startDriftguard(rules, { log: () => {} });
  await dg.listening;
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const admin = `http://127.0.0.1:${(dg.admin.address() as AddressInfo).port}`;
  // Until the first issuer's keys are in, and the second's first fetch has failed.
  let body = '';
  let reasons: string[] = [];
  for (let i = 0; i < 100 && !(reasons.length === 1 && /ECONNREFUSED/.test(body)); i++) {
    await new Promise((r) => setTimeout(r, 20));
    const res = await fetch(`${admin}/readyz`);
    t.equal(res.status, 503);
    body = await res.text();
    ({ reasons } = JSON.parse(body) as { reasons: string[] });
  }
  // Before: ["signing keys not fetched yet"], naming neither the issuer nor the error.
  t.equal(reasons.length, 1, 'the first issuer\'s keys are in: only the second is named');
  t.match(reasons[0], /^signing keys of https:\/\/second\.test not fetched yet from http:\/\/127\.0\.0\.1:1\/keys\/jwks\.json: .*ECONNREFUSED/);
  t.notMatch(body, /s3cret|pa55word|user/, 'no query or userinfo of the key set URL');
});
