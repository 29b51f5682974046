// One test per reason code of the core: status, problem body, extension members,
// WWW-Authenticate where it applies, and that a denied call never reaches the upstream.

import t from 'tap';
import { connect } from 'node:net';
import { raw, get } from '../support/raw.ts';
import { world, assertDenied, AGENT, BOT, HUMAN } from './world.ts';

t.test('malformed-request: a dot segment is refused before anything else', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  const a = await raw(w.port, get('/items/../items/1', [`Authorization: Bearer ${tok}`]));
  t.equal(a.status, 400);
  t.equal(a.headers['content-type'], 'application/problem+json');
  t.equal(a.json().code, 'malformed-request');
  t.equal(a.json().type, 'https://driftguard.io/problems/malformed-request');
  t.equal(w.up.seen.length, 0);
});

t.test('headers-too-large: more than 16 KiB of headers is 431 as a problem body, never forwarded', async (t) => {
  const w = await world(t);
  const a = await raw(w.port, get('/items/1', [`X-Padding: ${'a'.repeat(20 * 1024)}`]));
  t.equal(a.status, 431);
  t.equal(a.headers['content-type'], 'application/problem+json');
  t.equal(a.json().code, 'headers-too-large');
  t.equal(a.json().status, 431);
  t.equal(w.up.seen.length, 0);
});

/** Every byte of the answer to `request`, until driftguard closes the connection. */
function answerBytes(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', reject);
    socket.write(request);
  });
}

t.test('request-timeout: a request whose head does not arrive within proxy.timeouts.request is 408, not malformed', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.request = '1s'; });
  // The head never ends: no blank line.
  const slow = await raw(w.port, `GET /items/1 HTTP/1.1\r\nHost: x\r\n`, 10_000);
  // Before: 400 malformed-request, and counted as one, so a slow-client attack looked like a flood of malformed requests.
  t.equal(slow.status, 408);
  t.match(slow.json(), { reason: 'request-timeout', status: 408, detail: /did not arrive in time/ });
});

t.test('target-too-long: a request line over 16 KiB is 414, not "send fewer headers"; raw answers carry Date', async (t) => {
  const w = await world(t);
  const long = await raw(w.port, get(`/items/${'a'.repeat(17 * 1024)}`, []));
  t.equal(long.status, 414);
  t.match(long.json(), { code: 'target-too-long', status: 414, detail: /request line/ });
  t.ok(!Number.isNaN(Date.parse(long.headers['date']!)), 'an answer written to the socket has a Date, as Node\'s own answers do');
  const headers = await raw(w.port, get('/items/1', [`X-Padding: ${'a'.repeat(20 * 1024)}`]));
  t.equal(headers.json().code, 'headers-too-large', 'long headers are still 431');
  t.ok(headers.headers['date']);
  // HEAD: the answer has no content.
  const head = await answerBytes(w.port, `HEAD /items/${'a'.repeat(17 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  t.match(head, /^HTTP\/1\.1 414 /);
  t.equal(head.slice(head.indexOf('\r\n\r\n') + 4), '', 'nothing after the head');
  t.equal(w.up.seen.length, 0);
});

t.test('CONNECT is answered 400 and recorded, never tunnelled, in audit mode too', async (t) => {
  const w = await world(t, (r) => { r.proxy.mode = 'audit'; });
  for (const target of ['127.0.0.1:22', '/items/1']) {
    const a = await raw(w.port, `CONNECT ${target} HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n`);
    t.equal(a.status, 400, target);
    t.match(a.json(), { code: 'malformed-request', detail: /CONNECT is not served/ });
  }
  t.equal(w.up.seen.length, 0);
});

t.test('unknown-operation: a path the contract does not have, and a known path with another method', async (t) => {
  const w = await world(t);
  const tok = await w.tok();
  assertDenied(t, w, await w.call('GET', '/admin/users', { token: tok }), 403, 'unknown-operation');
  assertDenied(t, w, await w.call('PATCH', '/items/1', { token: tok }), 403, 'unknown-operation');
  // A variable is exactly one non-empty segment; matching is case-sensitive.
  assertDenied(t, w, await w.call('GET', '/items/1/2', { token: tok }), 403, 'unknown-operation');
  assertDenied(t, w, await w.call('GET', '/Items/1', { token: tok }), 403, 'unknown-operation');
});

t.test('operation-sunset: 410 for everybody, with or without a credential', async (t) => {
  const w = await world(t, (r) => { r.contract.operations.find((o: any) => o.id === 'legacy').deprecated.replacement = 'getItem'; });
  const anonymous = await w.call('GET', '/legacy');
  assertDenied(t, w, anonymous, 410, 'operation-sunset');
  t.equal(anonymous.json.operation, 'legacy');
  t.equal(anonymous.json.sunset, '2025-06-01T00:00:00.000Z');
  t.equal(anonymous.json.replacement, 'getItem');
  t.equal(anonymous.headers.get('sunset'), new Date('2025-06-01T00:00:00Z').toUTCString());
  t.equal(anonymous.headers.get('deprecation'), '@1735689600');
  const human = await w.call('GET', '/legacy', { token: await w.tok({ sub: HUMAN }) });
  assertDenied(t, w, human, 410, 'operation-sunset');
});

t.test('missing-credential: no Authorization, another scheme, or a token in the query string', async (t) => {
  const w = await world(t);
  for (const [path, headers] of [
    ['/items/1', {}],
    ['/items/1', { authorization: 'Basic YWxpY2U6c2VjcmV0' }],
    [`/items/1?access_token=${await w.tok()}`, {}],
  ] as const) {
    const a = await w.call('GET', path, { headers });
    assertDenied(t, w, a, 401, 'missing-credential');
    t.equal(a.json.operation, 'getItem');
    t.match(a.headers.get('www-authenticate'), /^Bearer realm="driftguard"$/, 'a challenge without error: no token was presented');
  }
});

t.test('invalid-credential: a token that is not a signed JWT', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items/1', { token: 'not.a.token' });
  assertDenied(t, w, a, 401, 'invalid-credential');
  t.match(a.headers.get('www-authenticate'), /^Bearer realm="driftguard", error="invalid_token"/);
  const expired = await w.call('GET', '/items/1', { token: await w.tok({ now: Date.now() - 3_600_000, ttl: 60 }) });
  assertDenied(t, w, expired, 401, 'invalid-credential');
  t.match(expired.headers.get('www-authenticate'), /error="invalid_token"/);
  // A tab after the scheme (RFC 9110 wants a space): a malformed bearer token, not another scheme.
  const tab = await w.call('GET', '/items/1', { headers: { authorization: `Bearer\t${await w.tok()}` } });
  assertDenied(t, w, tab, 401, 'invalid-credential');
  t.equal(tab.json.detail, 'malformed bearer token');
});

t.test('credential-lifetime-exceeded: a long-lived automation token, or one without iat', async (t) => {
  const w = await world(t);
  for (const tok of [await w.tok({ ttl: 2 * 3600 }), await w.tok({ omit: ['iat'] })]) {
    const a = await w.call('GET', '/items/1', { token: tok });
    assertDenied(t, w, a, 401, 'credential-lifetime-exceeded');
    t.match(a.headers.get('www-authenticate'), /error="invalid_token"/);
  }
  // A token issued long ago but still valid for longer than the limit: exp - now counts too.
  const a = await w.call('GET', '/items/1', { token: await w.tok({ omit: ['iat'], sub: HUMAN, ttl: 13 * 3600 }) });
  assertDenied(t, w, a, 401, 'credential-lifetime-exceeded');
  // Exactly the limit is within it.
  t.equal((await w.call('GET', '/items/1', { token: await w.tok({ ttl: 3600 }) })).status, 200, 'a 1h automation token');
  // The same 2h token is fine for a human (12h limit).
  const ok = await w.call('GET', '/items/1', { token: await w.tok({ sub: HUMAN, ttl: 2 * 3600 }) });
  t.equal(ok.status, 200);
});

t.test('identity-unavailable: the issuer\'s keys cannot be fetched', async (t) => {
  const w = await world(t, (r) => { r.identity.issuers[0].jwks.cooldown = '1s'; }, { waitReady: false });
  w.jwks.down = true;
  // Whether or not the first fetch got through, a key id never seen needs a refetch, which fails.
  const a = await w.call('GET', '/items/1', { token: await w.tok({ header: { kid: 'never-seen' } }) });
  assertDenied(t, w, a, 503, 'identity-unavailable');
  t.notOk(a.headers.get('www-authenticate'), 'not a credential problem: no challenge');
});

t.test('unknown-consumer: a verified subject the registry does not know', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items/1', { token: await w.tok({ sub: 'spiffe://test.local/ns/x/sa/stranger' }) });
  assertDenied(t, w, a, 403, 'unknown-consumer');
  t.equal(a.json.operation, 'getItem');
});

t.test('insufficient-scope: the token lacks a scope the operation needs', async (t) => {
  const w = await world(t);
  const a = await w.call('POST', '/items', { token: await w.tok({ scope: 'items.read' }), body: '{}' });
  assertDenied(t, w, a, 403, 'insufficient-scope');
  t.equal(a.headers.get('www-authenticate'), 'Bearer realm="driftguard", error="insufficient_scope", scope="items.write"');
  // scp arrays count as scopes too
  const b = await w.call('POST', '/items', { token: await w.tok({ scope: undefined, claims: { scp: ['items.read'] } }), body: '{}' });
  assertDenied(t, w, b, 403, 'insufficient-scope');
  const ok = await w.call('POST', '/items', { token: await w.tok({ scope: undefined, claims: { scp: ['items.write'] } }), body: '{}' });
  t.equal(ok.status, 200, 'an scp array with the scope is enough');
});

t.test('undeclared-operation: outside the consumer\'s declared operations', async (t) => {
  const w = await world(t);
  const a = await w.call('POST', '/items', { token: await w.tok({ sub: BOT }), body: '{}' });
  assertDenied(t, w, a, 403, 'undeclared-operation');
  t.equal(a.json.operation, 'createItem');
  const ok = await w.call('GET', '/items/1', { token: await w.tok({ sub: BOT }) });
  t.equal(ok.status, 200, 'a declared operation is allowed');
});

t.test('contract-version-required: an automation that declares no contract version', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined }) });
  assertDenied(t, w, a, 400, 'contract-version-required');
  t.equal(a.json.currentContract, '2026-09');
  const human = await w.call('GET', '/items/1', { token: await w.tok({ sub: HUMAN, contract: undefined }) });
  t.equal(human.status, 200, 'a human need not declare one');
});

t.test('unknown-contract-version: a version the API never published, by claim or header', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items/1', { token: await w.tok({ contract: '1999-01' }) });
  assertDenied(t, w, a, 400, 'unknown-contract-version');
  t.equal(a.json.currentContract, '2026-09');
  const b = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined }), headers: { 'contract-version': '1999-01' } });
  assertDenied(t, w, b, 400, 'unknown-contract-version');
  const c = await w.call('GET', '/items/1', { token: await w.tok({ contract: undefined, claims: { contract_version: 202609 } }) });
  assertDenied(t, w, c, 400, 'unknown-contract-version');
});

t.test('stale-contract: below the operation\'s changedIn, or below the minimum, from blockAt up', async (t) => {
  const w = await world(t);
  const a = await w.call('POST', '/payments', { token: await w.tok({ contract: '2026-06' }), body: '{}' });
  assertDenied(t, w, a, 409, 'stale-contract');
  t.equal(a.json.operation, 'pay');
  t.equal(a.json.declaredContract, '2026-06');
  t.equal(a.json.currentContract, '2026-09');
  t.equal(a.json.changedIn, '2026-09');
  // Below contract.minimum (2026-06) on a high-sensitivity operation
  const b = await w.call('POST', '/items/1/archive', { token: await w.tok({ contract: '2026-01' }), body: '{}' });
  assertDenied(t, w, b, 409, 'stale-contract');
  t.equal(b.json.declaredContract, '2026-01');
  t.notOk('changedIn' in b.json);
  t.notOk('replacement' in b.json || 'sunset' in b.json, 'not deprecated: nowhere else to go');
  // A stale contract on a deprecated operation says where to go, as deprecated-operation does.
  const d = await w.call('DELETE', '/items/1', { token: await w.tok({ contract: '2026-01' }) });
  assertDenied(t, w, d, 409, 'stale-contract');
  t.equal(d.json.replacement, 'archiveItem');
  t.equal(d.json.sunset, '2099-01-01T00:00:00.000Z');
  // A header that agrees with the claim changes nothing
  const c = await w.call('POST', '/payments', { token: await w.tok({ contract: '2026-06' }), headers: { 'contract-version': '2026-06' }, body: '{}' });
  assertDenied(t, w, c, 409, 'stale-contract');
});

t.test('contract-version-conflict: a claim and a header that disagree, whichever is the older', async (t) => {
  const w = await world(t);
  // Before: the claim decided (200) and the upstream got the stale header as sent.
  const a = await w.call('POST', '/payments', { token: await w.tok({ contract: '2026-09' }), headers: { 'contract-version': '2026-01' }, body: '{}' });
  assertDenied(t, w, a, 400, 'contract-version-conflict');
  t.equal(a.json.currentContract, '2026-09');
  t.notMatch(a.json.detail, /2026-01/, 'the detail names the claim and the header, not the values the caller sent');
  const b = await w.call('POST', '/payments', { token: await w.tok({ contract: '2026-06' }), headers: { 'contract-version': '2026-09' }, body: '{}' });
  assertDenied(t, w, b, 400, 'contract-version-conflict');
  const c = await w.call('POST', '/payments', { token: await w.tok({ contract: '2026-09' }), headers: { 'contract-version': '2026-09' }, body: '{}' });
  t.equal(c.status, 200, 'the same version in both is one declaration');
  // The header twice (or its values on one line) is two declarations: it said the claim and the
  // header differed, or, without a claim, that the version was unknown.
  for (const [name, sent] of [['twice', ['2026-09', '2026-09']], ['one line', ['2026-09, 2026-06']]] as const) {
    for (const contract of ['2026-09', undefined]) {
      const tok = await w.tok(contract ? { contract } : { contract: undefined as never });
      const d = await raw(w.port, `POST /payments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\ncontent-length: 2\r\n${sent.map((v) => `contract-version: ${v}\r\n`).join('')}\r\n{}`);
      t.equal(d.status, 400, `${name}, claim ${contract}`);
      const body = JSON.parse(d.body) as { reason: string; detail: string };
      t.equal(body.reason, 'contract-version-conflict');
      t.equal(body.detail, 'the Contract-Version header declares more than one contract version: declare one');
    }
  }
});

t.test('deprecated-operation: an automation on a deprecated, high-sensitivity operation', async (t) => {
  const w = await world(t);
  const a = await w.call('DELETE', '/items/1', { token: await w.tok() });
  assertDenied(t, w, a, 403, 'deprecated-operation');
  t.equal(a.json.operation, 'deleteItem');
  t.equal(a.json.replacement, 'archiveItem');
  t.equal(a.json.sunset, '2099-01-01T00:00:00.000Z');
  t.equal(a.json.currentContract, '2026-09');
  t.equal(a.json.declaredContract, '2026-09');
  t.equal(a.headers.get('deprecation'), '@1767225600');
  t.equal(a.headers.get('sunset'), new Date('2099-01-01T00:00:00Z').toUTCString());
  // No type: the link may be anything (it said type="text/html" whatever it was).
  t.equal(a.headers.get('link'), '<https://api.test.local/changes>; rel="deprecation", <https://api.test.local/changes>; rel="sunset"');
});

t.test('deprecated-operation: a replacement whose own deprecation refuses the caller too is not named; one that only warns it is', async (t) => {
  // archiveItem's deprecation came later, already in force: an agent told to use it was refused there too.
  const w = await world(t, (r) => { r.contract.operations.find((o: any) => o.id === 'archiveItem').deprecated = { since: '2026-01-01' }; });
  const a = await w.call('DELETE', '/items/1', { token: await w.tok() });
  assertDenied(t, w, a, 403, 'deprecated-operation');
  t.notOk('replacement' in a.json, 'no replacement that refuses it too');
  t.notMatch(a.json.detail, /use archiveItem/);
  t.equal(a.json.sunset, '2099-01-01T00:00:00.000Z', 'the sunset still');
  const there = await w.call('POST', '/items/1/archive', { token: await w.tok() });
  t.equal(there.status, 403, 'the replacement would have refused it');
  // A person is only warned on archiveItem: it is still where to go.
  const person = await w.call('DELETE', '/items/1', { token: await w.tok({ sub: HUMAN, scope: 'items.read' }) });
  t.equal(person.status, 403);
  t.equal(person.json.replacement, 'archiveItem', 'named to a caller it does not refuse');
});

t.test('operation-sunset: comes before the caller is known, so names no replacement that refuses automations; names one that refuses nobody', async (t) => {
  const sunsetDelete = (r: any) => { r.contract.operations.find((o: any) => o.id === 'deleteItem').deprecated = { since: '2026-01-01', sunset: '2026-06-01', replacement: 'archiveItem' }; };
  // archiveItem's deprecation, in force, blocks automations: the agent would go from a 410 to a 403.
  const w = await world(t, (r) => { sunsetDelete(r); r.contract.operations.find((o: any) => o.id === 'archiveItem').deprecated = { since: '2026-01-01' }; });
  const a = await w.call('DELETE', '/items/1', { token: await w.tok() });
  assertDenied(t, w, a, 410, 'operation-sunset');
  t.notOk('replacement' in a.json, 'no replacement that may refuse the caller too');
  t.equal(a.json.sunset, '2026-06-01T00:00:00.000Z', 'the sunset still');
  t.equal((await w.call('POST', '/items/1/archive', { token: await w.tok() })).status, 403, 'the replacement would have refused the agent');
  // Not deprecated: named.
  const kept = await world(t, sunsetDelete);
  const b = await kept.call('DELETE', '/items/1', { token: await kept.tok() });
  assertDenied(t, kept, b, 410, 'operation-sunset');
  t.equal(b.json.replacement, 'archiveItem', 'a replacement that refuses nobody is named');
});

t.test('any refusal of a deprecated operation names its replacement and sunset, whatever refused it', async (t) => {
  const w = await world(t);
  const refusals: [string, number, string, string | undefined][] = [
    ['no credential', 401, 'missing-credential', undefined],
    ['a person without the scope', 403, 'insufficient-scope', await w.tok({ sub: HUMAN, scope: 'items.read' })],
    ['a person\'s token too long-lived', 401, 'credential-lifetime-exceeded', await w.tok({ sub: HUMAN, ttl: 13 * 3600 })],
  ];
  for (const [what, status, reason, token] of refusals) {
    const a = await w.call('DELETE', '/items/1', token === undefined ? {} : { token });
    assertDenied(t, w, a, status, reason);
    t.equal(a.json.replacement, 'archiveItem', `${what}: replacement`);
    t.equal(a.json.sunset, '2099-01-01T00:00:00.000Z', `${what}: sunset`);
  }
  const current = await w.call('GET', '/items/1');
  assertDenied(t, w, current, 401, 'missing-credential');
  t.notOk('replacement' in current.json || 'sunset' in current.json, 'an operation that is not deprecated: neither');
});

t.test('upstream-unavailable: the upstream refuses connections', async (t) => {
  // Port 1, where nothing listens: the upstream's own port, once closed, could be bound again by
  // another test's server before the call (the suite runs two files at once).
  const w = await world(t, (r) => { r.proxy.upstream = 'http://127.0.0.1:1'; });
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 502);
  t.equal(a.headers.get('content-type'), 'application/problem+json');
  t.equal(a.json.code, 'upstream-unavailable');
  t.equal(a.json.operation, 'getItem');
  t.notOk('warnings' in a.json, 'nothing was warned');
  // A warned request whose forward fails: its problem names the warnings its header names.
  const stale = await w.call('GET', '/items/1', { token: await w.tok({ sub: HUMAN, scope: 'items.read', contract: '2026-01' }) });
  t.equal(stale.status, 502);
  t.equal(stale.headers.get('driftguard-warning'), 'stale-contract');
  t.same(stale.json.warnings, ['stale-contract'], 'the problem says what the header says');
});

t.test('upstream-unavailable: the upstream drops the connection without answering', async (t) => {
  const w = await world(t);
  w.up.handler = (req) => { req.socket.destroy(); };
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 502);
  t.equal(a.json.code, 'upstream-unavailable');
});

t.test('upstream-timeout: the upstream accepts and never answers', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.response = '300ms'; });
  w.up.handler = () => { /* hang */ };
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 504);
  t.equal(a.headers.get('content-type'), 'application/problem+json');
  t.equal(a.json.code, 'upstream-timeout');
  t.equal(w.up.seen.length, 1);
});

t.test('the agent\'s allowed call reaches the upstream once', async (t) => {
  const w = await world(t);
  const a = await w.call('GET', '/items/1', { token: await w.tok({ sub: AGENT }) });
  t.equal(a.status, 200);
  t.notOk(a.headers.get('driftguard-warning'), 'no warning on an allow');
  t.notOk(a.headers.get('deprecation'));
  t.equal(w.up.seen.length, 1);
});

t.test('request-timeout is never a second answer: a body still trickling after its answer only cuts the connection', async (t) => {
  const w = await world(t, (r) => { r.proxy.timeouts.request = '1s'; });
  const socket = connect(w.port, '127.0.0.1');
  let received = '';
  socket.on('data', (d: Buffer) => { received += d.toString('latin1'); });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => {});
  // No token: 401 at once, while the body of 100 bytes comes a byte every 200 ms.
  socket.write('POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n');
  const trickle = setInterval(() => { if (!socket.destroyed) socket.write('a'); }, 200);
  t.teardown(() => { clearInterval(trickle); socket.destroy(); });
  await Promise.race([closed, new Promise((r) => setTimeout(r, 8_000))]);
  clearInterval(trickle);
  const answers = received.match(/HTTP\/1\.1 \d{3}/g) ?? [];
  // Before: a 401, then an unasked-for 408 (and earlier a 400 malformed-request) on the same connection.
  t.same(answers, ['HTTP/1.1 401'], `one answer: ${answers.join(', ')}`);
  t.ok(socket.destroyed || received.length > 0, 'the connection was cut');
});
