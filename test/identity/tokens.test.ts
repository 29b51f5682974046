// Token verification through a real driftguard: every allowed algorithm verifies with a real
// key from a real JWKS, and each forgery or unsafe default is refused with 401
// invalid-credential before anything reaches the upstream.

import t, { type Test } from 'tap';
import { createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, sign as rawSign, verify as cryptoVerify } from 'node:crypto';
import { SignJWT, exportJWK } from 'jose';
import { world, AGENT, HUMAN, type World } from '../core/world.ts';
import { ISSUER, AUDIENCE, testKey } from '../support/keys.ts';
import { jwksServer } from '../support/servers.ts';
import { noopObserver, type Observer } from '../../proxy/observe.ts';
import { ecdsaTwin } from '../../proxy/identity/verify.ts';

const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return { iss: ISSUER, aud: AUDIENCE, sub: AGENT, iat: now, exp: now + 300, scope: 'items.read', contract_version: '2026-09', ...extra };
}

async function refused(t: Test, w: World, token: string, what: string): Promise<void> {
  const before = w.up.seen.length;
  const a = await w.call('GET', '/items/1', { token });
  t.equal(a.status, 401, `${what}: 401`);
  t.equal(a.json?.code, 'invalid-credential', `${what}: invalid-credential`);
  t.match(a.headers.get('www-authenticate') ?? '', /error="invalid_token"/, `${what}: invalid_token challenge`);
  t.equal(w.up.seen.length, before, `${what}: not forwarded`);
}

t.test('ES256, RS256 and EdDSA tokens verify against the issuer\'s JWKS', async (t) => {
  const w = await world(t);
  for (const key of [w.keys.es, w.keys.rs, w.keys.ed]) {
    const a = await w.call('GET', '/items/1', { token: await w.tok({ key }) });
    t.equal(a.status, 200, `${key.alg} verifies`);
  }
  t.equal(w.up.seen.length, 3);
  // A token without a kid verifies when exactly one key of its algorithm is published.
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ header: { kid: undefined } }) })).status, 200, 'no kid');
  // The scheme is case-insensitive, and more than one space is tolerated.
  for (const scheme of ['bearer', 'BEARER', 'Bearer  ']) {
    const a = await w.call('GET', '/items/1', { headers: { authorization: `${scheme} ${await w.tok()}` } });
    t.equal(a.status, 200, JSON.stringify(scheme));
  }
});

t.test('an algorithm outside the issuer\'s allowlist is refused, even with a trusted key', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].algorithms = ['ES256']; });
  t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, 'ES256 is allowed');
  await refused(t, w, await w.tok({ key: w.keys.rs }), 'RS256 not in the allowlist');
  await refused(t, w, await w.tok({ key: w.keys.ed }), 'EdDSA not in the allowlist');
  // Without a kid too, and before any key is looked up: no refetch, and no 503 while the key
  // server is down (it was 503 identity-unavailable, retry later, for a token that never passes).
  w.jwks.down = true;
  const fetches = w.jwks.fetches;
  // ES384: no key of the set could verify it, so none is a candidate and the set was refetched.
  for (const key of [w.keys.rs, w.keys.ed, await testKey('ES384')]) {
    const a = await w.call('GET', '/items/1', { token: await w.tok({ key, header: { kid: undefined } }) });
    t.equal(a.status, 401, `${key.alg} without kid: 401`);
    t.equal(a.json.detail, 'signature algorithm not allowed');
  }
  t.equal(w.jwks.fetches, fetches, 'no key fetch');
});

t.test('one token is one text: padding or spare bits in its base64url are a malformed token, not another cache entry', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
  const [h, p, sig] = tok.split('.') as [string, string, string];
  // ES256's 64-byte signature leaves 4 spare bits in its last character; the payload's last
  // character may have some too.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const spare = (seg: string) => {
    const last = seg.at(-1)!;
    for (const c of alphabet) {
      const other = seg.slice(0, -1) + c;
      if (c !== last && Buffer.from(other, 'base64url').equals(Buffer.from(seg, 'base64url'))) return other;
    }
    return undefined;
  };
  const variants = [`${h}.${p}.${sig}==`, `${h}.${p}.${spare(sig)}`, `${h}=.${p}.${sig}`];
  const sparePayload = spare(p);
  if (sparePayload) variants.push(`${h}.${sparePayload}.${sig}`);
  for (const v of variants) await refused(t, w, v, `variant ${v.slice(-12)}`);
});

t.test('an ECDSA token\'s twin text, its signature (r, n - s), is the cached token: no second check, no second entry; a forged s is refused', async (t) => {
  const results: boolean[] = [];
  const counting: Observer = { begin: () => noopObserver.begin(undefined as never), tokenCache: (hit) => { results.push(hit); } };
  const w = await world(t, () => {}, { observer: counting });
  const tok = await w.tok();
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200, 'the token');
  const entries = () => w.dg.dg.tables.get('token_cache')!().entries;
  const before = entries();
  const twin = ecdsaTwin(tok)!;
  t.not(twin, tok);
  const a = await w.call('GET', '/items/1', { token: twin });
  t.equal(a.status, 200, 'the twin is the same token, and valid');
  t.equal(entries(), before, 'answered from the token\'s entry: no second');
  t.same(results, [false, true], 'a miss for the token, a hit for its twin: no signature checked');
  // s + 1 is no signature: never answered from the cache.
  const [h, p, sig] = tok.split('.') as [string, string, string];
  const raw = Buffer.from(sig, 'base64url');
  const s = BigInt(`0x${raw.subarray(32).toString('hex')}`) + 1n;
  const forged = `${h}.${p}.${Buffer.concat([raw.subarray(0, 32), Buffer.from(s.toString(16).padStart(64, '0'), 'hex')]).toString('base64url')}`;
  await refused(t, w, forged, 'a signature with s + 1');
  t.equal(entries(), before, 'and not cached');
});

t.test('ecdsaTwin: for each curve, the twin verifies with the key and its twin is the token; other algorithms have none', async (t) => {
  const jws = (alg: string, key: Parameters<typeof rawSign>[2], digest: string | null) => {
    const head = `${b64({ alg })}.${b64(claims())}`;
    return `${head}.${rawSign(digest, Buffer.from(head), key).toString('base64url')}`;
  };
  for (const [alg, namedCurve, digest] of [['ES256', 'P-256', 'sha256'], ['ES384', 'P-384', 'sha384'], ['ES512', 'P-521', 'sha512']] as const) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve });
    for (let i = 0; i < 8; i++) {
      const token = jws(alg, { key: privateKey, dsaEncoding: 'ieee-p1363' }, digest);
      const twin = ecdsaTwin(token);
      if (twin === undefined) { t.fail(`${alg}: no twin`); break; }
      const [h, p, sig] = twin.split('.') as [string, string, string];
      t.not(twin, token, `${alg}: another text`);
      t.ok(cryptoVerify(digest, Buffer.from(`${h}.${p}`), { key: publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(sig, 'base64url')), `${alg}: the twin verifies`);
      t.equal(ecdsaTwin(twin), token, `${alg}: the twin's twin is the token`);
    }
  }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  t.equal(ecdsaTwin(jws('RS256', rsa.privateKey, 'sha256')), undefined, 'RS256: none');
  // Ed25519's 64-byte signature is as long as ES256's: told apart by the header's alg.
  const ed = generateKeyPairSync('ed25519');
  t.equal(ecdsaTwin(jws('EdDSA', ed.privateKey, null)), undefined, 'EdDSA: none');
  // An ES256 header on a signature of another size: jose's to refuse.
  t.equal(ecdsaTwin(`${b64({ alg: 'ES256' })}.${b64(claims())}.${Buffer.alloc(96).toString('base64url')}`), undefined, 'a 96-byte signature under ES256: none');
});

t.test('alg none, HS256 keyed with the public key, and an embedded jwk are refused', async (t) => {
  const w = await world(t);
  const payload = b64(claims());
  await refused(t, w, `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`, 'alg none');
  await refused(t, w, `${b64({ alg: 'none', typ: 'JWT', kid: w.keys.es.kid })}.${payload}.`, 'alg none with a real kid');
  await refused(t, w, `${b64({ alg: 'NONE' })}.${payload}.`, 'alg NONE');
  // The classic key-confusion attack: HMAC keyed with the bytes of the issuer's public key.
  const rsPublic = createPublicKey({ key: w.keys.rs.publicJwk as any, format: 'jwk' });
  const esPublic = createPublicKey({ key: w.keys.es.publicJwk as any, format: 'jwk' });
  for (const [name, secret, kid] of [
    ['RSA public key PEM', rsPublic.export({ type: 'spki', format: 'pem' }), w.keys.rs.kid],
    ['RSA public key PKCS#1 PEM', rsPublic.export({ type: 'pkcs1', format: 'pem' }), w.keys.rs.kid],
    ['RSA public key DER', rsPublic.export({ type: 'spki', format: 'der' }), w.keys.rs.kid],
    ['RSA public JWK JSON', JSON.stringify(w.keys.rs.publicJwk), w.keys.rs.kid],
    ['EC public key PEM', esPublic.export({ type: 'spki', format: 'pem' }), w.keys.es.kid],
  ] as const) {
    const head = `${b64({ alg: 'HS256', typ: 'JWT', kid })}.${payload}`;
    const mac = createHmac('sha256', secret).update(head).digest('base64url');
    await refused(t, w, `${head}.${mac}`, `HS256 keyed with the ${name}`);
  }
  // A token that carries its own verification key (jwk header) signed by the attacker.
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const attackerJwk = await exportJWK(publicKey);
  const forged = await new SignJWT(claims()).setProtectedHeader({ alg: 'ES256', jwk: attackerJwk, kid: w.keys.es.kid }).sign(privateKey);
  await refused(t, w, forged, 'embedded jwk signed by an attacker');
  // The real key id on a token signed by another key.
  const other = await testKey('ES256', w.keys.es.kid);
  await refused(t, w, await w.tok({ key: other }), 'a trusted kid on a foreign signature');
  // A valid token with its signature swapped for another token's.
  const [h1, p1] = (await w.tok()).split('.');
  const sig2 = (await w.tok({ sub: HUMAN })).split('.')[2];
  await refused(t, w, `${h1}.${p1}.${sig2}`, 'a signature from another token');
  // An unknown critical header.
  // An unknown critical header (jose will not sign one, so sign the bytes directly).
  const critHead = `${b64({ alg: 'ES256', kid: w.keys.es.kid, crit: ['x-must'], 'x-must': 1 })}.${payload}`;
  const esPrivate = createPrivateKey({ key: w.keys.es.privateJwk as any, format: 'jwk' });
  const critSig = rawSign('sha256', Buffer.from(critHead), { key: esPrivate, dsaEncoding: 'ieee-p1363' }).toString('base64url');
  await refused(t, w, `${critHead}.${critSig}`, 'unknown crit header');
  // An ES256 signature of all zeros (the "psychic signature" class).
  const zero = `${b64({ alg: 'ES256', kid: w.keys.es.kid })}.${payload}.${Buffer.alloc(64).toString('base64url')}`;
  await refused(t, w, zero, 'zero ECDSA signature');
});

t.test('a protected header that is not JSON, or has no alg, is a malformed token', async (t) => {
  const w = await world(t);
  const payload = b64(claims());
  for (const [name, header] of [['not JSON', b64('not json')], ['not an object', b64('[1]')], ['no alg, no kid', b64({ typ: 'JWT' })]] as const) {
    await refused(t, w, `${header}.${payload}.c2ln`, name);
    const a = await w.call('GET', '/items/1', { token: `${header}.${payload}.c2ln` });
    t.match(a.json?.detail, /malformed token|unsupported token/, `${name}: said so (${a.json?.detail})`);
  }
});

t.test('registered claims: exp required, iss, aud and typ checked, nbf and iat respected', async (t) => {
  const w = await world(t);
  await refused(t, w, await w.tok({ omit: ['exp'] }), 'missing exp');
  await refused(t, w, await w.tok({ omit: ['sub'] }), 'missing sub');
  await refused(t, w, await w.tok({ iss: 'https://evil.example' }), 'unknown iss');
  await refused(t, w, await w.tok({ omit: ['iss'] }), 'missing iss');
  await refused(t, w, await w.tok({ aud: 'another-api' }), 'wrong aud');
  await refused(t, w, await w.tok({ omit: ['aud'] }), 'missing aud');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ aud: ['another-api', AUDIENCE] }) })).status, 200, 'aud array containing ours');
  const now = Math.floor(Date.now() / 1000);
  await refused(t, w, await w.tok({ nbf: now + 600 }), 'nbf in the future');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ nbf: now + 10 }) })).status, 200, 'nbf within clock skew');
  await refused(t, w, await w.tok({ now: Date.now() + 600_000 }), 'iat in the future');
  await refused(t, w, await w.tok({ now: Date.now() - 600_000, ttl: 300 }), 'expired');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ now: Date.now() - 310_000, ttl: 300 }) })).status, 200, 'expired within clock skew');
  await refused(t, w, `${'a'.repeat(7_000)}.${'b'.repeat(7_000)}.c`, 'a 14 KiB garbage token');
  const huge = await w.call('GET', '/items/1', { token: 'a'.repeat(17_000) });
  t.equal(huge.status, 431, 'a 17 KiB Authorization header is refused by the listener');
  t.equal(huge.json?.code, 'headers-too-large');
  // In words a consumer's developer acts on (jose's own: "claim aud failed: check_failed"),
  // without naming the values the issuer expects.
  for (const [what, o, detail] of [
    ['wrong aud', { aud: 'another-api' }, 'the token\'s aud is not an audience this issuer\'s tokens are accepted for'],
    ['missing aud', { omit: ['aud'] }, 'the token has no aud claim'],
    ['nbf in the future', { nbf: now + 600 }, 'token not valid yet (nbf is in the future)'],
  ] as const) {
    const a = await w.call('GET', '/items/1', { token: await w.tok(o as never) });
    t.equal(a.json?.detail, detail, what);
    t.notMatch(a.json?.detail, new RegExp(AUDIENCE), `${what}: the expected audience is not named`);
  }
});

t.test('typ is enforced where the issuer configures it', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].typ = 'at+jwt'; });
  await refused(t, w, await w.tok(), 'typ JWT where at+jwt is required');
  await refused(t, w, await w.tok({ header: { typ: undefined } }), 'no typ where at+jwt is required');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ header: { typ: 'at+jwt' } }) })).status, 200, 'typ at+jwt');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ header: { typ: 'application/at+jwt' } }) })).status, 200, 'typ application/at+jwt (RFC 7515 §4.1.9)');
});

t.test('tokens are never taken from the query string', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  for (const q of [`access_token=${tok}`, `token=${tok}`, `id_token=${tok}`, `authorization=Bearer%20${tok}`]) {
    const a = await w.call('GET', `/items/1?${q}`);
    t.equal(a.status, 401, q.split('=')[0]!);
    t.equal(a.json.code, 'missing-credential');
  }
  t.equal(w.up.seen.length, 0);
});

t.test('a cached token is re-checked for expiry on every hit', async (t) => {
  let clock = Date.now();
  const w = await world(t, () => {}, { now: () => clock });
  const tok = await w.tok({ ttl: 60 });
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200, 'a cache hit');
  clock += 120_000;
  const a = await w.call('GET', '/items/1', { token: tok });
  t.equal(a.status, 401, 'expired while cached');
  t.equal(a.json.code, 'invalid-credential');
  t.equal(w.up.seen.length, 2);
});

t.test('a cached token is re-checked for nbf on every hit: a clock set back does not let it in early', async (t) => {
  let clock = Date.now();
  const w = await world(t, () => {}, { now: () => clock });
  const nbf = Math.floor(clock / 1000);
  // Issued before its nbf: the iat check, which runs on every hit, does not catch the step.
  const tok = await w.tok({ now: clock - 400_000, nbf, ttl: 1200 });
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200, 'verified at nbf');
  clock -= 300_000; // an NTP step back of 5 minutes, past the 30 s skew
  const a = await w.call('GET', '/items/1', { token: tok });
  t.equal(a.status, 401, 'refused from the cache as a fresh check refuses it');
  t.equal(a.json.detail, 'token not valid yet (nbf is in the future)');
  clock += 300_000 - 29_000; // within the skew of nbf
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200, 'within the skew, a hit again');
  t.equal(w.up.seen.length, 2);
});

t.test('the verified-token cache is bounded by the heap its entries hold, not only by count', async (t) => {
  // Three tokens of about 1.8 KiB, each weighing about 2 KiB, and room for 4 KiB: the oldest
  // is pushed out although maxEntries (10,000) is far away. The observer counts cache hits
  // and misses.
  const results: boolean[] = [];
  const counting: Observer = { begin: () => noopObserver.begin(undefined as never), tokenCache: (hit) => { results.push(hit); } };
  const w = await world(t, (r) => { r.identity.cache = { maxBytes: 4096 }; }, { observer: counting });
  const padding = 'x'.repeat(1000);
  const [a, b, c] = [await w.tok({ claims: { note: padding } }), await w.tok({ claims: { note: padding } }), await w.tok({ claims: { note: padding } })];
  t.ok(a.length > 1500 && a.length < 2048, `${a.length} bytes`);
  for (const tok of [a, b, c, c, a]) t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
  t.same(results, [false, false, false, true, false], 'c is a hit; a, pushed out by b and c, is verified again');
});

t.test('a token is weighed by its parsed claims, not its text: 4 KB of empty arrays weighs 33 KB', async (t) => {
  // Room for 64 KiB. Each token's text is under 4 KB, its claims 800 empty arrays: about
  // 33 KB on the heap (measured: 41 bytes an array), so one fits and the next pushes it out.
  // Weighed by its text, as before, all four stayed: about 2,000 such tokens ran the chart's
  // 96 MiB heap out.
  const results: boolean[] = [];
  const counting: Observer = { begin: () => noopObserver.begin(undefined as never), tokenCache: (hit) => { results.push(hit); } };
  const w = await world(t, (r) => { r.identity.cache = { maxBytes: 65536 }; }, { observer: counting });
  const toks = [];
  for (let i = 0; i < 4; i++) toks.push(await w.tok({ claims: { pad: Array.from({ length: 800 }, () => []) } }));
  t.ok(toks.every((x) => x.length < 4096), 'each under maxTokenBytes: cacheable');
  for (const tok of [...toks, toks[3]!, toks[0]!]) t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
  t.same(results, [false, false, false, false, true, false], 'the last one is a hit; the first, pushed out, is verified again');
});

t.test('a token of many short scopes is weighed by its scope set too', async (t) => {
  // 676 two-letter scopes: about 2 KB of claims, but a string and a set slot each once split
  // (880 of them held 23.7 KB an entry, measured). Room for 64 KiB: one fits, the next pushes
  // it out. Weighed by the claims alone, as before, each counted about 3 KB and all stayed.
  const results: boolean[] = [];
  const counting: Observer = { begin: () => noopObserver.begin(undefined as never), tokenCache: (hit) => { results.push(hit); } };
  const w = await world(t, (r) => { r.identity.cache = { maxBytes: 65536 }; }, { observer: counting });
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  const scope = ['items.read', ...Array.from({ length: 676 }, (_, i) => letters[Math.floor(i / 26)]! + letters[i % 26]!)].join(' ');
  const toks = [];
  for (let i = 0; i < 3; i++) toks.push(await w.tok({ scope }));
  t.ok(toks.every((x) => x.length < 4096), 'each under maxTokenBytes: cacheable');
  for (const tok of [...toks, toks[2]!, toks[0]!]) t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200);
  t.same(results, [false, false, false, true, false], 'the last is a hit; the first, pushed out, is verified again');
});

t.test('keys from a JWKS file work the same way', async (t) => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'dg-jwks-'));
  const k = await testKey('EdDSA');
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [k.publicJwk] }));
  const w = await world(t, (r) => { r.identity.issuers[0].jwks = { file: join(dir, 'jwks.json') }; });
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ key: k }) })).status, 200);
  await refused(t, w, await w.tok(), 'a key that is not in the file');
});

t.test('an entry of a JWKS that is no key is passed over, in a fetched set and in a file', async (t) => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const k = await testKey('ES256');
  const keys = [k.publicJwk, null, 'x', 42, []];
  // jose refused the whole set for one of these: never ready, every token 503.
  const server = await jwksServer({ keys });
  t.teardown(() => server.close());
  const fetched = await world(t, (r) => { r.identity.issuers[0].jwks.url = server.url; });
  t.ok(fetched.dg.dg.ready, 'ready');
  t.equal((await fetched.call('GET', '/items/1', { token: await fetched.tok({ key: k }) })).status, 200, 'fetched');
  const dir = mkdtempSync(join(tmpdir(), 'dg-jwks-'));
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys }));
  const w = await world(t, (r) => { r.identity.issuers[0].jwks = { file: join(dir, 'jwks.json') }; });
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ key: k }) })).status, 200, 'from a file');
});
