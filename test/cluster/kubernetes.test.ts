// profile: kubernetes against a loopback HTTPS "API server" with a self-signed CA: keys
// found by OIDC discovery with the pod's own token (re-read from its file), service-account
// tokens mapped to system:serviceaccount:<namespace>:<name>.

import t, { type Test } from 'tap';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { trustFor } from '../../proxy/identity/cluster.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { testKey, token, type TestKey } from '../support/keys.ts';
import { upstream } from '../support/servers.ts';
import { baseRules, startTest } from '../support/driftguard.ts';
import { selfSignedCertificate } from '../support/tls.ts';
import { fakeApiServer, CLUSTER_ISSUER } from './apiserver.ts';

const AUDIENCE = 'driftguard.io/orders';
const CHECKOUT = 'system:serviceaccount:shop:checkout';
const POD_TOKENS = ['pod-token-1.aaaaaaaaaaaaaaaaaaaaaaaa', 'pod-token-2.bbbbbbbbbbbbbbbbbbbbbbbb'];

function saToken(key: TestKey, o: { namespace?: string; name?: string; sub?: string; aud?: string; claim?: unknown } = {}): Promise<string> {
  const namespace = o.namespace ?? 'shop';
  const name = o.name ?? 'checkout';
  return token({
    key, iss: CLUSTER_ISSUER, aud: o.aud ?? AUDIENCE, sub: o.sub ?? `system:serviceaccount:${namespace}:${name}`, scope: 'items.read', contract: '2026-09',
    claims: { 'kubernetes.io': o.claim ?? { namespace, serviceaccount: { name, uid: '0b6e3f6c-1111-4a4a-9b9b-2c2c2c2c2c2c' }, pod: { name: 'checkout-7d9f', uid: '5e5e5e5e-2222-4b4b-8c8c-3d3d3d3d3d3d' } } },
  });
}

async function setup(t: Test, options: { caFile?: string; issuer?: string; alsoTrust?: string; waitReady?: boolean } = {}) {
  const key = await testKey('RS256');
  const api = await fakeApiServer([key.publicJwk], POD_TOKENS[0]!);
  const up = await upstream();
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-sa-'));
  const tokenFile = join(dir, 'token');
  const caFile = join(dir, 'ca.crt');
  writeFileSync(tokenFile, POD_TOKENS[0]! + '\n');
  writeFileSync(caFile, api.ca + (options.alsoTrust ?? ''));
  const logs: string[] = [];
  const dg = await startTest(baseRules(up.origin, 'unused', (r) => {
    r.identity.issuers = [{
      issuer: options.issuer ?? CLUSTER_ISSUER, profile: 'kubernetes', audiences: [AUDIENCE], algorithms: ['RS256'],
      jwks: { discovery: api.origin, tokenFile, caFile: options.caFile ?? caFile, cooldown: '1s', timeout: '2s' },
    }];
    r.consumers.registry.push({ subject: CHECKOUT, kind: 'automation', owner: 'team-shop' });
  }), { log: (l) => logs.push(JSON.stringify(l)), waitReady: options.waitReady ?? true });
  if (options.waitReady === false) {
    const keys = dg.dg.generation.identity.keySets().values().next().value!;
    for (let i = 0; i < 500 && keys.status().failures === 0; i++) await new Promise((r) => setTimeout(r, 10));
  }
  t.teardown(async () => { await dg.close(); await api.close(); await up.close(); });
  return { key, api, up, dg, tokenFile, logs };
}

/** The key set's cooldown (1 s, the least the rules take) since its first fetch: a new kid may make it fetch again. */
const pastCooldown = () => new Promise((r) => setTimeout(r, 1_050));

async function call(url: string, tok: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

t.test('keys by discovery with the pod token; the subject comes from the kubernetes.io claim', async (t) => {
  const { key, api, up, dg } = await setup(t);
  t.ok(dg.dg.ready, 'ready once the keys were fetched');
  t.same(api.seen.map((s) => s.path), ['/.well-known/openid-configuration', '/openid/v1/jwks'], 'discovery, then its jwks_uri');
  t.same(api.seen.map((s) => s.bearer), [POD_TOKENS[0], POD_TOKENS[0]], 'both with the pod\'s token');

  const r = await call(dg.url, await saToken(key));
  t.equal(r.status, 200);
  t.equal(up.seen.at(-1)!.headers['driftguard-consumer'], CHECKOUT);
});

t.test('the token file is re-read on every fetch: the kubelet rotates it', async (t) => {
  const { key, api, dg, tokenFile } = await setup(t);
  // The kubelet rotated the pod's token; the API server now only accepts the new one.
  writeFileSync(tokenFile, POD_TOKENS[1]! + '\n');
  api.expectedToken = POD_TOKENS[1]!;
  // The API server rotated its signing key: a token with the new kid makes driftguard refetch
  // (once the key set's cooldown since its first fetch, 1 s, has passed).
  await pastCooldown();
  const next = await testKey('RS256');
  api.keys = [key.publicJwk, next.publicJwk];
  const seen = api.seen.length;
  const r = await call(dg.url, await saToken(next));
  t.equal(r.status, 200, 'the new key was fetched');
  t.same(api.seen.slice(seen).map((s) => s.bearer), [POD_TOKENS[1], POD_TOKENS[1]], 'with the rotated token');
});

t.test('service-account tokens that do not map to their subject are refused', async (t) => {
  const { key, dg } = await setup(t);
  const cases: [string, Promise<string>][] = [
    ['sub disagrees with the claim', saToken(key, { sub: 'system:serviceaccount:shop:admin' })],
    ['no kubernetes.io claim', saToken(key, { claim: 'none' })],
    ['a namespace that is not a name', saToken(key, { namespace: 'shop:admin', sub: 'system:serviceaccount:shop:admin:checkout' })],
    ['the API server\'s default audience', saToken(key, { aud: 'https://kubernetes.default.svc' })],
    ['the issuer as audience', saToken(key, { aud: CLUSTER_ISSUER })],
  ];
  for (const [what, tok] of cases) {
    const r = await call(dg.url, await tok);
    t.equal(r.status, 401, what);
    t.equal(r.body.code, 'invalid-credential', what);
  }
});

t.test('an API server that refuses the pod token: not ready, 503, and the token is never repeated', async (t) => {
  const { key, api, dg, logs } = await setup(t);
  api.expectedToken = 'another';
  await pastCooldown();
  const next = await testKey('RS256');
  api.keys = [next.publicJwk];
  const r = await call(dg.url, await saToken(next));
  t.equal(r.status, 503);
  t.equal(r.body.code, 'identity-unavailable');
  const status = dg.dg.generation.identity.keySets().values().next().value!.status();
  t.match(status.lastError, /HTTP 401.*system:service-account-issuer-discovery/);
  t.equal((await call(dg.url, await saToken(key))).status, 200, 'the last good keys still verify known kids');
  const readyz = await (await fetch(`${dg.admin}/readyz`)).text();
  for (const secret of POD_TOKENS) {
    t.notOk(logs.join('\n').includes(secret), 'no pod token in the log');
    t.notOk(readyz.includes(secret), 'nor in /readyz');
    t.notOk(String(status.lastError).includes(secret), 'nor in the key set\'s error');
  }
});

t.test('only the cluster CA is trusted for the API server', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'driftguard-ca-'));
  const other = join(dir, 'other-ca.crt');
  writeFileSync(other, selfSignedCertificate({ commonName: 'not-the-cluster' }).cert);
  const { dg } = await setup(t, { caFile: other, waitReady: false });
  t.notOk(dg.dg.ready, 'no keys from a server the CA does not vouch for');
  const status = dg.dg.generation.identity.keySets().values().next().value!.status();
  t.match(status.lastError, /certificate|self.signed|UNABLE_TO_VERIFY|DEPTH_ZERO/i);
  // A certificate from another CA would fail under the system's CAs too: what matters is that
  // they are not trusted for the API server at all, which no test certificate can show (none
  // chains to a public root), so the trust chosen per address is checked directly.
  const trust = trustFor('https://10.96.0.1:443', other);
  t.equal(trust(new URL('https://10.96.0.1/openid/v1/jwks')), readFileSync(other, 'utf8'), 'the API server: the cluster CA alone');
  const elsewhere = trust(new URL('https://oidc.example.com/keys'));
  t.ok(Array.isArray(elsewhere) && elsewhere.includes(rootCertificates[0]!) && elsewhere.at(-1) === readFileSync(other, 'utf8'), 'a jwks_uri elsewhere: the system\'s CAs and the cluster CA');
  t.equal(trustFor('https://10.96.0.1:443', undefined)(new URL('https://10.96.0.1/')), undefined, 'no CA file: the system\'s');
});

t.test('the discovery document must name the configured issuer', async (t) => {
  const { dg } = await setup(t, { issuer: 'https://kubernetes.default.svc', waitReady: false });
  t.notOk(dg.dg.ready);
  const status = dg.dg.generation.identity.keySets().values().next().value!.status();
  t.match(status.lastError, /the document's issuer is "https:\/\/kubernetes\.default\.svc\.cluster\.local", the rules say "https:\/\/kubernetes\.default\.svc"/);
});

t.test('discovery and the keys share one timeout', async (t) => {
  const { api, dg } = await setup(t);
  // Each answer 1.2 s late, with timeout 2s: the keys' request gets what the document left.
  api.delayMs = 1_200;
  const before = api.seen.length;
  const keySet = dg.dg.generation.identity.keySets().values().next().value!;
  await keySet.start().catch(() => {});
  // Each request had the whole 2 s before: the fetch took 2.4 s, and succeeded.
  t.match(keySet.status().lastError, /no whole answer within jwks\.timeout/, 'the fetch timed out, within the one timeout');
  // The fake API server records a request when it answers it (1.2 s after it came): discovery
  // finished inside the timeout, and the keys' request was the one cut.
  let keysAsked = false;
  for (let i = 0; i < 60 && !keysAsked; i++) {
    keysAsked = api.seen.slice(before).some((s) => s.path === '/openid/v1/jwks');
    if (!keysAsked) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(keysAsked, 'the keys were asked for: the time discovery left was what ran out');
});

t.test('the pod token is sent to the API server only, never to a jwks_uri elsewhere', async (t) => {
  const key = await testKey('RS256');
  const elsewhere = await fakeApiServer([key.publicJwk], 'unused', 'oidc.public.example');
  // Trusted (so that the request is made), but not the discovery origin.
  const { api, dg } = await setup(t, { alsoTrust: elsewhere.ca });
  t.teardown(() => elsewhere.close());
  // A managed cluster's discovery can point at a public OIDC endpoint. Here the other server
  // answers 401 to anything (it expects a token nobody sends), so the fetch fails; what
  // matters is what it was sent.
  elsewhere.expectedToken = 'nobody';
  api.jwksUri = `${elsewhere.origin}/keys`;
  const keySet = dg.dg.generation.identity.keySets().values().next().value!;
  await keySet.start().catch(() => {});
  t.ok(elsewhere.seen.length >= 1, 'the keys were asked for at the jwks_uri');
  t.same(elsewhere.seen.map((s) => s.bearer), elsewhere.seen.map(() => undefined), 'without the pod token');
  t.equal(keySet.status().lastError, `jwks_uri ${elsewhere.origin}/keys: HTTP 401`, 'the failure names the jwks_uri, not the discovery URL');
});

t.test('an API server that names its jwks_uri under another address of its own (kubeadm, kind): its keys are read where it was reached, with the token', async (t) => {
  // kube-apiserver advertises https://<advertise-address>:6443/openid/v1/jwks; a pod reaches it
  // by the service address. Here: reached at 127.0.0.1, advertising localhost.
  const { key, api, dg } = await setup(t, { waitReady: false });
  api.jwksUri = `${api.origin.replace('127.0.0.1', 'localhost')}/openid/v1/jwks`;
  const before = api.seen.length;
  const keySet = dg.dg.generation.identity.keySets().values().next().value!;
  await keySet.start().catch(() => {});
  t.equal(keySet.status().lastError, undefined, 'the keys were read (it was: HTTP 401, the key request went without the token)');
  t.same(api.seen.slice(before).map((s) => [s.path, s.bearer]), [['/.well-known/openid-configuration', POD_TOKENS[0]], ['/openid/v1/jwks', POD_TOKENS[0]]], 'from the API server as reached, with the pod token');
  t.equal((await call(dg.url, await saToken(key))).status, 200, 'and a service-account token verifies');
});
