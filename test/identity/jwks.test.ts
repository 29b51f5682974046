// Remote JWKS behaviour against a real JWKS server on loopback that counts its fetches and
// can be taken down: unknown-kid floods, rotation, outages at start and later, and a JWKS
// server that never answers.

import t, { type Test } from 'tap';
import { createServer, request } from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer, listen, close } from '../support/servers.ts';
import { baseRules, startTest, AGENT } from '../support/driftguard.ts';
import { world, keys } from '../core/world.ts';
import { MAX_JWKS_KEYS, RemoteKeySet, UNLOADED_RETRY_MS } from '../../proxy/identity/jwks.ts';
import { discoveredKeySet } from '../../proxy/identity/cluster.ts';
import { until } from '../lifecycle/support.ts';
import { startWithTelemetry } from '../telemetry/support.ts';
import { matchEach } from '../support/lists.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('an unknown-kid flood costs at most one JWKS refetch per cooldown', async (t) => {
  // Tokens minted up front, so the floods themselves are quick against the cooldown.
  const k = await keys();
  const tokens = await Promise.all(Array.from({ length: 180 }, () => token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09', header: { kid: randomUUID() } })));
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1500ms'; });
  t.equal(w.jwks.fetches, 1, 'fetched once before ready');
  const flood = () => Promise.all(tokens.splice(0, 60).map(async (tok) => (await w.call('GET', '/items/1', { token: tok })).status));
  // Within the cooldown of the start-up fetch: no refetch at all. A kid never seen may be a key
  // the issuer has just rotated in: retry once the keys may be fetched (503 with Retry-After).
  const first = await flood();
  t.same(new Set(first), new Set([503]), 'every kid never seen is told to retry after the cooldown');
  t.equal(w.jwks.fetches, 1, 'no refetch within the cooldown');
  await sleep(1600);
  const second = await flood();
  t.same(new Set(second), new Set([401]), 'after the fetch they were seen before, an invalid credential');
  t.equal(w.jwks.fetches, 2, 'one refetch for the whole flood after the cooldown');
  const third = await flood();
  t.same(new Set(third), new Set([503]));
  t.equal(w.jwks.fetches, 2, 'none for the next flood within the new cooldown');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, 'known keys keep working through the flood');
  t.equal(w.up.seen.length, 1);
});

t.test('a kid the set names, on a token of another allowed algorithm: 401 at once, never 503; one refetch per cooldown finds a kid moved to that algorithm', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; });
  // Any caller's RSA key under the issuer's ES256 kid: no key of that kid can verify RS256.
  const forged = await testKey('RS256', w.keys.es.kid);
  const before = w.jwks.fetches;
  for (let i = 0; i < 3; i++) {
    const a = await w.call('GET', '/items/1', { token: await w.tok({ key: forged }) });
    // Before: 503 identity-unavailable "signing keys unavailable" within the cooldown, and a
    // refetch once per cooldown.
    t.equal(a.status, 401, `try ${i}: an invalid credential`);
    t.equal(a.json.reason, 'invalid-credential');
    if (i === 1) await sleep(1100);
  }
  // One refetch once the cooldown is over, as for a signature no key of the kid verifies: an
  // issuer may move a kid to a key of another algorithm (below).
  t.equal(w.jwks.fetches, before + 1, 'no fetch within the cooldown, one after it');
  t.equal(w.up.seen.length, 0);
  // The issuer moves the kid to a key of that algorithm: its tokens pass after one refetch.
  const moved = await testKey('RS256', w.keys.es.kid);
  w.jwks.body = jwks(moved);
  await sleep(1100);
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ key: moved }) })).status, 200, 'a kid moved to another algorithm is verified after a refetch, not refused until the next refresh');
});

t.test('a rotated-in key is picked up by the unknown-kid refetch', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; });
  const fresh = await testKey('ES256');
  w.jwks.body = jwks(w.keys.es, fresh);
  await sleep(1_050);
  const a = await w.call('GET', '/items/1', { token: await w.tok({ key: fresh }) });
  t.equal(a.status, 200);
  t.equal(w.jwks.fetches, 2);
});

t.test('an issuer that signs without kid, or reuses its kid, rotates: the first token of the new key fetches the keys once per cooldown', async (t) => {
  const [old, fresh, reused] = await Promise.all([testKey('ES256', 'es-old'), testKey('ES256', 'es-new'), testKey('ES256', 'es-new')]);
  const up = await upstream();
  const set = await jwksServer(jwks(old));
  const dg = await startTest(baseRules(up.origin, set.url, (r) => { r.identity.issuers[0].algorithms = ['ES256']; r.identity.issuers[0].jwks.cooldown = '1s'; }));
  t.teardown(async () => { await dg.close(); await up.close(); await set.close(); });
  const call = async (key: typeof old, kid = true) => {
    const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09', header: kid ? {} : { kid: undefined } });
    const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
    return { status: res.status, body: await res.json() as { detail?: string } };
  };
  t.equal((await call(old, false)).status, 200, 'the old key verifies a token without kid');
  set.body = jwks(fresh);
  await sleep(1_050);
  let before = set.fetches;
  // Before: 401 signature verification failed, and no fetch, until the background refresh (5m).
  t.equal((await call(fresh, false)).status, 200, 'a token of the rotated-in key, without kid');
  t.equal(set.fetches - before, 1, 'one fetch for it');
  // The same kid, es-new, now names another key (the set in force has es-new's first key).
  t.ok(await (dg.dg.generation.identity.keySets().values().next().value as RemoteKeySet).refresh(), 'the set with es-new in force');
  set.body = jwks(reused);
  await sleep(1_050);
  before = set.fetches;
  t.equal((await call(reused)).status, 200, 'a token of the new key under the reused kid');
  t.equal(set.fetches - before, 1, 'one fetch for it');
  // Forged tokens under a kid the set has: one fetch per cooldown at most, whatever the flood.
  before = set.fetches;
  const forged = await Promise.all(Array.from({ length: 20 }, () => call(fresh)));
  t.same(new Set(forged.map((f) => `${f.status} ${f.body.detail}`)), new Set(['401 signature verification failed']));
  t.ok(set.fetches - before <= 1, `at most one fetch for 20 forged tokens (${set.fetches - before})`);
});

t.test('two keys under one kid (a key listed twice, or a kid reused while both are published): each verifies its own tokens', async (t) => {
  const [a, b] = await Promise.all([testKey('ES256', 'k1'), testKey('ES256', 'k1')]);
  const up = await upstream();
  t.teardown(() => up.close());
  for (const [name, keys] of [['one key listed twice', [a.publicJwk, a.publicJwk]], ['the kid reused by the new key', [a.publicJwk, b.publicJwk]]] as const) {
    const set = await jwksServer({ keys: [...keys] });
    const dg = await startTest(baseRules(up.origin, set.url));
    for (const [which, k] of [['a', a], ['b', b]] as const) {
      if (name === 'one key listed twice' && which === 'b') continue;
      const tok = await token({ key: k, sub: AGENT, scope: 'items.read', contract: '2026-09' });
      const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
      // Before: 401 token rejected (jose refuses a kid that several keys have).
      t.equal(res.status, 200, `${name}: a token of key ${which}`);
      await res.text();
    }
    await dg.close();
    await set.close();
  }
  // Four keys under one kid: a forged token costs at most three signature checks.
  const set = await jwksServer({ keys: [a.publicJwk, b.publicJwk, a.publicJwk, b.publicJwk] });
  const dg = await startTest(baseRules(up.origin, set.url));
  t.teardown(async () => { await dg.close(); await set.close(); });
  const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${await token({ key: a, sub: AGENT, scope: 'items.read', contract: '2026-09' })}` } });
  t.equal(res.status, 401);
  t.equal((await res.json() as { detail: string }).detail, 'more than 3 keys of the set have the token\'s kid');
});

t.test('a key rotated in just after a background refresh is fetched for its first token, not refused for the cooldown', async (t) => {
  const w = await world(t, (r) => { Object.assign(r.identity.issuers[0].jwks, { refresh: '1500ms', cooldown: '1s' }); });
  const fresh = await testKey('ES256');
  const tok = await w.tok({ key: fresh });
  // Just after the first background refresh (1.5 s in, past the cooldown of the start-up
  // fetch), the issuer publishes a new key and signs with it at once.
  t.ok(await until(() => w.jwks.fetches === 2, 3_000), 'a background refresh');
  w.jwks.body = jwks(w.keys.es, fresh);
  const a = await w.call('GET', '/items/1', { token: tok });
  t.equal(a.status, 200, 'fetched and verified (before: 401, the background refresh had started the cooldown)');
  t.equal(w.jwks.fetches, 3, 'one fetch for it');
  const flood = await Promise.all(Array.from({ length: 20 }, async () => (await w.call('GET', '/items/1', { token: await w.tok({ key: w.keys.es, header: { kid: randomUUID() } }) })).status));
  t.same(new Set(flood), new Set([503]), 'kids never seen right after it are told to retry');
  t.equal(w.jwks.fetches, 3, 'within the cooldown of that fetch: no more fetches');
});

t.test('a kid first seen within the cooldown of another token\'s fetch is told to retry, and verified after it; one the set lacks after a later fetch is 401', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1500ms'; });
  await sleep(1600);
  // A forged token with a random kid makes the fetch, and the cooldown starts.
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ header: { kid: randomUUID() } }) })).status, 401, 'a forged kid after a fetch made for it: 401');
  t.equal(w.jwks.fetches, 2);
  // The issuer rotates a new key in just then.
  const fresh = await testKey('ES256');
  w.jwks.body = jwks(w.keys.es, fresh);
  const tok = await w.tok({ key: fresh });
  const refused = await w.call('GET', '/items/1', { token: tok });
  // Before: 401, a bad credential to its caller, for the rest of the cooldown.
  t.equal(refused.status, 503, 'the new key\'s first token: retry');
  t.equal(refused.json.code, 'identity-unavailable');
  const retryAfter = Number(refused.headers.get('retry-after'));
  t.ok(retryAfter >= 1 && retryAfter <= 2, `Retry-After: the rest of the cooldown (${retryAfter})`);
  await sleep(retryAfter * 1000);
  t.equal((await w.call('GET', '/items/1', { token: tok })).status, 200, 'retried after it: fetched and verified');
  t.equal(w.jwks.fetches, 3);
});

t.test('a token whose key was published while a background refresh was under way gets one fetch more, not a 401', async (t) => {
  const k = await keys();
  const fresh = await testKey('ES256');
  // A key server that answers 400 ms late with the key set as it was when the request came.
  let published = jwks(k.es);
  let fetches = 0;
  const server = createServer((_req, res) => {
    fetches++;
    const body = JSON.stringify(published);
    setTimeout(() => { res.writeHead(200, { 'content-type': 'application/json' }).end(body); }, 400);
  });
  const port = await listen(server);
  t.teardown(() => close(server));
  const up = await upstream();
  t.teardown(() => up.close());
  const dg = await startTest(baseRules(up.origin, `http://127.0.0.1:${port}/jwks.json`, (r) => {
    Object.assign(r.identity.issuers[0].jwks, { refresh: '1s', cooldown: '1s', timeout: '5s' });
  }));
  t.teardown(() => dg.close());
  const tok = await token({ key: fresh, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  // The background refresh has gone out; the issuer publishes its new key and signs with it.
  t.ok(await until(() => fetches === 2, 3_000), 'a background refresh under way');
  published = jwks(k.es, fresh);
  const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
  await res.text();
  t.equal(res.status, 200, 'verified after one fetch more (before: 401, the refresh under way did not have the key)');
  t.equal(fetches, 3);
});

/** driftguard whose one issuer's JWKS server is down from the start, with the given cooldown. */
async function keysDownFromStart(t: Test, cooldown: string) {
  const k = await keys();
  const up = await upstream();
  const keyServer = await jwksServer(jwks(k.es));
  keyServer.down = true;
  const dg = await startTest(baseRules(up.origin, keyServer.url, (r) => { r.identity.issuers[0].jwks.cooldown = cooldown; }), { waitReady: false });
  t.teardown(async () => { await dg.close(); await up.close(); await keyServer.close(); });
  await sleep(50);
  return { k, up, keyServer, dg };
}

t.test('a JWKS server down from the start: 503 identity-unavailable, never forwarded, not ready', async (t) => {
  const { k, up, keyServer, dg } = await keysDownFromStart(t, '1s');
  const ready = await fetch(`${dg.admin}/readyz`);
  t.equal(ready.status, 503, 'not ready without keys');
  await ready.text();
  const tok = await token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  for (let i = 0; i < 3; i++) {
    const a = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
    t.equal(a.status, 503);
    t.equal(a.headers.get('content-type'), 'application/problem+json');
    t.equal(((await a.json()) as any).code, 'identity-unavailable');
  }
  t.equal(up.seen.length, 0, 'never forwarded');
  // Public operations need no keys.
  t.equal((await fetch(`${dg.url}/status`)).status, 200);
  // The issuer comes back: after the cooldown the next token fetches the keys.
  keyServer.down = false;
  await sleep(1_050);
  const ok = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(ok.status, 200);
  const readyAgain = await fetch(`${dg.admin}/readyz`);
  t.equal(readyAgain.status, 200, 'ready once keys arrived');
});

t.test('identity-unavailable says when to retry: the rest of the key set\'s cooldown, at least a second', async (t) => {
  const { k, up, dg } = await keysDownFromStart(t, '30s');
  const tok = await token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const a = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(a.status, 503);
  const body = (await a.json()) as any;
  t.equal(body.code, 'identity-unavailable');
  const after = Number(a.headers.get('retry-after'));
  t.ok(after >= 28 && after <= 30, `Retry-After ${a.headers.get('retry-after')} is what is left of the 30 s cooldown`);
  t.equal(body.retryAfter, after, 'the body says the same');
  t.equal(up.seen.length, 0);
});

t.test('a JWKS server that goes down later: last good keys keep working, unknown kids get 503', async (t) => {
  // refresh: 1s, the shortest the rules take.
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; r.identity.issuers[0].jwks.refresh = '1s'; });
  w.jwks.down = true;
  await sleep(2_200); // background refreshes fail meanwhile
  t.ok(w.jwks.fetches >= 2, 'background refresh kept trying');
  for (const key of [w.keys.es, w.keys.rs, w.keys.ed]) {
    const a = await w.call('GET', '/items/1', { token: await w.tok({ key }) });
    t.equal(a.status, 200, `${key.alg}: a known kid still verifies`);
  }
  const rotated = await testKey('ES256');
  const a = await w.call('GET', '/items/1', { token: await w.tok({ key: rotated }) });
  t.equal(a.status, 503, 'a key that cannot be obtained');
  t.equal(a.json.code, 'identity-unavailable');
  t.equal(w.up.seen.length, 3, 'only the verified calls were forwarded');
  const ready = await fetch(`${w.dg.admin}/readyz`);
  t.equal(ready.status, 200, 'still ready: it has keys');
  // Said once for the outage, not per failed refresh (before: only counted in metrics).
  const said = () => w.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('signing keys'));
  matchEach(t, said(), [{ level: 'warn', msg: 'signing keys could not be refreshed; the last good keys stay in force', issuer: 'https://issuer.test.local', source: w.jwks.url, error: 'HTTP 503' }]);
  w.jwks.down = false;
  await until(() => said().length === 2);
  t.match(said()[1], { level: 'info', msg: 'signing keys fetched again', source: w.jwks.url });
  await sleep(250);
  t.equal(said().length, 2, 'and nothing more while the refreshes succeed');
});

t.test('a JWKS server that never answers: 503 within the fetch timeout, never a hang', async (t) => {
  const k = await keys();
  const up = await upstream();
  let fetches = 0;
  const hanging = createServer(() => { fetches++; /* never answers */ });
  const port = await listen(hanging);
  const dg = await startTest(baseRules(up.origin, `http://127.0.0.1:${port}/jwks.json`, (r) => {
    r.identity.issuers[0].jwks.timeout = '300ms';
    r.identity.issuers[0].jwks.cooldown = '1s';
  }), { waitReady: false });
  t.teardown(async () => { await dg.close(); await up.close(); await close(hanging); });
  const tok = await token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  await sleep(20);
  const a = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(a.status, 503);
  t.equal(((await a.json()) as any).code, 'identity-unavailable');
  t.ok(fetches >= 1);
  t.equal(up.seen.length, 0);
});

t.test('a key fetch that times out says so, naming the setting, not a DOMException\'s legacy code', async (t) => {
  // Before: "23: The operation was aborted due to timeout" (23 is DOMException's TIMEOUT_ERR).
  const server = createServer((req, res) => {
    if (req.url === '/silent') return; // never answers: no head
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{"keys":['); // a head, then a body that never ends
  });
  const port = await listen(server);
  t.teardown(() => { server.closeAllConnections(); return close(server); });
  for (const path of ['/silent', '/drip']) {
    const keySet = new RemoteKeySet({ url: `http://127.0.0.1:${port}${path}`, refreshMs: 60_000, cooldownMs: 0, timeoutMs: 300 });
    t.teardown(() => keySet.close());
    await t.rejects(keySet.start(), { message: new RegExp(`^JWKS http://127\\.0\\.0\\.1:${port}${path}: \\w*TimeoutError: no whole answer within jwks\\.timeout, the fetch was aborted$`) }, path);
    t.notMatch(keySet.status().lastError, /\b23\b/, `${path}: no legacy code`);
  }
});

t.test('a JWKS answer that is not a key set keeps the last good keys', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; });
  w.jwks.body = { not: 'a key set' };
  await sleep(1_050);
  const unknown = await w.call('GET', '/items/1', { token: await w.tok({ header: { kid: 'rotated' } }) });
  t.equal(unknown.status, 503, 'the refetch failed: the key cannot be obtained');
  t.equal(w.jwks.fetches, 2);
  t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, 'the last good keys still verify');
});

t.test('a request during the first JWKS fetch waits for it instead of failing', async (t) => {
  const k = await keys();
  const up = await upstream();
  const body = JSON.stringify(jwks(k.es));
  const slow = createServer((_req, res) => { setTimeout(() => res.end(body), 400); });
  const port = await listen(slow);
  const dg = await startTest(baseRules(up.origin, `http://127.0.0.1:${port}/jwks.json`), { waitReady: false });
  t.teardown(async () => { await dg.close(); await up.close(); await close(slow); });
  t.notOk(dg.dg.ready, 'not ready while the first fetch is under way');
  const tok = await token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const a = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
  t.equal(a.status, 200);
});

t.test('a caller that leaves while its keys are fetched is never forwarded', async (t) => {
  const k = await keys();
  const up = await upstream();
  const body = JSON.stringify(jwks(k.es));
  const slow = createServer((_req, res) => { setTimeout(() => res.end(body), 500); });
  const port = await listen(slow);
  const dg = await startTest(baseRules(up.origin, `http://127.0.0.1:${port}/jwks.json`), { waitReady: false });
  t.teardown(async () => { await dg.close(); await up.close(); await close(slow); });
  const tok = await token({ key: k.es, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const req = request(`${dg.url}/items/1`, { method: 'GET', headers: { authorization: `Bearer ${tok}` } });
  req.on('error', () => {});
  req.end();
  await sleep(100);
  req.destroy();
  await sleep(900);
  t.equal(up.seen.length, 0, 'a request nobody waits for is not sent');
});

t.test('a JWKS body past 1 MiB is refused as it arrives, not after it was all read', async (t) => {
  // An endless key set, sent chunked (no content-length) as fast as the reader takes it.
  let written = 0;
  let closed = false;
  const endless = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.on('close', () => { closed = true; });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    const pump = () => {
      while (!res.destroyed && written < 256 * 1024 * 1024) {
        written += chunk.length;
        if (!res.write(chunk)) { res.once('drain', pump); return; }
      }
      res.end();
    };
    res.write('{"keys": [');
    pump();
  });
  const port = await listen(endless);
  const keySet = new RemoteKeySet({ url: `http://127.0.0.1:${port}/jwks.json`, refreshMs: 60_000, cooldownMs: 0, timeoutMs: 10_000 });
  t.teardown(async () => { keySet.close(); await close(endless); });
  t.equal(await keySet.refresh(), false, 'no keys from it');
  t.match(keySet.status().lastError, /JWKS larger than 1 MiB/);
  t.ok(await until(() => closed), 'the connection was closed on the server');
  // Socket buffers on both sides hold a few MiB at most; the 256 MiB were never sent.
  t.ok(written < 32 * 1024 * 1024, `stopped after ${written} bytes`);
});

t.test('a token without kid is checked against each key of its algorithm, at most 3', async (t) => {
  // A key set in rotation: more than one key could have signed a token that names none. jose
  // leaves trying them to the caller.
  const [a, b, c, d, unknown] = await Promise.all(['a', 'b', 'c', 'd', 'x'].map((kid) => testKey('ES256', `es-${kid}`)));
  const up = await upstream();
  const set = await jwksServer(jwks(a!, b!));
  const dg = await startTest(baseRules(up.origin, set.url, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; }));
  t.teardown(async () => { await dg.close(); await up.close(); await set.close(); });
  const call = async (key: typeof a) => {
    const tok = await token({ key: key!, sub: AGENT, scope: 'items.read', contract: '2026-09', header: { kid: undefined } });
    const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
    return { status: res.status, body: await res.json() as any };
  };
  t.equal((await call(a)).status, 200, 'signed by the first key');
  t.equal((await call(b)).status, 200, 'signed by the second key');
  const forged = await call(unknown);
  t.equal(forged.status, 401, 'signed by neither');
  t.equal(forged.body.code, 'invalid-credential');
  t.equal(forged.body.detail, 'signature verification failed');

  // Four candidates: a forged token must not cost a signature check per key of a large set.
  set.body = jwks(a!, b!, c!, d!);
  t.ok(await (dg.dg.generation.identity.keySets().values().next().value as RemoteKeySet).refresh(), 'the larger set fetched');
  // Counted before any signature check: whichever key signed it (the third passed and the
  // fourth did not when they were counted as tried).
  for (const [which, key] of [['the third', c], ['the fourth', d]] as const) {
    const refused = await call(key);
    t.equal(refused.status, 401, `${which} key's token`);
    t.equal(refused.body.detail, 'no kid, and more than 3 keys could have signed it');
  }
  t.equal(up.seen.length, 2, 'only the verified calls reached the upstream');
});

t.test('a token without kid is verified by its key even where the set holds a key that cannot be imported', async (t) => {
  const a = await testKey('ES256', 'es-a');
  // Same kty, crv and alg as the good key, so a candidate; not a point on the curve, so jose cannot import it.
  const broken = { kty: 'EC', crv: 'P-256', x: 'AAAA', y: 'AAAA', kid: 'es-broken', alg: 'ES256', use: 'sig' };
  const up = await upstream();
  for (const keys of [[a.publicJwk, broken], [broken, a.publicJwk]]) {
    const set = await jwksServer({ keys });
    const dg = await startTest(baseRules(up.origin, set.url));
    const tok = await token({ key: a, sub: AGENT, scope: 'items.read', contract: '2026-09', header: { kid: undefined } });
    const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
    t.equal(res.status, 200, `broken key ${keys[0] === broken ? 'first' : 'second'}: verified by the good key (it was 401 "token rejected")`);
    await res.text();
    await dg.close();
    await set.close();
  }
  await up.close();
});

t.test('a key removed from the set stops verifying at once, for a cached token too', async (t) => {
  const [a, b] = await Promise.all([testKey('ES256', 'es-old'), testKey('ES256', 'es-new')]);
  const up = await upstream();
  const set = await jwksServer(jwks(a, b));
  const dg = await startTest(baseRules(up.origin, set.url));
  t.teardown(async () => { await dg.close(); await up.close(); await set.close(); });
  const keySet = dg.dg.generation.identity.keySets().values().next().value as RemoteKeySet;
  const call = async (tok: string) => {
    const res = await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } });
    return { status: res.status, body: await res.json() as any };
  };
  const old = await token({ key: a, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const oldNoKid = await token({ key: a, sub: AGENT, scope: 'items.read', contract: '2026-09', header: { kid: undefined } });
  const current = await token({ key: b, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  for (const tok of [old, oldNoKid, current]) t.equal((await call(tok)).status, 200, 'verified, and now cached');
  const version = keySet.version;
  t.ok(await keySet.refresh(), 'the same set fetched again');
  t.equal(keySet.version, version, 'the same keys: the cache stays valid');
  t.equal((await call(old)).status, 200);

  // The issuer drops the old key (it leaked, say). A cache entry is no proof the key is still trusted.
  set.body = jwks(b);
  t.ok(await keySet.refresh(), 'the smaller set fetched');
  t.ok(keySet.version > version, 'a new version of the keys');
  for (const [name, tok] of [['with kid', old], ['without kid', oldNoKid]] as const) {
    const refused = await call(tok);
    t.equal(refused.status, 401, `a token of the removed key (${name}) is refused at once (before: served from the cache until it expired)`);
    t.equal(refused.body.code, 'invalid-credential');
  }
  t.equal((await call(current)).status, 200, 'a token of a key still in the set goes on working');
  t.equal(up.seen.length, 5, 'the refused calls never reached the upstream');
});

t.test('a key set URL\'s query is a secret: not in logs, /metrics or /readyz', async (t) => {
  const up = await upstream();
  const secret = 's3cret-in-the-query';
  // Nothing listens on port 9: the fetch fails, and the URL is named in the warning and the readiness reason.
  const jwksUrl = `http://127.0.0.1:9/jwks.json?access_token=${secret}`;
  const dg = await startWithTelemetry(baseRules(up.origin, jwksUrl, (r) => { r.identity.issuers[0].jwks.timeout = '200ms'; }), {}, undefined);
  t.teardown(async () => { await dg.close(); await up.close(); });
  await until(() => dg.logs.some((l) => l.includes('signing keys not loaded yet')));
  const metrics = await (await fetch(dg.admin + '/metrics')).text();
  const readyz = await (await fetch(dg.admin + '/readyz')).text();
  t.match(metrics, 'http://127.0.0.1:9/jwks.json', 'the metrics name the key set by origin and path');
  for (const [what, text] of [['log', dg.logs.join('\n')], ['/metrics', metrics], ['/readyz', readyz]] as const) {
    t.notOk(text.includes(secret), `${what}: no query (before: the whole URL)`);
  }
});

t.test('a fetched key set without a key for the issuer\'s algorithms is a failed fetch: the last good keys stay', async (t) => {
  const es = await testKey('ES256');
  const rsa = await testKey('RS256');
  const server = await jwksServer(jwks(es));
  const keySet = new RemoteKeySet({ url: server.url, refreshMs: 60_000, cooldownMs: 0, timeoutMs: 2_000, algorithms: ['ES256'] });
  t.teardown(async () => { keySet.close(); await server.close(); });
  t.equal(await keySet.refresh(), true, 'the good set');
  // An emptied set, a key with no coordinates, and only a key of another type: none replaces it.
  for (const body of [{ keys: [] }, { keys: [{ kty: 'EC', crv: 'P-256', kid: 'x' }] }, jwks(rsa), { keys: [{ ...jwks(es).keys[0], use: 'enc' }] }]) {
    server.body = body;
    t.equal(await keySet.refresh(), false, JSON.stringify(body).slice(0, 60));
    t.match(keySet.status().lastError, /has no key that can verify ES256/);
    t.equal(keySet.eachKey().length, 1, 'the good key is still there');
    t.equal(keySet.eachKey()[0]!.kid, es.kid);
  }
  // The issuer's private key published by mistake: refused whole (anybody can sign with it now).
  server.body = { keys: [es.privateJwk] };
  t.equal(await keySet.refresh(), false, 'a set with a private key');
  t.match(keySet.status().lastError, /holds private key material .*: d\)/);
  t.notMatch(keySet.status().lastError, new RegExp(String(es.privateJwk.d)), 'the key itself is not quoted');
  t.equal(keySet.eachKey().length, 1, 'the good key is still there');
});

t.test('a fetched key set of more entries than MAX_JWKS_KEYS is a failed fetch: nothing is built from it, the last good keys stay', async (t) => {
  const es = await testKey('ES256');
  const server = await jwksServer(jwks(es));
  const keySet = new RemoteKeySet({ url: server.url, refreshMs: 60_000, cooldownMs: 0, timeoutMs: 2_000, algorithms: ['ES256'] });
  t.teardown(async () => { keySet.close(); await server.close(); });
  t.equal(await keySet.refresh(), true, 'the good set');
  // Before: a verifier built per entry, a heap per entry; 349,459 `{}` (1 MiB) ended the process.
  server.body = { keys: [...jwks(es).keys, ...Array.from({ length: MAX_JWKS_KEYS }, () => ({}))] };
  t.equal(await keySet.refresh(), false, 'refused');
  t.match(keySet.status().lastError, new RegExp(`has ${MAX_JWKS_KEYS + 1} entries in "keys": a key set may have at most ${MAX_JWKS_KEYS}`));
  t.equal(keySet.eachKey().length, 1, 'the good key is still there');
  server.body = { keys: [...jwks(es).keys, ...Array.from({ length: MAX_JWKS_KEYS - 1 }, () => ({}))] };
  t.equal(await keySet.refresh(), true, 'as many as MAX_JWKS_KEYS are read');
});

t.test('a key jose would refuse at every token is no key: a set of only such keys is a failed fetch, the last good keys stay', async (t) => {
  const es = await testKey('ES256');
  const rsa = await testKey('RS256');
  const server = await jwksServer(jwks(es, rsa));
  const algorithms = ['ES256', 'RS256', 'EdDSA'];
  const keySet = new RemoteKeySet({ url: server.url, refreshMs: 60_000, cooldownMs: 0, timeoutMs: 2_000, algorithms });
  t.teardown(async () => { keySet.close(); await server.close(); });
  t.equal(await keySet.refresh(), true, 'the good set');
  const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
  const ed448 = generateKeyPairSync('ed448').publicKey.export({ format: 'jwk' });
  const esPublic = jwks(es).keys[0]!;
  // Each was taken as a good set before, and replaced the keys: every token was then refused.
  const refused: Record<string, Record<string, unknown>> = {
    'a 1024-bit RSA key (jose: RS256 requires 2048 bits)': { ...rsa1024, kid: 'weak', alg: 'RS256', use: 'sig' },
    'an Ed448 key (jose\'s EdDSA is Ed25519)': { ...ed448, kid: 'ed448', use: 'sig' },
    'key_ops verify and sign (WebCrypto: unsupported usage for a public key)': { ...esPublic, key_ops: ['verify', 'sign'] },
    'key_ops verify twice (jose: unique strings)': { ...esPublic, key_ops: ['verify', 'verify'] },
    'ext not a boolean': { ...esPublic, ext: 'yes' },
  };
  for (const [what, key] of Object.entries(refused)) {
    server.body = { keys: [key] };
    t.equal(await keySet.refresh(), false, what);
    t.match(keySet.status().lastError, /has no key that can verify ES256, RS256, EdDSA/);
    t.same(keySet.eachKey().map((k) => k.kid), [es.kid, rsa.kid], 'the good keys are still there');
  }
  server.body = { keys: [{ ...esPublic, key_ops: ['verify'], ext: true }] };
  t.equal(await keySet.refresh(), true, 'key_ops [verify] and ext true are a good key');
});

t.test('a JWKS, discovery or jwks_uri URL that redirects is a failed fetch that says redirects are not followed, and where to', async (t) => {
  // Before: "HTTP 301" and nothing else, which read as the server failing.
  const es = await testKey('ES256');
  const ISS = 'https://issuer.test.local';
  const server = createServer((req, res) => {
    const to = (status: number, location: string) => res.writeHead(status, { location }).end();
    if (req.url === '/moved/jwks') return to(301, '/jwks.json?sig=s3cret-query');
    if (req.url === '/old/.well-known/openid-configuration') return to(308, 'https://idp.test.local/new/.well-known/openid-configuration?token=s3cret-query');
    if (req.url === '/ok/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: ISS, jwks_uri: `http://127.0.0.1:${port}/keys` }));
      return;
    }
    if (req.url === '/keys') return to(302, 'http://[not-a-host');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks(es)));
  });
  const port = await listen(server);
  const timing = { refreshMs: 60_000, cooldownMs: 0, timeoutMs: 2_000 };
  const direct = new RemoteKeySet({ url: `http://127.0.0.1:${port}/moved/jwks`, ...timing });
  const discovery = discoveredKeySet({ discovery: `http://127.0.0.1:${port}/old/.well-known/openid-configuration`, issuer: ISS, ...timing });
  const jwksUri = discoveredKeySet({ discovery: `http://127.0.0.1:${port}/ok/.well-known/openid-configuration`, issuer: ISS, ...timing });
  t.teardown(async () => { direct.close(); discovery.close(); jwksUri.close(); await close(server); });
  await t.rejects(direct.start(), { message: new RegExp(`^JWKS http://127\\.0\\.0\\.1:${port}/moved/jwks: HTTP 301 from http://127\\.0\\.0\\.1:${port}/moved/jwks: redirects are not followed; configure the final URL \\(Location: http://127\\.0\\.0\\.1:${port}/jwks\\.json\\)$`) });
  t.equal(await discovery.refresh(), false);
  t.equal(discovery.status().lastError, `HTTP 308 from http://127.0.0.1:${port}/old/.well-known/openid-configuration: redirects are not followed; configure the final URL (Location: https://idp.test.local/new/.well-known/openid-configuration)`);
  t.equal(await jwksUri.refresh(), false);
  t.equal(jwksUri.status().lastError, `HTTP 302 from http://127.0.0.1:${port}/keys: redirects are not followed; configure the final URL`, 'a Location that is no URL is left out');
  for (const k of [direct, discovery, jwksUri]) t.notMatch(JSON.stringify(k.status()), 's3cret', 'a Location\'s query is not shown');
});

t.test('the refetch cooldown is timed by a monotonic clock: a wall clock set back an hour does not hold refetches back', async (t) => {
  const old = await testKey('ES256');
  const rotated = await testKey('ES256');
  const server = await jwksServer(jwks(old));
  // An NTP step back, as the process sees it (no clock of the machine is changed): Date.now
  // alone moves, by `step`.
  const realNow = Date.now;
  let step = 0;
  Date.now = () => realNow() + step;
  const keySet = new RemoteKeySet({ url: server.url, refreshMs: 60_000, cooldownMs: 100, timeoutMs: 2_000 });
  t.teardown(async () => { Date.now = realNow; keySet.close(); await server.close(); });
  t.equal(await keySet.refresh(), true);
  server.body = jwks(old, rotated);
  await new Promise((r) => setTimeout(r, 150));
  step = -3_600_000;
  const fetches = server.fetches;
  const key = await keySet.getKey({ alg: 'ES256', kid: rotated.kid }, { payload: '', signature: '' } as never);
  t.ok(key, 'the rotated key is found');
  t.equal(server.fetches, fetches + 1, 'by one refetch, the cooldown being over');
});

t.test('a key set is named by its URL\'s origin and path only: no query, userinfo or path parameters (metrics, logs)', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.url += ';sess=PSECRET?token=QSECRET'; });
  const [, keys] = w.dg.dg.generation.identity.issuerKeySets()[0]!;
  const source = keys.status().source;
  t.equal(source, `${w.jwks.url};(redacted)`, 'the path kept, its parameters not (they were: a session id in the metrics\' source label)');
  t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).status, 200, 'control: the keys were fetched from that URL');
  t.notMatch(JSON.stringify(w.logs) + source, /SECRET/);
});

t.test('a key set whose first fetch failed is fetched again within seconds, not at the next refresh: the pod becomes ready', async (t) => {
  const key = await testKey('ES256');
  const up = await upstream();
  const ks = await jwksServer(jwks(key));
  ks.down = true;
  // refresh: 5 minutes (the default). An unready pod gets no traffic, so no token asks for keys.
  const dg = await startTest(baseRules(up.origin, ks.url), { waitReady: false });
  t.teardown(async () => { await dg.close(); await up.close(); await ks.close(); });
  t.ok(await until(async () => ks.fetches >= 1, 5_000), 'the fetch at start');
  t.equal((await fetch(`${dg.admin}/readyz`)).status, 503, 'not ready while the keys are not in');
  ks.down = false;
  const fetched = ks.fetches;
  t.ok(await until(async () => (await fetch(`${dg.admin}/readyz`)).status === 200, UNLOADED_RETRY_MS + 3_000), 'ready within the retry');
  t.equal(ks.fetches, fetched + 1, 'one fetch more brought the keys in');
  const tok = await token({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  t.equal((await fetch(`${dg.url}/items/1`, { headers: { authorization: `Bearer ${tok}` } })).status, 200);
  // Loaded: the retry stops; the next fetch is the refresh's.
  await new Promise((r) => setTimeout(r, UNLOADED_RETRY_MS + 500));
  t.equal(ks.fetches, fetched + 1, 'no more fetches once loaded');
});
