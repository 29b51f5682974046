// Every rules file shipped in rules/ (the demo and the examples) is valid: an example that
// no longer loads is worse than none.
import t from 'tap';
import { join } from 'node:path';
import { readdirSync, readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { loadRules } from '../../proxy/rules/load.ts';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { writeRules } from '../support/driftguard.ts';
import { runDriftguard } from '../support/subprocess.ts';

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
  // One operation is meant to be past its sunset (the demo's 410); every other sunset must be
  // decades away, whatever today is: filtering on the clock let one that had passed go unseen.
  const rules = loadRules(join(dir, 'demo.yaml'));
  const PAST = 'legacyReport';
  const soon = Date.now() + 20 * 365 * 86_400_000;
  const sunsets = rules.contract.operations.filter((op) => op.deprecated?.sunsetMs !== undefined);
  t.ok(sunsets.length >= 3, 'the demo has sunsets to check');
  for (const op of sunsets) {
    const sunset = op.deprecated!.sunsetMs!;
    if (op.id === PAST) t.ok(sunset < Date.now(), `${op.id}: past its sunset, as the demo says`);
    else t.ok(sunset > soon, `${op.id}: sunset ${new Date(sunset).toISOString()} more than 20 years away`);
  }
  t.ok(sunsets.some((op) => op.id === PAST), `${PAST} is among them`);
});

t.test('the kubernetes example lets its SPIRE agent call what it declared, with a JWT-SVID as SPIRE issues it', async (t) => {
  // Its operations had scopes and task binding from high: a JWT-SVID carries neither, and the
  // agent was refused every operation it declared (403 insufficient-scope).
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  const rules = parse(readFileSync(join(dir, 'examples', 'kubernetes.yaml'), 'utf8'));
  rules.proxy = { ...rules.proxy, listen: '127.0.0.1:0', admin: '127.0.0.1:0', upstream: up.origin };
  delete rules.proxy.probes;
  // The SPIRE issuer alone (the kubernetes one discovers its keys from an API server), its keys on loopback.
  rules.identity.issuers = rules.identity.issuers.filter((i: { profile: string }) => i.profile === 'spiffe');
  rules.identity.issuers[0].jwks = { url: keys.url };
  rules.telemetry = { decisionLog: { output: 'none' } };
  const dg = await runDriftguard(writeRules(rules), [], { OTEL_TRACES_EXPORTER: 'none' });
  t.teardown(async () => { dg.kill(); await up.close(); await keys.close(); });
  const svid = await token({ key, iss: 'https://oidc.spire.example.com', aud: 'driftguard.io/orders', sub: 'spiffe://example.com/ns/agents/sa/refund-agent' });
  const call = async (method: string, path: string, extra: Record<string, string> = {}) => {
    const res = await fetch(`${dg.url}${path}`, { method, headers: { authorization: `Bearer ${svid}`, 'contract-version': '2026-08', ...extra }, ...(method === 'POST' ? { body: '{}' } : {}) });
    const body = await res.text();
    return { status: res.status, reason: res.status >= 400 ? (JSON.parse(body) as { reason: string }).reason : undefined };
  };
  t.same(await call('GET', '/orders/42'), { status: 200, reason: undefined }, 'getOrder, declared');
  t.same(await call('POST', '/orders/42/refunds', { 'idempotency-key': 'refund-42', 'content-type': 'application/json' }), { status: 200, reason: undefined }, 'refundOrder, declared and critical');
  t.same(await call('POST', '/orders', { 'idempotency-key': 'order-1', 'content-type': 'application/json' }), { status: 403, reason: 'undeclared-operation' }, 'createOrder, not declared');
});
