// profile: spiffe: what the JWT-SVID specification requires, checked on real tokens through
// a real driftguard (JWKS on loopback).

import t from 'tap';
import { SignJWT } from 'jose';
import { testKey, jwks, token, AUDIENCE } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, startTest, AGENT } from '../support/driftguard.ts';

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
});
