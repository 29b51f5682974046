// A subject is only a string in sub, and any issuer can write any string there. Each
// registered consumer is vouched for by one issuer, and the SPIFFE and service-account forms
// belong to their own profiles: an OAuth provider's token with sub spiffe://a.example/…, or a
// dev cluster's shop/checkout, is not the production consumer of that name.
// Real keys, key sets in files read by the loader, a real upstream and a real driftguard.

import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { testKey, jwks, type TestKey } from '../support/keys.ts';
import { upstream } from '../support/servers.ts';
import { baseRules, startTest, writeRules } from '../support/driftguard.ts';
import { loadRules, RulesError } from '../../proxy/rules/load.ts';

const SPIRE_A = 'https://spire-a.example', OAUTH = 'https://idp.example';
const PROD = 'https://prod-cluster.example', DEV = 'https://dev-cluster.example';
const AUD = 'driftguard.io/orders';
const AGENT = 'spiffe://a.example/ns/pay/sa/agent';
const CHECKOUT = 'system:serviceaccount:shop:checkout';

const names = ['a', 'oauth', 'prod', 'dev'] as const;
const keys = Object.fromEntries(await Promise.all(names.map(async (n) => [n, await testKey('ES256', `kid-${n}`)] as const))) as Record<typeof names[number], TestKey>;
const dir = mkdtempSync(join(tmpdir(), 'dg-issuers-'));
const file = (n: typeof names[number]) => { const f = join(dir, `${n}.json`); writeFileSync(f, JSON.stringify(jwks(keys[n]))); return { file: f }; };

const issuers = () => [
  { issuer: SPIRE_A, profile: 'spiffe', trustDomain: 'a.example', audiences: [AUD], algorithms: ['ES256'], jwks: file('a') },
  { issuer: OAUTH, profile: 'oauth', audiences: [AUD], algorithms: ['ES256'], jwks: file('oauth') },
  { issuer: PROD, profile: 'kubernetes', audiences: [AUD], algorithms: ['ES256'], jwks: file('prod') },
  { issuer: DEV, profile: 'kubernetes', audiences: [AUD], algorithms: ['ES256'], jwks: file('dev') },
];

function rules(upstreamOrigin: string, registry: Record<string, unknown>[]): Record<string, any> {
  return baseRules(upstreamOrigin, 'http://127.0.0.1:9/unused', (r) => {
    r.identity.issuers = issuers();
    r.consumers.registry = registry;
  });
}

function problems(registry: Record<string, unknown>[]): { field: string; line: number; message: string }[] {
  try { loadRules(writeRules(rules('http://127.0.0.1:9', registry))); } catch (err) { if (err instanceof RulesError) return [...err.problems]; throw err; }
  return [];
}

function mint(key: TestKey, claims: Record<string, unknown>): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ aud: AUD, iat: now, exp: now + 300, jti: crypto.randomUUID(), scope: 'items.read', contract_version: '2026-09', ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' }).sign(key.privateKey);
}

const serviceAccount = (ns: string, name: string) => ({
  sub: `system:serviceaccount:${ns}:${name}`,
  'kubernetes.io': { namespace: ns, serviceaccount: { name, uid: '0b6e3f6c-1111-4a4a-9b9b-2c2c2c2c2c2c' }, pod: { name: 'p', uid: '5e5e5e5e-2222-4b4b-8c8c-3d3d3d3d3d3d' } },
});

t.test('the loader binds each registered subject to one issuer, and says when it cannot', async (t) => {
  const two = problems([{ subject: AGENT, kind: 'automation', owner: 'team-pay' }, { subject: CHECKOUT, kind: 'automation', owner: 'team-shop' }]);
  t.same(two.map((p) => p.field), ['consumers.registry[1].subject'], 'the SPIFFE ID has one issuer; the service account two clusters');
  t.match(two[0]?.message, `2 issuers can vouch for subject "${CHECKOUT}" (${PROD}, ${DEV}): set issuer`);
  t.ok(two[0]!.line > 0, 'at its line');
  t.same(problems([{ subject: CHECKOUT, issuer: PROD, kind: 'automation', owner: 'team-shop' }]), [], 'issuer chooses the cluster');
  const wrong = problems([
    { subject: AGENT, issuer: OAUTH, kind: 'automation', owner: 'team-pay' },
    { subject: 'client-7', issuer: 'https://nobody.example', kind: 'automation', owner: 'x' },
    { subject: 'client-8', issuer: PROD, kind: 'automation', owner: 'x' },
  ]);
  t.same(wrong.map((p) => p.field), ['consumers.registry[0].issuer', 'consumers.registry[1].issuer', 'consumers.registry[2].issuer']);
  t.match(wrong[0]?.message, /cannot vouch for subject "spiffe:\/\/a\.example\/ns\/pay\/sa\/agent": the subject is a SPIFFE ID of trust domain a\.example/);
  t.match(wrong[1]?.message, /is not an identity\.issuers\[\]\.issuer/);
  t.match(wrong[2]?.message, /vouches only for system:serviceaccount/);
  // Subjects of the spiffe issuer's trust domain that no JWT-SVID can carry: silently dead entries.
  const dead = problems([
    { subject: 'spiffe://a.example/ns/pay/sa/b/', kind: 'automation', owner: 'x' },
    { subject: 'spiffe://A.example/ns/pay/sa/c', kind: 'automation', owner: 'x' },
    { subject: 'spiffe://a.example/ns/pay%2Fsa/d', kind: 'automation', owner: 'x' },
  ]);
  t.same(dead.map((p) => p.field), [0, 1, 2].map((i) => `consumers.registry[${i}].subject`));
  t.match(dead[0]?.message, /is not a SPIFFE ID a JWT-SVID can carry \(invalid path\)/);
  t.match(dead[1]?.message, /\(invalid trust domain\)/);
});

t.test('a token from another issuer is not the registered consumer', async (t) => {
  const up = await upstream();
  const dg = await startTest(rules(up.origin, [
    { subject: AGENT, kind: 'automation', owner: 'team-pay' },
    { subject: CHECKOUT, issuer: PROD, kind: 'automation', owner: 'team-shop' },
  ]));
  t.teardown(async () => { await dg.close(); await up.close(); });
  const call = async (token: string) => {
    const before = up.seen.length;
    const res = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.text();
    t.notMatch(text, token, 'the token is not in the answer');
    return { status: res.status, body: res.status >= 400 ? JSON.parse(text) : undefined, consumer: up.seen.length > before ? up.seen.at(-1)!.headers['driftguard-consumer'] : undefined };
  };

  t.match(await call(await mint(keys.prod, { iss: PROD, ...serviceAccount('shop', 'checkout') })), { status: 200, consumer: CHECKOUT }, 'the production cluster\'s checkout');
  t.match(await call(await mint(keys.a, { iss: SPIRE_A, sub: AGENT })), { status: 200, consumer: AGENT }, 'the SPIFFE agent from its trust domain');

  const dev = await call(await mint(keys.dev, { iss: DEV, ...serviceAccount('shop', 'checkout') }));
  t.match(dev, { status: 401, body: { code: 'invalid-credential', detail: 'the subject is registered to another issuer' }, consumer: undefined }, 'the dev cluster\'s shop/checkout');

  // A port or userinfo in the authority: a URL parser reads host a.example (they went through).
  // So it does with a tab or line break anywhere, or controls and spaces at either end, which it
  // drops (they went through too); a name an upstream trims is the service account's.
  for (const sub of [AGENT, 'SPIFFE://A.Example/ns/pay/sa/agent', 'spiffe://a.example:443/ns/pay/sa/agent', 'spiffe://x@a.example/ns/pay/sa/agent', CHECKOUT, 'System:ServiceAccount:shop:checkout',
    `\t${AGENT}`, ` ${AGENT}`, `\u0000${AGENT}\u001f`, 'spiffe://a.exa\tmple/ns/pay/sa/agent', 'spiffe:/\n/a.example/ns/pay/sa/agent', ` ${CHECKOUT}`, `\t${CHECKOUT}`, `${CHECKOUT}\n`, `\u00a0${CHECKOUT}`, `\ufeff${CHECKOUT}`, `\u3000\u200b${CHECKOUT}`]) {
    const r = await call(await mint(keys.oauth, { iss: OAUTH, sub }));
    t.match(r, { status: 401, body: { code: 'invalid-credential', detail: /^this issuer cannot vouch for the subject: / }, consumer: undefined }, `an OAuth token with sub ${JSON.stringify(sub)}`);
  }
  t.equal(up.seen.length, 2, 'only the two genuine callers reached the upstream');
});
