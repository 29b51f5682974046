// Issuer profiles in the rules file: what load refuses (with file, line and field) and the
// defaults a kubernetes issuer gets.

import t from 'tap';
import { parseRules, RulesError } from '../../proxy/rules/load.ts';
import { stringify } from 'yaml';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseRules } from '../support/driftguard.ts';

function load(issuer: Record<string, unknown>, env: Record<string, string | undefined> = {}) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete process.env[k];
  try {
    return parseRules(stringify(baseRules('http://127.0.0.1:8080', 'http://127.0.0.1:9/jwks', (r) => { r.identity.issuers = [issuer]; })), '/etc/driftguard/rules.yaml');
  } finally {
    for (const k of Object.keys(env)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

function problems(issuer: Record<string, unknown>, env: Record<string, string | undefined> = {}): { field: string; message: string; line: number }[] {
  try {
    load(issuer, env);
  } catch (err) {
    if (err instanceof RulesError) return err.problems.map((p) => ({ field: p.field, message: p.message, line: p.line }));
    throw err;
  }
  throw new Error('the rules loaded');
}

const CLUSTER = 'https://kubernetes.default.svc.cluster.local';

t.test('a kubernetes issuer refuses the API server\'s audiences, and says why', async (t) => {
  const found = problems({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders', CLUSTER, 'https://kubernetes.default.svc', 'https://kubernetes.default.svc.cluster.local/'], algorithms: ['RS256'] });
  t.same(found.map((p) => p.field), [1, 2, 3].map((k) => `identity.issuers[0].audiences[${k}]`));
  for (const p of found) {
    t.match(p.message, /any pod could replay its own token/);
    t.ok(p.line > 0, 'with a line');
  }
  t.match(found[0]!.message, /the issuer URL/);
  // Other clouds' workload identity audiences, and a default port written out.
  const clouds = problems({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders', 'api://AzureADTokenExchange', 'my-project.svc.id.goog', 'https://kubernetes.default.svc:443', 'https://kubernetes.default.svc:6443'], algorithms: ['RS256'] });
  t.same(clouds.map((p) => p.field), [1, 2, 3].map((k) => `identity.issuers[0].audiences[${k}]`), 'AKS, GKE and :443 refused; another port is another audience');
  t.match(clouds[0]!.message, /AKS workload identity/);
  t.match(clouds[1]!.message, /GKE workload identity/);
  // The API server by an IPv6 service address, :443 written out or not (a pattern missed the brackets).
  const v6 = load({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders'], algorithms: ['RS256'] }, { KUBERNETES_SERVICE_HOST: 'fd00:10:96::1', KUBERNETES_SERVICE_PORT: '443' });
  t.equal((v6.identity.issuers[0]!.jwks as { discovery: string }).discovery, 'https://[fd00:10:96::1]:443/.well-known/openid-configuration');
  const api6 = problems({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders', 'https://[fd00:10:96::1]:443', 'https://[FD00:10:96::1]/', 'https://[fd00:10:96::1]:6443'], algorithms: ['RS256'] }, { KUBERNETES_SERVICE_HOST: 'fd00:10:96::1', KUBERNETES_SERVICE_PORT: '443' });
  t.same(api6.map((p) => p.field), [1, 2].map((k) => `identity.issuers[0].audiences[${k}]`), 'the IPv6 API server refused with :443 and without; another port is another audience');
});

t.test('a kubernetes issuer without jwks discovers from the API server with the pod\'s token and CA', async (t) => {
  const rules = load({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders'], algorithms: ['RS256'] }, { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' });
  t.same(rules.identity.issuers[0]!.jwks, {
    kind: 'discovery', discovery: 'https://10.96.0.1:443/.well-known/openid-configuration',
    tokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token', caFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt',
    refreshMs: 300_000, cooldownMs: 30_000, timeoutMs: 5_000,
  });
  const outside = load({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders'], algorithms: ['RS256'] }, { KUBERNETES_SERVICE_HOST: undefined });
  t.equal((outside.identity.issuers[0]!.jwks as { discovery: string }).discovery, 'https://kubernetes.default.svc/.well-known/openid-configuration');
  t.equal(outside.identity.issuers[0]!.profile, 'kubernetes');
  t.equal(load({ issuer: 'https://idp', audiences: ['a'], algorithms: ['ES256'], jwks: { url: 'https://idp/jwks' } }).identity.issuers[0]!.profile, 'oauth', 'oauth is the default');
});

t.test('a bearer token file is only sent over https', async (t) => {
  const token = join(mkdtempSync(join(tmpdir(), 'dg-token-')), 'token');
  writeFileSync(token, 'a-projected-token');
  const found = problems({ issuer: 'https://idp', audiences: ['a'], algorithms: ['RS256'], jwks: { discovery: 'http://idp.local', tokenFile: token, insecureHttp: true } });
  t.same(found.map((p) => p.field), ['identity.issuers[0].jwks.tokenFile'], 'even where plain http is allowed');
});

t.test('a token or CA file written in the rules that cannot be read is a problem at its field; the in-cluster defaults are not checked', async (t) => {
  // Before: valid, and the pod never turned ready (each key fetch failed reading it).
  const found = problems({ issuer: 'https://idp', audiences: ['a'], algorithms: ['RS256'], jwks: { discovery: 'https://idp.local', tokenFile: 'no-such-token', caFile: '/no/such/ca.crt' } });
  t.match(found, [
    { field: 'identity.issuers[0].jwks.tokenFile', message: /no-such-token cannot be read: ENOENT/ },
    { field: 'identity.issuers[0].jwks.caFile', message: /ca\.crt cannot be read: ENOENT/ },
  ]);
  t.ok(found.every((p) => p.line > 0), 'each at its line');
  const dir = mkdtempSync(join(tmpdir(), 'dg-ca-'));
  t.match(problems({ issuer: 'https://idp', audiences: ['a'], algorithms: ['RS256'], jwks: { discovery: 'https://idp.local', caFile: dir } }), [{ field: 'identity.issuers[0].jwks.caFile', message: /is not a regular file/ }]);
  // The pod's own token and CA, left out or written out: read where they are, in the pod.
  t.doesNotThrow(() => load({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders'], algorithms: ['RS256'] }));
  t.doesNotThrow(() => load({ issuer: CLUSTER, profile: 'kubernetes', audiences: ['driftguard.io/orders'], algorithms: ['RS256'], jwks: { discovery: 'https://kubernetes.default.svc', tokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token', caFile: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt' } }), 'written out as the README shows');
});

t.test('keys over plain http from a host that is not loopback are refused unless insecureHttp says the path is protected', async (t) => {
  const base = { issuer: 'https://idp', audiences: ['a'], algorithms: ['RS256'] };
  const url = problems({ ...base, jwks: { url: 'http://10.0.0.7/jwks.json' } });
  t.same(url.map((p) => p.field), ['identity.issuers[0].jwks.url']);
  t.match(url[0]!.message, /plain http to a host that is not loopback: anyone on the path could substitute the keys/);
  t.same(problems({ ...base, jwks: { discovery: 'http://keycloak.auth.svc:8080/realms/x' } }).map((p) => p.field), ['identity.issuers[0].jwks.discovery']);
  for (const ok of ['http://127.0.0.1:9/jwks.json', 'http://localhost/jwks.json', 'http://[::1]:8080/jwks.json', 'https://10.0.0.7/jwks.json']) {
    t.doesNotThrow(() => load({ ...base, jwks: { url: ok } }, {}), ok);
  }
  t.doesNotThrow(() => load({ ...base, jwks: { url: 'http://10.0.0.7/jwks.json', insecureHttp: true } }, {}), 'insecureHttp: true');
});

t.test('other profiles need jwks', async (t) => {
  t.same(problems({ issuer: 'https://idp', audiences: ['a'], algorithms: ['RS256'] }).map((p) => p.field), ['identity.issuers[0].jwks']);
});

t.test('the spiffe profile: a trust domain, RS/ES/PS algorithms only', async (t) => {
  t.same(problems({ issuer: 'https://spire', profile: 'spiffe', audiences: ['a'], algorithms: ['ES256'], jwks: { url: 'https://spire/keys' } }).map((p) => p.field), ['identity.issuers[0].trustDomain']);
  const algs = problems({ issuer: 'https://spire', profile: 'spiffe', trustDomain: 'prod.example.org', audiences: ['a'], algorithms: ['ES256', 'EdDSA'], jwks: { url: 'https://spire/keys' } });
  t.same(algs.map((p) => p.field), ['identity.issuers[0].algorithms[1]']);
  t.match(algs[0]!.message, /RS, ES and PS/);
  t.same(problems({ issuer: 'https://spire', profile: 'spiffe', trustDomain: 'Prod.Example', audiences: ['a'], algorithms: ['ES256'], jwks: { url: 'https://spire/keys' } }).map((p) => p.field), ['identity.issuers[0].trustDomain']);
  t.same(problems({ issuer: 'https://idp', trustDomain: 'prod.example.org', audiences: ['a'], algorithms: ['ES256'], jwks: { url: 'https://idp/keys' } }).map((p) => p.field), ['identity.issuers[0].trustDomain'], 'trustDomain only with profile spiffe');
});
