// Warn decisions, the human/automation split, blockAt, audit mode, and the headers that
// cross driftguard in both directions.

import t from 'tap';
import { raw, get } from '../support/raw.ts';
import { world, AGENT, HUMAN } from './world.ts';
import { ISSUER } from '../support/keys.ts';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { baseRules, writeRules } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';

t.test('warn: a deprecated low-sensitivity operation is forwarded and flagged', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/search', { token: await w.tok() });
  t.equal(a.status, 200);
  t.equal(a.headers.get('driftguard-warning'), 'deprecated-operation');
  t.equal(a.headers.get('deprecation'), '@1767225600');
  t.notOk(a.headers.get('sunset'), 'no sunset set, no Sunset header');
  t.notOk(a.headers.get('link'), 'no link set, no Link header');
  t.equal(a.headers.get('x-upstream'), 'yes', 'the upstream\'s own headers come through');
  t.equal(w.up.seen.length, 1);
  t.equal(w.up.seen[0]!.headers['driftguard-decision'], 'warn');
});

t.test('warn: a stale contract on a low-sensitivity operation is forwarded and flagged', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items', { token: await w.tok({ contract: '2026-06' }) });
  t.equal(a.status, 200);
  t.equal(a.headers.get('driftguard-warning'), 'stale-contract');
  t.equal(w.up.seen[0]!.headers['driftguard-contract'], '2026-06');
});

t.test('humans are warned, never blocked, by staleness and deprecation', async (t) => {
  const w = await world(t);
  const stale = await w.call('POST', '/payments', { token: await w.tok({ sub: HUMAN, contract: '2026-06' }), body: '{}' });
  t.equal(stale.status, 200, 'a critical operation with a stale contract');
  t.equal(stale.headers.get('driftguard-warning'), 'stale-contract');
  const deprecated = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
  t.equal(deprecated.status, 200, 'a deprecated high-sensitivity operation');
  t.equal(deprecated.headers.get('driftguard-warning'), 'deprecated-operation');
  t.equal(deprecated.headers.get('deprecation'), '@1767225600');
  t.equal(deprecated.headers.get('sunset'), new Date('2099-01-01T00:00:00Z').toUTCString());
  const link = deprecated.headers.get('link') ?? '';
  t.match(link, /rel="deprecation"/);
  t.match(link, /rel="sunset"/);
  const both = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN, contract: '2026-01' }) });
  t.equal(both.status, 200);
  t.equal(both.headers.get('driftguard-warning'), 'stale-contract, deprecated-operation', 'every warning, in check order');
  t.equal(w.up.seen.length, 3);
  t.equal(w.up.seen[0]!.headers['driftguard-consumer-kind'], 'human');
});

t.test('an automation acting for a person (a delegated token) is judged as an automation', async (t) => {
  const w = await world(t);
  const asAgent = { act: { sub: AGENT } };
  // The person alone is warned; an agent holding a token exchanged for the person is blocked.
  const stale = await w.call('POST', '/payments', { token: await w.tok({ sub: HUMAN, contract: '2026-06', claims: asAgent }), body: '{}' });
  t.equal(stale.status, 409, 'a critical operation with a stale contract (200 with a warning before)');
  t.equal(stale.json.code, 'stale-contract');
  const deprecated = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN, claims: asAgent }) });
  t.equal(deprecated.json.code, 'deprecated-operation', 'a deprecated high-sensitivity operation');
  const none = await w.call('GET', '/items/1', { token: await w.tok({ sub: HUMAN, contract: undefined, claims: asAgent }) });
  t.equal(none.json.code, 'contract-version-required', 'an automation must declare its contract version');
  // Automation lifetimes: 2 hours is within a person's 12 but not an automation's 1.
  const long = await w.call('GET', '/items/1', { token: await w.tok({ sub: HUMAN, ttl: 7200, claims: asAgent }) });
  t.equal(long.json.code, 'credential-lifetime-exceeded');
  t.equal(w.up.seen.length, 0, 'none reached the upstream');
  // An actor registered to another issuer, or one nobody names, is taken for an automation too.
  for (const act of [{ sub: AGENT, iss: 'https://elsewhere.test' }, { sub: '' }]) {
    const a = await w.call('POST', '/payments', { token: await w.tok({ sub: HUMAN, contract: '2026-06', claims: { act } }), body: '{}' });
    t.equal(a.json.code, 'stale-contract', JSON.stringify(act));
  }
  // A person acting for a person stays a person; the agent's fresh call goes through, recorded.
  const ok = await w.call('GET', '/items/1', { token: await w.tok({ sub: HUMAN, claims: asAgent }) });
  t.equal(ok.status, 200);
  t.equal(w.up.seen[0]!.headers['driftguard-consumer-kind'], 'automation', 'the upstream is told the kind it was judged as');
  // An unregistered actor is of consumers.defaultKind: automation by default...
  const bob = { act: { sub: 'bob@test.local' } };
  const unknown = await w.call('POST', '/payments', { token: await w.tok({ sub: HUMAN, contract: '2026-06', claims: bob }), body: '{}' });
  t.equal(unknown.json.code, 'stale-contract');
  // ...and with defaultKind human, a person acting for a person stays a person.
  const people = await world(t, (r) => { r.consumers.unknown = 'allow'; r.consumers.defaultKind = 'human'; });
  const human = await people.call('POST', '/payments', { token: await people.tok({ sub: HUMAN, contract: '2026-06', claims: bob }), body: '{}' });
  t.equal(human.status, 200);
  t.equal(human.headers.get('driftguard-warning'), 'stale-contract');
});

t.test('automation is blocked from blockAt up and warned below it', async (t) => {
  // createItem is medium: below the minimum contract it is warned with blockAt high...
  const high = await world(t);
  const warned = await high.call('POST', '/items', { token: await high.tok({ contract: '2026-01' }), body: '{}' });
  t.equal(warned.status, 200);
  t.equal(warned.headers.get('driftguard-warning'), 'stale-contract');
  // ...and denied with blockAt medium.
  const medium = await world(t, (r) => { r.contract.blockAt = 'medium'; });
  const denied = await medium.call('POST', '/items', { token: await medium.tok({ contract: '2026-01' }), body: '{}' });
  t.equal(denied.status, 409);
  t.equal(denied.json.code, 'stale-contract');
  t.equal(medium.up.seen.length, 0);
  // blockAt critical: a high-sensitivity deprecated operation is only warned.
  const critical = await world(t, (r) => { r.contract.blockAt = 'critical'; });
  const del = await critical.call('DELETE', '/items/1', { token: await critical.tok() });
  t.equal(del.status, 200);
  t.equal(del.headers.get('driftguard-warning'), 'deprecated-operation');
  // blockAt never: even a critical stale call is only warned (as taskBindingAt takes never).
  const never = await world(t, (r) => { r.contract.blockAt = 'never'; });
  const pay = await never.call('POST', '/payments', { token: await never.tok({ contract: '2026-06' }), body: '{}' });
  t.equal(pay.status, 200, 'blockAt never: a stale critical call is forwarded');
  t.equal(pay.headers.get('driftguard-warning'), 'stale-contract');
});

t.test('an unregistered caller gets consumers.defaultKind, and human callers are not blocked', async (t) => {
  const w = await world(t, (r) => { r.consumers.unknown = 'allow'; r.consumers.defaultKind = 'human'; });
  const a = await w.call('POST', '/payments', { token: await w.tok({ sub: 'client-x', contract: '2026-06' }), body: '{}' });
  t.equal(a.status, 200);
  t.equal(a.headers.get('driftguard-warning'), 'stale-contract');
  t.equal(w.up.seen[0]!.headers['driftguard-consumer'], 'client-x');
  t.equal(w.up.seen[0]!.headers['driftguard-consumer-kind'], 'human');
  const safe = await world(t, (r) => { r.consumers.unknown = 'allow'; });
  const b = await safe.call('POST', '/payments', { token: await safe.tok({ sub: 'client-x', contract: '2026-06' }), body: '{}' });
  t.equal(b.status, 409, 'the default kind is automation: the safe side');
});

t.test('audit mode forwards would-denies with the warning header, except malformed requests', async (t) => {
  const w = await world(t, (r) => { r.proxy.mode = 'audit'; });
  const cases: [string, string, string | undefined, string][] = [
    ['GET', '/admin', await w.tok(), 'unknown-operation'],
    ['GET', '/items/1', undefined, 'missing-credential'],
    ['GET', '/items/1', 'garbage', 'invalid-credential'],
    ['POST', '/payments', await w.tok({ contract: '2026-06' }), 'stale-contract'],
    ['DELETE', '/items/1', await w.tok(), 'deprecated-operation'],
    ['GET', '/legacy', undefined, 'operation-sunset'],
  ];
  for (const [method, path, tok, code] of cases) {
    const before = w.up.seen.length;
    const a = await w.call(method, path, { ...(tok !== undefined ? { token: tok } : {}), ...(method !== 'GET' && method !== 'DELETE' ? { body: '{}' } : {}) });
    t.equal(a.status, 200, `${code}: forwarded`);
    t.match(a.headers.get('driftguard-warning') ?? '', new RegExp(`^${code}`), `${code}: named in the warning header`);
    t.equal(w.up.seen.length, before + 1, `${code}: the upstream saw it`);
    t.equal(w.up.seen.at(-1)!.headers['driftguard-decision'], 'would-deny');
  }
  const bad = await raw(w.port, get('/items/%2e%2e/admin', [`Authorization: Bearer ${await w.tok()}`]));
  t.equal(bad.status, 400, 'malformed-request is enforced in audit mode');
  t.equal(bad.json().code, 'malformed-request');
  t.equal(w.up.seen.length, cases.length);
});

t.test('the upstream gets driftguard\'s headers, never the client\'s spoofed ones', async (t) => {
  const w = await world(t);
  const spoof = {
    'driftguard-consumer': 'spiffe://evil/admin', 'Driftguard-Consumer-Kind': 'human', 'DRIFTGUARD-CONTRACT': '2026-09',
    'driftguard-decision': 'allow', 'driftguard-operation': 'pay', 'driftguard-anything': 'x', 'driftguard-issuer': 'https://evil.example',
  };
  await w.call('GET', '/items/1', { token: await w.tok({ contract: '2026-06' }), headers: spoof });
  const seen = w.up.seen[0]!;
  t.equal(seen.headers['driftguard-consumer'], AGENT);
  t.equal(seen.headers['driftguard-consumer-kind'], 'automation');
  t.equal(seen.headers['driftguard-contract'], '2026-06');
  t.equal(seen.headers['driftguard-operation'], 'getItem');
  t.equal(seen.headers['driftguard-issuer'], ISSUER, 'the issuer that vouched for the consumer, never the client\'s');
  t.notOk('driftguard-anything' in seen.headers);
  const names = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  t.equal(names.filter((n) => n === 'driftguard-consumer').length, 1, 'exactly one, ours');
  // A public operation without a credential: no consumer at all, and nothing spoofed.
  await w.call('GET', '/status', { headers: spoof });
  const pub = w.up.seen[1]!;
  t.notOk('driftguard-consumer' in pub.headers);
  t.notOk('driftguard-consumer-kind' in pub.headers);
  t.notOk('driftguard-issuer' in pub.headers);
  t.notOk('driftguard-contract' in pub.headers);
  t.equal(pub.headers['driftguard-operation'], 'status');
  // Spoofed over a raw socket too, in odd spellings and twice.
  const r = await raw(w.port, get('/status', ['DrIfTgUaRd-Consumer: a', 'driftguard-consumer: b']));
  t.equal(r.status, 200);
  t.notOk('driftguard-consumer' in w.up.seen[2]!.headers);
});

t.test('proxy.upstreamHost: every forwarded request carries it as Host and X-Forwarded-Host, whatever Host the client sent', async (t) => {
  // An upstream that routes by Host (virtual hosts) would otherwise serve whichever app the
  // caller names, judged as the operation its path matched; Rails (and Express, Django told
  // to trust a proxy) read the host from X-Forwarded-Host first.
  const w = await world(t, (r) => { r.proxy.upstreamHost = 'api.internal:8080'; });
  const tok = await w.tok();
  for (const host of ['api.test', 'admin.internal']) {
    const before = w.up.seen.length;
    const a = await raw(w.port, `GET /items/1 HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${tok}\r\n\r\n`);
    t.equal(a.status, 200);
    const seen = w.up.seen[before]!;
    t.equal(seen.headers['host'], 'api.internal:8080', `Host: ${host} goes upstream as the pinned host`);
    t.equal(seen.headers['x-forwarded-host'], 'api.internal:8080', 'X-Forwarded-Host too, not the client\'s');
    t.equal(seen.rawHeaders.filter((n, i) => i % 2 === 0 && n.toLowerCase() === 'host').length, 1, 'one Host line');
  }
});

t.test('proxy.upstreamHost that is no host[:port] stops the rules load, naming the field', async (t) => {
  for (const bad of ['api internal', 'a/b', 'x:65536', '']) {
    t.throws(() => loadRules(writeRules(baseRules('http://127.0.0.1:1', 'http://127.0.0.1:2/jwks', (r) => { r.proxy.upstreamHost = bad; }), mkdtempSync(join(tmpdir(), 'dg-host-')))), /proxy\.upstreamHost/, JSON.stringify(bad));
  }
});

t.test('a claim named as a property every object has (constructor) is read from the token\'s own claims only', async (t) => {
  // Read from the prototype before: Object's constructor function, which is no version, so
  // every credentialed request was refused.
  const w = await world(t, (r) => { r.contract.declared = { claim: 'constructor' }; });
  const header = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined }), headers: { 'contract-version': '2026-09' } });
  t.equal(header.status, 200, 'declared in the header: forwarded (before: 400 unknown-contract-version)');
  const claimed = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined, claims: { constructor: '2026-09' } }) });
  t.equal(claimed.status, 200, 'declared in an own claim of that name: forwarded');
  const none = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined }) });
  t.equal(none.json?.code, 'contract-version-required', 'declared nowhere: said so');
});

t.test('a header named as a property every object has (Constructor) is read from the request\'s own headers only', async (t) => {
  // Node's request headers inherit Object's prototype: without the header, its constructor was
  // read as the declared version, and a claim's version "conflicted" with it.
  const w = await world(t, (r) => { r.contract.declared = { header: 'Constructor' }; });
  const claimed = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(claimed.status, 200, 'declared in the claim only: forwarded (before: 400 contract-version-conflict)');
  const header = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined }), headers: { constructor: '2026-09' } });
  t.equal(header.status, 200, 'declared in the header: forwarded');
  const none = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined }) });
  t.equal(none.json?.code, 'contract-version-required', 'declared nowhere: said so (before: unknown-contract-version)');
});

t.test('hop-by-hop, Connection-named and method-override headers never reach the upstream', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  const head = [
    `Authorization: Bearer ${tok}`, 'Connection: keep-alive, X-Secret-Hop', 'X-Secret-Hop: 1', 'Keep-Alive: timeout=5',
    'TE: trailers', 'Proxy-Authorization: Basic eDp5', 'X-Forwarded-For: 10.0.0.1', 'X-Forwarded-Host: evil', 'Forwarded: for=1.2.3.4',
  ];
  const a = await raw(w.port, `GET /items/1 HTTP/1.1\r\nHost: api.test\r\n${head.join('\r\n')}\r\n\r\n`);
  t.equal(a.status, 200);
  const h = w.up.seen[0]!.headers;
  for (const n of ['x-secret-hop', 'keep-alive', 'te', 'proxy-authorization', 'forwarded']) t.notOk(n in h, `${n} removed`);
  t.equal(h['x-forwarded-for'], '10.0.0.1, 127.0.0.1', 'the client address appended');
  t.equal(h['x-forwarded-host'], 'api.test');
  t.equal(h['x-forwarded-proto'], 'http');
  t.equal(h['authorization'], `Bearer ${tok}`, 'the credential itself is the upstream\'s to see');
  // The scheme a TLS-terminating proxy in front says: https or http, nothing else.
  // Its lines are one comma list (RFC 9110 §5.3): a proxy in front that adds a line of its own
  // after a client's forged `https` makes the same list as `https, http` on one line.
  for (const [sent, seen] of [['https', 'https'], ['HTTPS', 'https'], ['javascript', 'http'], ['https, http', 'http'], ['https\r\nX-Forwarded-Proto: http', 'http'], ['https\r\nX-Forwarded-Proto: https', 'http'], [' https ', 'https']] as const) {
    const before = w.up.seen.length;
    t.equal((await raw(w.port, `GET /items/1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer ${tok}\r\nX-Forwarded-Proto: ${sent}\r\n\r\n`)).status, 200);
    t.equal(w.up.seen[before]!.headers['x-forwarded-proto'], seen, `X-Forwarded-Proto: ${JSON.stringify(sent)}`);
  }

  // Method overrides: a GET the agent may do cannot become a DELETE behind driftguard's back.
  for (const name of ['X-HTTP-Method-Override', 'X-HTTP-Method', 'X-Method-Override', 'x-http-method-override']) {
    const before = w.up.seen.length;
    const r = await w.call('GET', '/items/1', { token: tok, headers: { [name]: 'DELETE' } });
    t.equal(r.status, 200, `${name}: the operation is still getItem`);
    t.notOk(r.headers.get('driftguard-warning'), 'not treated as the deprecated DELETE');
    const seen = w.up.seen[before]!;
    t.equal(seen.method, 'GET');
    t.notOk(Object.keys(seen.headers).some((k) => k.includes('method')), `${name} removed`);
  }
  // URL overrides, by which IIS, Symfony and Zend route: removed too.
  // And the original-request headers a proxy in front sets and an app behind it may route by.
  for (const name of ['X-Original-URL', 'X-Rewrite-URL', 'X-Override-URL', 'X-Original-URI', 'X-Original-Method', 'X-Forwarded-Uri', 'X-Forwarded-Method', 'X-Forwarded-Prefix', 'X-Forwarded-Path']) {
    const before = w.up.seen.length;
    const r = await w.call('GET', '/items/1', { token: tok, headers: { [name]: '/admin' } });
    t.equal(r.status, 200);
    t.notOk(name.toLowerCase() in w.up.seen[before]!.headers, `${name} removed`);
  }
  // Underscore spellings: a CGI-style upstream (WSGI, Rack, PHP) reads Driftguard_Consumer as
  // Driftguard-Consumer and X_HTTP_Method_Override as the override. Any name with '_' is dropped.
  {
    const before = w.up.seen.length;
    const r = await raw(w.port, `GET /items/1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer ${tok}\r\nDriftguard_Consumer: spiffe://forged\r\nDriftguard_Decision: allow\r\nX_HTTP_Method_Override: DELETE\r\nX_Forwarded_Host: evil.example\r\nX-Plain: kept\r\n\r\n`);
    t.equal(r.status, 200);
    const h = w.up.seen[before]!.headers;
    t.notOk(Object.keys(h).some((k) => k.includes('_')), 'no header with an underscore reaches the upstream');
    t.equal(h['x-plain'], 'kept', 'other headers still do');
    t.equal(h['x-forwarded-host'], 'api.test');
  }
  // Dots too: Driftguard.Consumer reads as Driftguard-Consumer there.
  {
    const before = w.up.seen.length;
    const r = await raw(w.port, `GET /items/1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer ${tok}\r\nDriftguard.Consumer: spiffe://forged\r\nX.HTTP.Method.Override: DELETE\r\nX-Plain: kept\r\n\r\n`);
    t.equal(r.status, 200);
    const h = w.up.seen[before]!.headers;
    t.notOk(Object.keys(h).some((k) => k.includes('.')), 'no header with a dot reaches the upstream');
    t.equal(h['x-plain'], 'kept');
  }
  // And the other way round: a POST with an override naming an allowed method is still the POST.
  const denied = await w.call('POST', '/items/1/archive', { token: await w.tok({ contract: '2026-01' }), headers: { 'X-HTTP-Method-Override': 'GET' }, body: '{}' });
  t.equal(denied.status, 409);
});

t.test('hop-by-hop and Connection-named headers are removed from the upstream\'s response', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { connection: 'x-internal', 'x-internal': 'secret', 'keep-alive': 'timeout=1', 'driftguard-warning': 'forged', 'content-type': 'text/plain' });
    res.end('ok');
  };
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 200);
  t.notOk(a.headers.get('x-internal'));
  t.notOk(a.headers.get('driftguard-warning'), 'the upstream cannot forge driftguard\'s warning');
  t.equal(a.text, 'ok');
});

t.test('method-override headers are removed from the upstream\'s response too, as from the request', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'x-http-method-override': 'DELETE', 'x-http-method': 'DELETE', 'x-method-override': 'DELETE', 'content-type': 'text/plain' });
    res.end('ok');
  };
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 200);
  for (const name of ['x-http-method-override', 'x-http-method', 'x-method-override']) t.notOk(a.headers.has(name), `${name} removed`);
});

t.test('Vary names the credential and the contract header; the earlier Sunset and Deprecation stand', async (t) => {
  const w = await world(t);
  let upstreamHeaders: Record<string, string | string[]> = {};
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'public, max-age=3600', ...upstreamHeaders });
    res.end('ok');
  };
  const names = (v: string | null) => (v ?? '').split(',').map((n) => n.trim().toLowerCase());
  const plain = await w.call('GET', '/items/1', { token: await w.tok() });
  t.same(names(plain.headers.get('vary')), ['authorization', 'contract-version'], 'a shared cache keys the answer on who called, with which contract');
  upstreamHeaders = { vary: 'Accept, authorization' };
  t.same(names((await w.call('GET', '/items/1', { token: await w.tok() })).headers.get('vary')), ['accept', 'authorization', 'contract-version'], 'the upstream\'s Vary stays, once each');
  upstreamHeaders = { vary: '*' };
  t.equal((await w.call('GET', '/items/1', { token: await w.tok() })).headers.get('vary'), '*');
  upstreamHeaders = {};
  t.same(names((await w.call('GET', '/status')).headers.get('vary')), ['contract-version'], 'a public operation\'s answer depends on the declared version alone (it may warn a stale one)');

  // deleteItem: deprecated since 2026-01-01, sunset 2099-01-01 in the rules.
  upstreamHeaders = { sunset: 'Wed, 01 Jan 2031 00:00:00 GMT', deprecation: '@1700000000' };
  const earlier = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
  t.equal(earlier.headers.get('sunset'), 'Wed, 01 Jan 2031 00:00:00 GMT', 'the upstream\'s earlier sunset stands');
  t.equal(earlier.headers.get('deprecation'), '@1700000000', 'and its earlier deprecation');
  upstreamHeaders = { sunset: 'Sat, 01 Jan 2200 00:00:00 GMT', deprecation: 'not a date' };
  const later = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
  t.equal(later.headers.get('sunset'), new Date(Date.UTC(2099, 0, 1)).toUTCString(), 'the rules\' earlier sunset stands');
  t.equal(later.headers.get('deprecation'), `@${Date.UTC(2026, 0, 1) / 1000}`, 'an unreadable date gives way to the rules\'');
  // Date.parse reads these as dates in 2001; they are not HTTP dates or RFC 9745 dates.
  for (const [sunset, deprecation] of [['see changelog 2', 'true; v=1'], ['1', '2001-01-01'], ['2001-01-01T00:00:00Z', 'Mon, 01 Jan 2001 00:00:00 GMT']]) {
    upstreamHeaders = { sunset: sunset!, deprecation: deprecation! };
    const odd = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
    t.equal(odd.headers.get('sunset'), new Date(Date.UTC(2099, 0, 1)).toUTCString(), `sunset ${JSON.stringify(sunset)} is unreadable: the rules' stands`);
    t.equal(odd.headers.get('deprecation'), `@${Date.UTC(2026, 0, 1) / 1000}`, `deprecation ${JSON.stringify(deprecation)} is unreadable: the rules' stands`);
  }
  // Two fields of a single-value header: invalid, whatever their dates (before: both passed on).
  upstreamHeaders = { sunset: ['Wed, 01 Jan 2031 00:00:00 GMT', 'Thu, 01 Jan 2032 00:00:00 GMT'], deprecation: ['@1600000000', '@1500000000'] };
  const twice = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
  t.equal(twice.headers.get('sunset'), new Date(Date.UTC(2099, 0, 1)).toUTCString(), 'two Sunset fields: the rules\' stands, alone');
  t.equal(twice.headers.get('deprecation'), `@${Date.UTC(2026, 0, 1) / 1000}`, 'two Deprecation fields: the rules\' stands, alone');
  // An upstream's Sunset before the rules' Deprecation (the app's own removal plan): the pair
  // stays in order (RFC 9745 §4), the Deprecation no later than the Sunset.
  upstreamHeaders = { sunset: 'Wed, 01 Jan 2025 00:00:00 GMT' };
  const early = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
  t.equal(early.headers.get('sunset'), 'Wed, 01 Jan 2025 00:00:00 GMT', 'the upstream\'s earlier sunset stands');
  t.equal(early.headers.get('deprecation'), `@${Date.UTC(2025, 0, 1) / 1000}`, 'and the deprecation is moved back to it');
});

t.test('the upstream\'s own Link header stays, and the deprecation links are added to it', async (t) => {
  const w = await world(t);
  w.up.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { link: '<https://api.test.local/items?page=2>; rel="next"', 'content-type': 'text/plain' });
    res.end('ok');
  };
  const a = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN }) });
  t.equal(a.status, 200, 'a deprecated operation, warned');
  const link = a.headers.get('link') ?? '';
  t.match(link, '<https://api.test.local/items?page=2>; rel="next"', 'the upstream\'s pagination link (before: replaced)');
  t.match(link, /rel="deprecation"/);
  t.match(link, /rel="sunset"/);
  const plain = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(plain.headers.get('link'), '<https://api.test.local/items?page=2>; rel="next"', 'and alone where nothing is deprecated');
});

t.test('the query string is forwarded untouched and never takes part in matching', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items/1?path=/admin&x=%2F..', { token: await w.tok() });
  t.equal(a.status, 200);
  t.equal(w.up.seen[0]!.url, '/items/1?path=/admin&x=%2F..');
  const b = await w.call('GET', '/admin?/items/1', { token: await w.tok() });
  t.equal(b.status, 403);
  t.equal(b.json.code, 'unknown-operation');
});

t.test('HEAD needs the GET\'s permission', async (t) => {
  const w = await world(t);
  const a = await fetch(`${w.dg.url}/items/1`, { method: 'HEAD', headers: { authorization: `Bearer ${await w.tok()}` } });
  t.equal(a.status, 200);
  const b = await fetch(`${w.dg.url}/items/1`, { method: 'HEAD', headers: { authorization: `Bearer ${await w.tok({ scope: 'other' })}` } });
  t.equal(b.status, 403);
  t.equal(w.up.seen.length, 1);
});

t.test('a segment that differs from a literal beside a variable only in case is refused, not matched to the variable', async (t) => {
  // Express (by default) and ASP.NET Core route case-insensitively: /items/EXPORT would run
  // exportItems upstream while driftguard decided getItem(id=EXPORT), with getItem's scopes.
  const w = await world(t, (r) => {
    r.contract.operations.push({ id: 'exportItems', method: 'GET', path: '/items/export', scopes: ['items.admin'], sensitivity: 'high' });
  });
  const reader = await w.tok({ scope: 'items.read' });
  const exact = await w.call('GET', '/items/export', { token: reader });
  t.equal(exact.status, 403);
  t.equal(exact.json.code, 'insufficient-scope', 'the literal: exportItems needs items.admin');
  for (const path of ['/items/EXPORT', '/items/Export', '/items/eXport']) {
    const r = await w.call('GET', path, { token: reader });
    t.equal(r.status, 403, path);
    t.equal(r.json.code, 'unknown-operation');
    t.match(r.json.detail, /path segment 2 differs from the contract's only in case/);
  }
  t.equal(w.up.seen.length, 0, 'none reached the upstream');
  // Any other value is the variable's, and a deeper literal still backtracks to it.
  t.equal((await w.call('GET', '/items/exports', { token: reader })).status, 200);
  t.equal((await w.call('GET', '/items/1', { token: reader })).status, 200);
  // Where no variable sits beside the literal, another case is simply no operation.
  t.equal((await w.call('GET', '/Items', { token: reader })).json.code, 'unknown-operation');
});

t.test('a variable\'s value that is another operation\'s path with a format suffix is refused: Rails, Django and Spring route it there', async (t) => {
  // Rails routes carry (.:format): /items/export.json runs exportItems upstream, while a
  // plain match decided getItem(id=export.json) with getItem's scopes.
  const w = await world(t, (r) => {
    r.contract.operations.push(
      { id: 'exportItems', method: 'GET', path: '/items/export', scopes: ['items.admin'], sensitivity: 'high' },
      { id: 'adminItems', method: 'GET', path: '/admin/items', scopes: ['items.admin'], sensitivity: 'low' },
      { id: 'tenantCollection', method: 'GET', path: '/{tenant}/{collection}', scopes: ['items.read'], sensitivity: 'low' },
      { id: 'openapi', method: 'GET', path: '/docs/openapi.json', public: true, sensitivity: 'low' },
      { id: 'doc', method: 'GET', path: '/docs/{page}', public: true, sensitivity: 'low' },
    );
  });
  const reader = await w.tok({ scope: 'items.read' });
  for (const [path, segment] of [['/items/export.json', 2], ['/items/export.tar.gz', 2], ['/admin/items.xml', 2], ['/items/EXPORT.json', 2]] as const) {
    const r = await w.call('GET', path, { token: reader });
    t.equal(r.json?.code, 'unknown-operation', path);
    t.match(r.json?.detail, new RegExp(`path segment ${segment} is another operation's with a format suffix`), path);
  }
  t.equal(w.up.seen.length, 0, 'none reached the upstream');
  // A suffix on the variable's own value, a dot inside a value, a literal with a dot: as before.
  for (const [path, op] of [['/items/1.json', 'getItem'], ['/items/exports.json', 'getItem'], ['/items/a.export', 'getItem'], ['/docs/openapi.json', 'openapi'], ['/docs/openapi.yaml', 'doc'], ['/acme/items.json', 'tenantCollection']] as const) {
    const r = await w.call('GET', path, { token: reader });
    t.equal(r.status, 200, path);
    t.equal(w.up.seen.at(-1)?.headers['driftguard-operation'], op, `${path}: ${op}`);
  }
});

t.test('a request a case-ignoring router would take to another operation is refused, however deep the fold', async (t) => {
  // /admin/ITEMS: the literal admin matched, items did not, and the walk backtracked to
  // /{tenant}/{collection}; a case-ignoring upstream runs adminItems, which needs items.admin.
  const w = await world(t, (r) => {
    r.contract.operations.push(
      { id: 'adminItems', method: 'GET', path: '/admin/items', scopes: ['items.admin'], sensitivity: 'low' },
      { id: 'tenantCollection', method: 'GET', path: '/{tenant}/{collection}', scopes: ['items.read'], sensitivity: 'low' },
    );
  });
  const reader = await w.tok({ scope: 'items.read' });
  t.equal((await w.call('GET', '/admin/items', { token: reader })).json.code, 'insufficient-scope', 'the literal path');
  // ſ (U+017F) upper-cases to S: .NET's OrdinalIgnoreCase takes /admin/item%C5%BF for /admin/items.
  for (const [path, segment] of [['/admin/ITEMS', 2], ['/ADMIN/items', 1], ['/Admin/Items', 1], ['/admin/item%C5%BF', 2]] as const) {
    const r = await w.call('GET', path, { token: reader });
    t.equal(r.json?.code, 'unknown-operation', path);
    t.match(r.json?.detail, new RegExp(`path segment ${segment} differs from the contract's only in case`), `${path}: segment ${segment}`);
  }
  t.equal(w.up.seen.length, 0, 'none reached the upstream');
  const other = await w.call('GET', '/acme/ITEMS', { token: reader });
  t.equal(other.status, 200, 'capitals that fold onto no other operation are the variables\'');
  t.equal(w.up.seen[0]?.headers['driftguard-operation'], 'tenantCollection');
});

t.test('a HEAD refusal carries no Content-Length: its detail may name the method, and a GET\'s body would differ (RFC 9110 §8.6)', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  for (const path of ['/nope', '/items/1/nothing-here', '/items/1']) {
    const auth = path === '/items/1' ? '' : `Authorization: Bearer ${tok}\r\n`;
    const head = await raw(w.port, `HEAD ${path} HTTP/1.1\r\nHost: api.test\r\n${auth}Connection: close\r\n\r\n`);
    const getA = await raw(w.port, `GET ${path} HTTP/1.1\r\nHost: api.test\r\n${auth}Connection: close\r\n\r\n`);
    t.equal(head.status, getA.status, `${path}: refused alike (${head.status})`);
    t.ok(head.status >= 400);
    t.notOk('content-length' in head.headers, `${path}: HEAD, no Content-Length`);
    t.equal(getA.headers['content-length'], String(Buffer.byteLength(getA.body)), `${path}: GET, its body's length`);
  }
  t.equal(w.up.seen.length, 0);
});
