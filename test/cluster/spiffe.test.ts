// profile: spiffe: what the JWT-SVID specification requires, checked on real tokens through
// a real driftguard (JWKS on loopback).

import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { testKey, jwks, token, AUDIENCE } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, startTest, AGENT } from '../support/driftguard.ts';
import { spiffeSubject } from '../../proxy/identity/spiffe.ts';

const ISSUER = 'https://spire.test.local';

t.test('JWT-SVIDs: what the specification requires', async (t) => {
  const es = await testKey('ES256');
  const ed = await testKey('EdDSA');
  const up = await upstream();
  const keys = await jwksServer(jwks(es, ed));
  const dg = await startTest(baseRules(up.origin, keys.url, (r) => {
    Object.assign(r.identity.issuers[0], { issuer: ISSUER, profile: 'spiffe', trustDomain: 'test.local', algorithms: ['ES256', 'RS256', 'PS256'] });
  }));
  t.teardown(async () => { await dg.close(); await up.close(); await keys.close(); });
  const svid = (o: Parameters<typeof token>[0]) => token({ iss: ISSUER, sub: AGENT, scope: 'items.read', contract: '2026-09', ...o });
  const call = async (tok: string) => {
    const res = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
    return { status: res.status, body: await res.json() as any };
  };

  const ok = await call(await svid({ key: es }));
  t.equal(ok.status, 200, 'a valid SVID');
  t.equal(up.seen.at(-1)!.headers['driftguard-consumer'], AGENT);
  t.equal((await call(await svid({ key: es, omit: ['iss'] }))).status, 200, 'an SVID without iss is matched by its trust domain');

  const hs = await new SignJWT({ iss: ISSUER, sub: AGENT, aud: AUDIENCE, scope: 'items.read', exp: Math.floor(Date.now() / 1000) + 300, iat: Math.floor(Date.now() / 1000) })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(new TextEncoder().encode('a shared secret of thirty-two bytes!'));
  const refused: [string, string][] = [
    ['wrong trust domain', await svid({ key: es, sub: 'spiffe://other.local/ns/app/sa/agent' })],
    ['wrong trust domain, no iss', await svid({ key: es, sub: 'spiffe://other.local/ns/app/sa/agent', omit: ['iss'] })],
    ['a trust domain, not a workload', await svid({ key: es, sub: 'spiffe://test.local' })],
    ['not a SPIFFE ID', await svid({ key: es, sub: 'agent@test.local' })],
    ['a dot-dot path segment', await svid({ key: es, sub: 'spiffe://test.local/ns/../sa/agent' })],
    ['missing aud', await svid({ key: es, omit: ['aud'] })],
    ['EdDSA', await svid({ key: ed })],
    ['HS256', hs],
    ['typ other than JWT or JOSE', await svid({ key: es, header: { typ: 'at+jwt' } })],
  ];
  for (const [what, tok] of refused) {
    const r = await call(tok);
    t.equal(r.status, 401, what);
    t.equal(r.body.code, 'invalid-credential', what);
  }
  // Without iss, the detail says why no issuer was found (it said "untrusted issuer" for all).
  for (const [sub, detail] of [
    ['spiffe://test.local/ns/a/', /^untrusted issuer: no iss, and sub is not a workload SPIFFE ID \(/],
    ['spiffe://test.local/ns/../sa/agent', /^untrusted issuer: no iss, and sub is not a workload SPIFFE ID \(/],
    ['spiffe://other.local/ns/app/sa/agent', /^untrusted issuer: no iss, and the SPIFFE ID's trust domain is not trusted$/],
    ['agent@test.local', /^untrusted issuer: no iss, and sub is not a workload SPIFFE ID/],
  ] as const) {
    const r = await call(await svid({ key: es, sub, omit: ['iss'] }));
    t.match(r.body.detail, detail, sub);
  }
  // typ is case-insensitive (RFC 7515 §4.1.9).
  t.equal((await call(await svid({ key: es, header: { typ: 'jwt' } }))).status, 200, 'typ jwt');
  t.equal((await call(await svid({ key: es, header: { typ: 'JO\u017fE' } }))).status, 401, 'typ JOſE: ASCII case only');
});

// A SPIFFE bundle (SPIFFE Trust Domain and Bundle spec, 4.2) marks each key with its use. jose
// takes only keys with no use or use sig, so without driftguard's selection a bundle straight
// from SPIRE's bundle endpoint verifies no JWT-SVID at all. The x509-svid entry here carries no
// x5c certificate chain: driftguard selects keys by use alone, and a chain would not change that.
t.test('a SPIFFE bundle: its jwt-svid keys verify JWT-SVIDs, its x509-svid keys never do', async (t) => {
  const jwtAuthority = await testKey('ES256');
  const x509Authority = await testKey('ES256');
  const bundle = {
    spiffe_sequence: 7,
    spiffe_refresh_hint: 300,
    keys: [{ ...jwtAuthority.publicJwk, use: 'jwt-svid' }, { ...x509Authority.publicJwk, use: 'x509-svid' }],
  };
  const up = await upstream();
  const served = await jwksServer(bundle);
  const dir = mkdtempSync(join(tmpdir(), 'dg-bundle-'));
  const file = join(dir, 'bundle.json');
  writeFileSync(file, JSON.stringify(bundle));
  t.teardown(async () => { await up.close(); await served.close(); rmSync(dir, { recursive: true, force: true }); });

  for (const [source, jwksRule] of [['served over HTTP', { url: served.url, refresh: '5m', cooldown: '30s', timeout: '1s' }], ['read from a file', { file }]] as const) {
    const dg = await startTest(baseRules(up.origin, served.url, (r) => {
      Object.assign(r.identity.issuers[0], { issuer: ISSUER, profile: 'spiffe', trustDomain: 'test.local', algorithms: ['ES256'], jwks: jwksRule });
    }));
    t.teardown(() => dg.close()); // closed below too; close is idempotent
    const call = async (key: typeof jwtAuthority) => {
      const tok = await token({ key, iss: ISSUER, sub: AGENT, scope: 'items.read', contract: '2026-09' });
      const res = await fetch(`${dg.url}/items/7`, { headers: { authorization: `Bearer ${tok}` } });
      return { status: res.status, body: await res.json() as any };
    };
    const good = await call(jwtAuthority);
    t.equal(good.status, 200, `${source}: a JWT-SVID signed by the bundle's jwt-svid key`);
    const bad = await call(x509Authority);
    t.equal(bad.status, 401, `${source}: a JWT-SVID signed by the bundle's X.509 authority`);
    t.equal(bad.body.code, 'invalid-credential', source);
    await dg.close();
  }
});

// Each rule of the JWT-SVID profile on its own. Through a real driftguard most of these tokens
// are refused by another layer first (the rules' algorithms, jose's audience check, the
// subject's profile), which is defence in depth, but then a broken rule here would go unseen.
t.test('spiffeSubject: each JWT-SVID rule refuses on its own', async (t) => {
  const TD = 'test.local';
  const good = { aud: [AUDIENCE], sub: `spiffe://${TD}/ns/shop/sa/checkout` };
  const header = { alg: 'ES256', typ: 'JWT' };
  t.same(spiffeSubject(good, header, TD), { subject: good.sub });
  t.same(spiffeSubject(good, { alg: 'PS512' }, TD), { subject: good.sub }, 'no typ, another allowed algorithm');
  const refused: [string, Record<string, unknown>, Record<string, unknown>, RegExp][] = [
    ['typ', good, { alg: 'ES256', typ: 'at+jwt' }, /typ is JWT or JOSE/],
    ['HS256', good, { alg: 'HS256' }, /algorithm not allowed/],
    ['EdDSA', good, { alg: 'EdDSA' }, /algorithm not allowed/],
    ['no aud', { sub: good.sub }, header, /must have aud/],
    ['empty aud', { ...good, aud: [] }, header, /must have aud/],
    ['numeric sub', { ...good, sub: 7 }, header, /sub is a SPIFFE ID/],
    ['trust domain only', { ...good, sub: `spiffe://${TD}` }, header, /names a trust domain, not a workload/],
    ['dot segment', { ...good, sub: `spiffe://${TD}/ns/../sa` }, header, /invalid path/],
    ['other trust domain', { ...good, sub: 'spiffe://other.local/ns/shop/sa/checkout' }, header, /not in the trusted trust domain/],
  ];
  for (const [what, payload, h, detail] of refused) {
    const r = spiffeSubject(payload as never, h as never, TD);
    t.ok('detail' in r && detail.test(r.detail), `${what}: ${JSON.stringify(r)}`);
  }
});
