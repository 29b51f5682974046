// Behaviour monitors over real HTTP with a frozen clock: retry storm, idempotency, endpoint
// traversal and quarantine, each in enforce and audit mode; the owner view.

import t, { type Test } from 'tap';
import { connect, type AddressInfo } from 'node:net';
import { createServer as createHttpsServer } from 'node:https';
import { selfSignedCertificate } from '../support/tls.ts';
import { AGENT, BOT, HUMAN } from '../support/driftguard.ts';
import { world, startLifecycle, problem, bearer, until, monitorsOnly, type World } from './support.ts';
import { record, windowFull } from '../../proxy/lifecycle/monitors.ts';
import { raw } from '../support/raw.ts';
import { testKey, jwks } from '../support/keys.ts';
import { jwksServer } from '../support/servers.ts';

function clock() {
  let now = Date.parse('2026-11-20T10:00:00Z');
  return { now: () => now, advance(ms: number) { now += ms; } };
}

/** Rules with every monitor off but the ones a test turns on. */
function only(w: World, monitors: Record<string, unknown>, more: (r: Record<string, any>) => void = () => {}) {
  return w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly(monitors);
    more(r);
  });
}

for (const how of ['reset after reading', 'a transfer coding driftguard will not pass on'] as const) {
  t.test(`idempotency: a write the upstream may have acted on keeps its key (${how}): the retry is a duplicate-write`, async (t) => {
    const w = await world();
    const dg = await startLifecycle(only(w, { idempotency: { at: 'medium', window: '1h' } }));
    t.teardown(async () => { await dg.close(); await w.close(); });
    let received = 0;
    w.up.handler = (req, res) => {
      req.resume();
      req.on('end', () => {
        received++;
        if (how === 'reset after reading') req.socket.destroy();
        else { res.writeHead(200, { 'transfer-encoding': 'gzip, chunked' }); res.end('x'); }
      });
    };
    const tok = await w.token();
    const post = () => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'pay-1', 'content-type': 'application/json' }), body: '{"amount":100}' });
    const first = await post();
    await first.text();
    t.equal(first.status, 502, 'the first write failed');
    // Before: any upstream-unavailable freed the key, and the retry reached the upstream again.
    await problem(t, await post(), 'duplicate-write', 409);
    t.equal(received, 1, 'the upstream received the write once');
  });
}

t.test('a client that ends its connection mid-body is decided at once, not after the body timeout', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { retryStorm: { mode: 'enforce' }, bodyTimeout: '5s' }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const s = connect({ port: Number(new URL(dg.url).port), host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => {});
  t.teardown(() => s.destroy());
  await new Promise<void>((r) => s.once('connect', () => r()));
  s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.token()}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\nabc`);
  await until(() => dg.seen.length === 1);
  s.end(); // FIN: the body's other 97 bytes will never come
  // The monitors' read of the body got no event from Node and waited out bodyTimeout (5 s here).
  t.ok(await until(() => dg.seen[0]!.decision !== undefined, 2000), 'decided within 2 s of the FIN, not at bodyTimeout');
  t.equal(dg.seen[0]!.decision!.reason, 'malformed-request');
  t.equal(w.up.seen.length, 0, 'nothing reached the upstream');
  // The FIN with the head, in one write: Node gave up before the monitors' read began.
  const s2 = connect({ port: Number(new URL(dg.url).port), host: '127.0.0.1', allowHalfOpen: true });
  s2.on('error', () => {});
  t.teardown(() => s2.destroy());
  await new Promise<void>((r) => s2.once('connect', () => r()));
  const sent = Date.now();
  s2.end(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${await w.token()}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\nabc`);
  t.ok(await until(() => dg.seen[1]?.decision !== undefined, 2000), `decided within 2 s of a FIN sent with the head (${Date.now() - sent} ms)`);
});

t.test('idempotency: a write whose upstream connection was refused frees its key at once', async (t) => {
  const w = await world();
  // Port 1, where nothing listens: a port picked free and closed was bound again by another
  // test's server (the suite runs two files at once), and the writes got its 404.
  const dg = await startLifecycle(only(w, { idempotency: { at: 'medium', window: '1h' } }, (r) => { r.proxy.upstream = 'http://127.0.0.1:1'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const post = () => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'pay-1', 'content-type': 'application/json' }), body: '{"amount":100}' });
  for (const attempt of ['first', 'retry']) {
    const r = await post();
    const body = await r.json() as { reason: string; detail: string };
    t.equal(r.status, 502, `${attempt}: forwarded, and refused by the upstream`);
    t.match(body.detail, /ECONNREFUSED/);
  }
});

t.test('idempotency: a write refused at the upstream\'s TLS handshake was never sent: it frees its key, and its retries are no duplicate-write', async (t) => {
  const w = await world();
  // An https upstream whose certificate driftguard does not trust: undici fails the call before
  // it writes a byte of the request, with a code (DEPTH_ZERO_SELF_SIGNED_CERT) no list of
  // connection failures names.
  const cert = selfSignedCertificate({ ips: ['127.0.0.1'] });
  let received = 0;
  const server = createHttpsServer({ key: cert.key, cert: cert.cert }, (req, res) => { received++; req.resume(); res.end('{}'); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const dg = await startLifecycle(only(w, { idempotency: { at: 'medium', window: '1h' }, quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } }, (r) => {
    r.proxy.upstream = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }));
  t.teardown(async () => { await dg.close(); await w.close(); server.close(); });
  const tok = await w.token();
  for (const attempt of [1, 2, 3, 4, 5]) {
    const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'pay-1', 'content-type': 'application/json' }), body: '{"amount":100}' });
    const body = await r.json() as { reason: string; detail: string };
    t.equal(r.status, 502, `attempt ${attempt}: a 502, not a duplicate-write or a quarantine`);
    t.equal(body.reason, 'upstream-unavailable');
    t.match(body.detail, /^the upstream could not be reached \(DEPTH_ZERO_SELF_SIGNED_CERT\)/);
  }
  t.equal(received, 0, 'the upstream received nothing');
});

t.test('idempotency: a write the upstream answered it did not process (503, 429, 408, 425) frees its key; after a 500 the key stays', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { idempotency: { at: 'medium', window: '1h' }, quarantine: { denials: 3, window: '1m', period: '15m' } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const answers: number[] = [];
  let received = 0;
  w.up.handler = (req, res) => {
    req.resume();
    req.on('end', () => { received++; const status = answers.shift() ?? 201; res.writeHead(status, status === 503 ? { 'retry-after': '1' } : {}); res.end('{}'); });
  };
  const tok = await w.token();
  const post = (key: string) => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': key, 'content-type': 'application/json' }), body: '{"amount":100}' });
  // A short outage: each job's write is retried with its key, as the answer asks. Before, each
  // retry was a duplicate-write (409), and three of them quarantined the client for 15 minutes.
  for (const [i, status] of [503, 429, 408, 425].entries()) {
    answers.push(status, status);
    const got: number[] = [];
    for (let attempt = 0; attempt < 3; attempt++) { const r = await post(`job-${i}`); await r.text(); got.push(r.status); }
    t.same(got, [status, status, 201], `${status}: retried, and done on the third attempt`);
  }
  t.equal(received, 12, 'every attempt reached the upstream');
  const other = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  t.equal(other.status, 201, 'not quarantined: forwarded (the upstream answers 201 to all else)');
  await other.text();
  // A 500: the write may have been done; the retry is a duplicate-write.
  answers.push(500);
  const failed = await post('job-500');
  await failed.text();
  t.equal(failed.status, 500);
  await problem(t, await post('job-500'), 'duplicate-write', 409);
  t.equal(received, 14, 'the retry after the 500 did not reach the upstream');
  // A 503 whose body is still streaming: a retry sent on its status goes through (it was a
  // duplicate-write, "still in flight", until the first answer's body had ended).
  let finish: () => void = () => {};
  w.up.handler = (req, res) => {
    req.resume();
    req.on('end', () => {
      received++;
      if (received === 15) { res.writeHead(503, { 'retry-after': '1' }); res.write('{'); finish = () => res.end('}'); } else { res.writeHead(201); res.end('{}'); }
    });
  };
  const streaming = await post('job-stream');
  t.equal(streaming.status, 503, 'the status, the body still coming');
  const retry = await post('job-stream');
  t.equal(retry.status, 201, 'the retry on the status reached the upstream');
  await retry.text();
  finish();
  await streaming.text();
  t.equal(received, 16);
});

t.test('retry storm: a Content-Length re-spelt (leading zeros, 00 for none) is the same request', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { maxBodyBytes: 16, retryStorm: { counts: 'all', maxRepeats: 2, window: '1m' } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const port = Number(new URL(dg.url).port);
  const post = (path: string, length: string | undefined, body: string) =>
    raw(port, `POST ${path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\ncontent-type: application/json\r\n${length === undefined ? '' : `content-length: ${length}\r\n`}connection: close\r\n\r\n${body}`);
  // Larger than maxBodyBytes: fingerprinted by its length. Before: each spelling a new request.
  const body = '{"name":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}';
  const large: number[] = [];
  for (let i = 0; i < 5; i++) large.push((await post('/items', '0'.repeat(i) + body.length, body)).status);
  t.same(large, [200, 200, 429, 429, 429], `only maxRepeats forwarded: ${large.join(' ')}`);
  // No body: no header, 0, 00 and 000 are one request (before: 00 hashed an empty body).
  const none: number[] = [];
  for (const length of [undefined, '0', '00', '000']) none.push((await post('/items/1/archive', length, '')).status);
  t.same(none.map((s) => s === 429), [false, false, true, true], `no body, however spelt: ${none.join(' ')}`);
});

t.test('retry storm: the same request more than maxRepeats times in the window is 429 with Retry-After', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { maxBodyBytes: 1024, retryStorm: { counts: 'all', maxRepeats: 3, window: '10s' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now() });
  for (let i = 0; i < 3; i++) {
    const ok = await fetch(`${dg.url}/items/1?q=a`, { headers: bearer(tok) });
    t.equal(ok.status, 200);
    await ok.text();
    c.advance(1000);
  }
  const res = await fetch(`${dg.url}/items/1?q=a`, { headers: bearer(tok) });
  const body = await problem(t, res, 'retry-storm', 429);
  // The first of the three was 3s ago: one more fits in 7s.
  t.equal(res.headers.get('retry-after'), '7');
  t.equal(body.retryAfter, 7);
  t.equal(body.detail, 'the same request was sent more than 3 times within 10s', 'the limit, not the count of the earlier ones');
  t.equal(dg.seen.at(-1)!.ctx.extra['retry_storm.repeats'], 4, 'recorded: sent four times, this one included (not the limit)');
  // Another query is another request.
  const other = await fetch(`${dg.url}/items/1?q=b`, { headers: bearer(tok) });
  t.equal(other.status, 200);
  await other.text();
  // The same request from another consumer is that consumer's own (the subject is hashed
  // into the fingerprint).
  const bot = await w.token({ now: c.now(), sub: BOT });
  const fromBot = await fetch(`${dg.url}/items/1?q=a`, { headers: bearer(bot) });
  t.equal(fromBot.status, 200, 'another consumer, the same request: not a repeat of the first');
  await fromBot.text();
  c.advance(7000);
  const later = await fetch(`${dg.url}/items/1?q=a`, { headers: bearer(tok) });
  t.equal(later.status, 200, 'allowed again once the window slid');
  await later.text();

  // Bodies are part of the fingerprint, and still reach the upstream whole.
  const tok2 = await w.token({ now: c.now() });
  const post = (body: string) => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok2, { 'content-type': 'application/json' }), body });
  for (let i = 0; i < 3; i++) { const r = await post('{"name":"a"}'); t.equal(r.status, 200); await r.text(); }
  await problem(t, await post('{"name":"a"}'), 'retry-storm', 429);
  const b = await post('{"name":"b"}');
  t.equal(b.status, 200, 'a different body is a different request');
  await b.text();
  t.equal(w.up.seen.at(-1)!.bodyBytes, 12, 'the buffered body was forwarded');
  // A body above maxBodyBytes is not read: it streams through whole.
  const big = 'x'.repeat(100_000);
  const r = await post(big);
  t.equal(r.status, 200);
  t.equal((await r.json() as Record<string, any>).bodyBytes, 100_000);
  t.equal(w.up.seen.at(-1)!.bodyBytes, 100_000);
});

t.test('retry storm in audit mode forwards and records', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { retryStorm: { counts: 'all', mode: 'audit', maxRepeats: 1, window: '10s' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now() });
  for (const expected of [null, 'retry-storm']) {
    const res = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
    t.equal(res.status, 200);
    t.equal(res.headers.get('driftguard-warning'), expected);
    await res.text();
  }
  t.equal(w.up.seen.length, 2);
  t.same(dg.seen.at(-1)!.ctx.extra['lifecycle.would_deny'], ['retry-storm']);
  const view = await (await fetch(`${dg.admin}/consumers`)).json() as Record<string, any>;
  const agent = view.consumers.find((x: any) => x.subject === AGENT);
  t.same(agent.decisions['would-deny'], { 'retry-storm': 1 }, 'GET /consumers counts the would-deny as one (before: as a warn)');
  t.notOk(agent.decisions.warn?.['retry-storm'], 'not also as a warning');
  t.same(agent.decisions.allow, { allowed: 1 });
});

t.test('idempotency.at never: no write needs a key (the threshold every policy takes)', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { idempotency: { at: 'never', window: '1m' } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const res = await fetch(`${dg.url}/payments`, { method: 'POST', headers: bearer(await w.token({ claims: { task_id: 't' } })), body: '{}' });
  t.equal(res.status, 200, 'a critical write without a key is forwarded');
  await res.text();
});

t.test('idempotency: key required, reused key, duplicate write in flight and within the window', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { idempotency: { at: 'medium', window: '1m' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now() });
  const post = (key: string | undefined, body: string) => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, key ? { 'idempotency-key': key } : {}), body });

  await problem(t, await post(undefined, '{"a":1}'), 'idempotency-key-required', 400);
  await problem(t, await post(' ', '{"a":1}'), 'idempotency-key-required', 400);
  // A no-break space is no visible character: it was trimmed here, and the upstream got another key.
  await problem(t, await post('\u00a0key-1\u00a0', '{"a":1}'), 'idempotency-key-required', 400);
  // At most 255 characters: a longer key is held per consumer in the keys table.
  await problem(t, await post('k'.repeat(256), '{"a":1}'), 'idempotency-key-required', 400);
  const first = await post('key-1', '{"a":1}');
  t.equal(first.status, 200);
  await first.text();
  await problem(t, await post('key-1', '{"a":2}'), 'idempotency-key-reused', 422);
  const dup = await problem(t, await post('key-1', '{"a":1}'), 'duplicate-write', 409);
  t.match(dup.detail, /already sent/);
  t.equal(w.up.seen.length, 1, 'neither the reuse nor the duplicate reached the upstream');
  // Low-sensitivity reads need no key.
  const read = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  t.equal(read.status, 200);
  await read.text();
  const longest = await post('k'.repeat(255), '{"a":1}');
  t.equal(longest.status, 200, 'a key of 255 characters is taken');
  await longest.text();
  // Another consumer's identical key is its own.
  const bot = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(await w.token({ sub: HUMAN, now: c.now() }), { 'idempotency-key': 'key-1' }), body: '{"a":1}' });
  t.equal(bot.status, 200, 'humans are not watched by default, and keys are per consumer');
  await bot.text();
  c.advance(61_000);
  const tok2 = await w.token({ now: c.now() });
  const again = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok2, { 'idempotency-key': 'key-1' }), body: '{"a":1}' });
  t.equal(again.status, 200, 'after the window the key may be used again');
  await again.text();

  // In flight: the upstream holds the first write; the same write meanwhile is a duplicate.
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { req.resume(); req.on('end', () => { void held.then(() => res.end('{}')); }); };
  const reached = w.up.seen.length;
  const slow = fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok2, { 'idempotency-key': 'key-2' }), body: '{"b":1}' });
  // The first write holds its key once the upstream has it (a fixed 100 ms could pass before it was decided).
  t.ok(await until(() => w.up.seen.length > reached, 10_000), 'the first write reached the upstream');
  const inflight = await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok2, { 'idempotency-key': 'key-2' }), body: '{"b":1}' }), 'duplicate-write', 409);
  t.match(inflight.detail, /in flight/);
  release();
  t.equal((await slow).status, 200);
});

t.test('idempotency: one consumer\'s many keys push out its own, not another consumer\'s', async (t) => {
  const OTHER = 'spiffe://test.local/ns/app/sa/other';
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.consumers.registry.push({ subject: OTHER, kind: 'automation', owner: 'team-x' });
    r.monitors = monitorsOnly({ maxBodyBytes: 4096, idempotency: { at: 'medium', maxKeys: 100, window: '1h' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const victim = await w.token();
  const other = await w.token({ sub: OTHER });
  const write = async (tok: string, key: string, body: string) => {
    const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': key, 'content-type': 'application/json' }), body });
    const text = await r.text();
    return r.status < 300 ? 'forwarded' : JSON.parse(text).code as string;
  };
  t.equal(await write(victim, 'K', '{"amount":100}'), 'forwarded');
  // 100 distinct keys: the whole table. The default share is a tenth of it.
  for (let i = 0; i < 100; i++) t.equal(await write(other, `flood-${i}`, `{"n":${i}}`), 'forwarded');
  t.equal(await write(victim, 'K', '{"amount":100}'), 'duplicate-write', 'the victim\'s key is still remembered: its retry is refused');
  t.equal(await write(other, 'flood-99', '{"n":99}'), 'duplicate-write', 'the flooder\'s newest keys are remembered');
  t.equal(await write(other, 'flood-0', '{"n":0}'), 'forwarded', 'its oldest went, past its share of 10');
});

t.test('idempotency in audit mode forwards and records', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { idempotency: { mode: 'audit', at: 'medium' } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  for (const [key, expected] of [[undefined, 'idempotency-key-required'], ['k', null], ['k', 'duplicate-write']] as const) {
    const res = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, key ? { 'idempotency-key': key } : {}), body: '{}' });
    t.equal(res.status, 200);
    t.equal(res.headers.get('driftguard-warning'), expected);
    await res.text();
  }
  t.equal(w.up.seen.length, 3);
});

// A write whose body does not arrive within monitors.bodyTimeout cannot be fingerprinted: it
// is malformed-request (400), in audit mode too, since what was read of the body is spent and
// the request could only be forwarded cut short.
for (const mode of ['enforce', 'audit'] as const) {
  t.test(`a body that does not arrive within monitors.bodyTimeout is 400 malformed-request, never forwarded (${mode} mode)`, async (t) => {
    const w = await world();
    const dg = await startLifecycle(only(w, { retryStorm: { mode: 'enforce' }, bodyTimeout: '300ms' }, (r) => { r.proxy.mode = mode; }));
    t.teardown(async () => { await dg.close(); await w.close(); });
    const s = connect(Number(new URL(dg.url).port), '127.0.0.1');
    let answer = '';
    s.on('data', (c: Buffer) => { answer += c.toString('latin1'); });
    s.on('error', () => {});
    s.write(`POST /items HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${await w.token()}\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\nFIRST-HALF`);
    // The answer at bodyTimeout (300 ms); 2 s of polling were not always enough on a busy machine.
    await until(() => answer.includes('\r\n\r\n'), 10_000);
    s.write('SECONDHALF');
    await new Promise((r) => setTimeout(r, 200));
    s.destroy();
    t.match(answer, /^HTTP\/1\.1 400 /, 'refused');
    t.match(answer, /"code":"malformed-request"/);
    t.notMatch(answer, /driftguard-warning/i, 'enforced, not a would-deny');
    t.equal(w.up.seen.length, 0, 'the upstream saw nothing (before, in audit mode, it got the body without its first half)');
    t.match(dg.seen.at(-1)?.decision, { decision: 'deny', reason: 'malformed-request', enforced: true });
  });
}

t.test('a request recorded after later arrivals (its body was slow) leaves the window on time', async (t) => {
  const w = await world();
  const c = clock();
  // The retry-storm monitor reads small bodies before the decision.
  const dg = await startLifecycle(only(w, { retryStorm: { maxRepeats: 100, window: '10s' }, traversal: { maxOperations: 2, window: '10s' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now(), ttl: 300 });
  // POST /items arrives at T=0; the monitors read its small body before deciding, and it comes late.
  const s = connect(Number(new URL(dg.url).port), '127.0.0.1');
  t.teardown(() => s.destroy());
  let answer = '';
  s.on('data', (d: Buffer) => { answer += d.toString('latin1'); });
  s.write(`POST /items HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\ncontent-length: 2\r\n\r\n`);
  // Arrived (its time taken) at T=0, before the clock moves: 100 ms were not always enough.
  t.ok(await until(() => dg.seen.length === 1, 10_000), 'the POST arrived');
  c.advance(1000);
  const get = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }); // T=1s, recorded first
  await get.text();
  t.equal(get.status, 200);
  s.write('{}');
  t.ok(await until(() => answer.startsWith('HTTP/1.1 200')), 'the POST was forwarded once its body came');
  c.advance(9_500);
  // T=10.5s: the POST (T=0) is out of the window, the GET (T=1s) in it: one operation, room for another.
  const third = await fetch(`${dg.url}/items`, { headers: bearer(tok) });
  await third.text();
  // Before: 403 endpoint-traversal, the POST still counted behind the GET.
  t.equal(third.status, 200, 'a second operation in the window fits maxOperations 2');
});

t.test('a window log keeps its times in order, whatever order they are recorded in', async (t) => {
  const times = [5, 10];
  record(times, 7, 10);
  t.same(times, [5, 7, 10]);
  record(times, 1, 3);
  t.same(times, [5, 7, 10], 'the oldest goes when over the bound');
  t.equal(windowFull(times, 15.5, 10, 2), 7 + 10, 'the expired 5 is dropped; full until 7 leaves');
});

t.test('requests a later check denies use up no retry-storm or traversal budget', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { retryStorm: { maxRepeats: 3, window: '1m' }, traversal: { maxOperations: 2, window: '1m' }, idempotency: { at: 'medium' } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ claims: { task_id: 'ticket-1' } });
  const write = (key?: string) => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) }), body: '{"n":1}' });
  // Three writes the idempotency check refuses (no key): the same request each time, and an
  // operation the consumer has not called before.
  for (let i = 0; i < 3; i++) await problem(t, await write(), 'idempotency-key-required', 400);
  const ok = await write('k-1');
  t.equal(ok.status, 200, 'the first write that passes every check goes through (before: 429 retry-storm, for three requests the upstream never saw)');
  await ok.text();
  const read = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  t.equal(read.status, 200, 'a second operation fits the traversal budget of two: the refused writes did not count as calls');
  await read.text();
  await problem(t, await fetch(`${dg.url}/items/1/archive`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'k-2' }), body: '{}' }), 'endpoint-traversal', 403);
  t.equal(w.up.seen.length, 2, 'only the two allowed requests reached the upstream');
});

t.test('endpoint traversal: more distinct operations than allowed in the window', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { traversal: { maxOperations: 2, window: '10s' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now() });
  for (const path of ['/items/1', '/items', '/items/2']) {
    const r = await fetch(`${dg.url}${path}`, { headers: bearer(tok) });
    t.equal(r.status, 200, `${path} allowed`);
    await r.text();
  }
  await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok), body: '{}' }), 'endpoint-traversal', 403);
  t.equal(dg.seen.at(-1)!.ctx.extra['traversal.operations'], 3, 'recorded: the third distinct operation, this one (not the limit, 2)');
  const known = await fetch(`${dg.url}/items/3`, { headers: bearer(tok) });
  t.equal(known.status, 200, 'operations already called in the window still work');
  await known.text();
  c.advance(10_001);
  const tok2 = await w.token({ now: c.now() });
  const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok2), body: '{}' });
  t.equal(r.status, 200, 'a new operation is allowed once the window slid');
  await r.text();
});

t.test('endpoint traversal in audit mode forwards and records', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { traversal: { mode: 'audit', maxOperations: 1 } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const a = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  await a.text();
  const b = await fetch(`${dg.url}/items`, { headers: bearer(tok) });
  t.equal(b.status, 200);
  t.equal(b.headers.get('driftguard-warning'), 'endpoint-traversal');
  await b.text();
});

t.test('the wall clock stepping back: windows and a quarantine last their length from now, not the step too', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, {
    retryStorm: { counts: 'all', maxRepeats: 3, window: '10s' }, traversal: { maxOperations: 2, window: '10s' },
    quarantine: { denials: 3, window: '1m', period: '5m' },
  }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  // A token for the clock as it reads (one issued before the step would be issued in the future).
  let tok = await w.token({ now: c.now() });
  const get = (path: string) => fetch(`${dg.url}${path}`, { headers: bearer(tok) });
  for (let i = 0; i < 3; i++) { const r = await get('/items/1'); t.equal(r.status, 200); await r.text(); }
  const listed = await get('/items');
  t.equal(listed.status, 200, 'a second operation');
  await listed.text();
  // An hour back (an NTP correction): the three repeats and two operations now lie in the future.
  c.advance(-3_600_000);
  tok = await w.token({ now: c.now() });
  const storm = await get('/items/1');
  const body = await problem(t, storm, 'retry-storm', 429);
  t.equal(body.retryAfter, 10, 'the window from now (it was 3,610 s)');
  await problem(t, await get('/search'), 'endpoint-traversal', 403);
  c.advance(10_001);
  const after = await get('/items/1');
  t.equal(after.status, 200, 'free once the window has passed since the step');
  await after.text();
  const third = await get('/search');
  t.equal(third.status, 200, 'the traversal window too');
  await third.text();
  // A quarantine placed, then the clock an hour back: it lasts its 5 minutes from now.
  const weak = await w.token({ scope: 'items.read', now: c.now() });
  for (let i = 0; i < 3; i++) {
    const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' });
    t.equal(r.status, 403, 'a denial (of whatever reason: each counts)');
    await r.text();
  }
  c.advance(-3_600_000);
  tok = await w.token({ now: c.now() });
  const q = await problem(t, await get('/items/2'), 'consumer-quarantined', 403);
  t.equal(q.retryAfter, 300, 'the period from now (it was 3,900 s)');
  c.advance(300_001);
  const free = await get('/items/2');
  t.equal(free.status, 200, 'lifted after its period');
  await free.text();
});

t.test('a request decided late (its body slow) does not move later arrivals\' times back to its own', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { maxBodyBytes: 1024, retryStorm: { counts: 'all', maxRepeats: 2, window: '4s' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now() });
  const body = '{"name":"a"}';
  // S arrives at 0 s with all but the last byte of its body.
  const s = connect(Number(new URL(dg.url).port), '127.0.0.1');
  let answer = '';
  s.on('data', (d) => { answer += d; });
  s.write(`POST /items HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body.slice(0, -1)}`);
  // Arrived (its time taken) at 0 s, before the clock moves: 100 ms were not always enough.
  t.ok(await until(() => dg.seen.length === 1, 10_000), 'S arrived');
  c.advance(2_800);
  const post = async () => { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'content-type': 'application/json' }), body }); await r.text(); return r.status; };
  t.same([await post(), await post(), await post()], [200, 200, 429], 'at 2.8 s: two, then the window is full');
  // S's last byte: decided now, with its arrival time.
  s.end(body.slice(-1));
  await new Promise((r) => s.once('close', r));
  t.match(answer, /^HTTP\/1\.1 429 /, 'S is a third within the window');
  // At 4.15 s the two of 2.8 s are still in the window (before: S moved them back to 0 s, and they had gone).
  c.advance(1_350);
  t.same([await post(), await post()], [429, 429], 'still full');
  t.equal(w.up.seen.length, 2, 'the upstream received two');
});

t.test('quarantine: K denials in the window refuse everything for the period; listed and lifted', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { quarantine: { denials: 3, window: '1m', period: '5m' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ scope: 'items.read', now: c.now() });
  const good = await w.token({ now: c.now() });
  const first = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal(first.status, 200);
  await first.text();
  for (let i = 0; i < 3; i++) await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }), 'insufficient-scope', 403);
  const q = await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(good) }), 'consumer-quarantined', 403);
  t.equal(q.retryAfter, 300);
  t.equal(w.up.seen.length, 1, 'only the request before the denials reached the upstream');
  const listed = await (await fetch(`${dg.admin}/quarantine`)).json() as Record<string, any>;
  t.equal(listed.quarantined.length, 1);
  t.equal(listed.quarantined[0].subject, AGENT);
  t.equal(listed.quarantined[0].mode, 'enforce');
  t.same(listed.quarantined[0].reasons, ['insufficient-scope']);
  const placed = dg.logs.find((l) => l.msg === 'consumer quarantined');
  t.match(placed, { consumer: AGENT, owner: 'team-app', denials: 3, reasons: ['insufficient-scope'] }, 'logged: the consumer, its owner, the denials counted and why');

  // Another consumer is not affected.
  const bot = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: BOT, scope: 'items.read', now: c.now() })) });
  t.equal(bot.status, 200);
  await bot.text();

  // The owner view.
  const view = await (await fetch(`${dg.admin}/consumers`)).json() as Record<string, any>;
  const agent = view.consumers.find((x: any) => x.subject === AGENT);
  t.equal(agent.owner, 'team-app');
  t.equal(agent.kind, 'automation');
  t.same(agent.contractVersions, ['2026-09']);
  t.equal(agent.decisions.deny['insufficient-scope'], 3);
  t.equal(agent.decisions.deny['consumer-quarantined'], 1);
  t.equal(agent.decisions.allow.allowed, 1);
  t.equal(agent.quarantine.subject, AGENT);
  t.equal(agent.lastSeen, new Date(c.now()).toISOString());
  const human = view.consumers.find((x: any) => x.subject === HUMAN);
  t.equal(human.lastSeen, null, 'registered consumers never seen are listed too');
  t.equal(view.consumers.find((x: any) => x.subject === BOT).decisions.allow.allowed, 1);

  // Lift early (loopback, no admin credential file configured).
  const lift = await fetch(`${dg.admin}/quarantine/${encodeURIComponent(AGENT)}`, { method: 'DELETE' });
  t.equal(lift.status, 200);
  await lift.text();
  t.match(dg.logs.find((l) => l.msg === 'quarantine lifted'), { consumer: AGENT, by: 'loopback' }, 'the lift names the consumer as the placing line does');
  const ok = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal(ok.status, 200, 'lifted');
  await ok.text();
  t.equal((await fetch(`${dg.admin}/quarantine/${encodeURIComponent(AGENT)}`, { method: 'DELETE' })).status, 404);

  // Ends by itself after the period.
  for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); }
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(good) }), 'consumer-quarantined', 403);
  c.advance(5 * 60_000);
  const fresh = await w.token({ now: c.now() });
  const after = await fetch(`${dg.url}/items/1`, { headers: bearer(fresh) });
  t.equal(after.status, 200, 'the quarantine ended');
  await after.text();
});

t.test('a quarantine names the reasons of the denials it counted, not every reason the consumer ever had', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { retryStorm: { counts: 'all', maxRepeats: 1, window: '1m' }, quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '5m' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ scope: 'items.read', now: c.now() });
  for (let i = 0; i < 3; i++) await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }), 'insufficient-scope', 403);
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(weak) }), 'consumer-quarantined', 403);
  c.advance(66 * 60_000); // the quarantine is long over
  const tok = await w.token({ now: c.now() });
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }); await r.text(); statuses.push(r.status); }
  t.same(statuses, [200, 429, 429, 429], 'three retry storms');
  const list = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { reasons: string[] }[] };
  // Before: ["insufficient-scope","consumer-quarantined","retry-storm"], every reason it ever had.
  t.same(list.quarantined.map((q) => q.reasons), [['retry-storm']]);
});

t.test('quarantine of a subject past 128 characters: listed shortened with its key, lifted by the key', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { quarantine: { denials: 2, window: '1m', period: '5m' } }, (r) => { r.consumers.unknown = 'allow'; }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  // An emoji across the cut: the shortened subject must not end in half of it.
  const long = 'spiffe://example.test/ns/app/sa/' + 'a'.repeat(95) + '😀' + 'b'.repeat(3000);
  const weak = await w.token({ sub: long, scope: 'items.read' });
  const good = await w.token({ sub: long });
  for (let i = 0; i < 2; i++) await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }), 'insufficient-scope', 403);
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(good) }), 'consumer-quarantined', 403);
  const listed = (await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { subject: string; key: string }[] }).quarantined;
  t.equal(listed.length, 1);
  t.equal(listed[0]!.subject, long.slice(0, 127) + '...', 'shortened, before the emoji rather than inside it');
  t.match(listed[0]!.key, /^[A-Za-z0-9_-]{43}~{86}$/, 'its key, URL-safe');
  t.equal((await fetch(`${dg.admin}/quarantine/${encodeURIComponent(listed[0]!.subject)}`, { method: 'DELETE' })).status, 404, 'the shortened subject names nothing');
  t.equal((await fetch(`${dg.admin}/quarantine/${listed[0]!.key}`, { method: 'DELETE' })).status, 404, 'a key in the subject\'s place names nothing: it is read as a subject');
  const lift = await fetch(`${dg.admin}/quarantine?key=${listed[0]!.key}`, { method: 'DELETE' });
  t.equal(lift.status, 200, 'lifted by ?key= as GET /quarantine shows it (before: it could not be lifted by what was listed)');
  await lift.text();
  const ok = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal(ok.status, 200);
  await ok.text();
  // Its denials were forgotten with it: one more does not quarantine it again at once.
  await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }), 'insufficient-scope', 403);
  const again = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal(again.status, 200, 'not quarantined again by one denial');
  await again.text();
});

t.test('quarantine in audit mode forwards, lists and records', async (t) => {
  const w = await world();
  const dg = await startLifecycle(only(w, { quarantine: { mode: 'audit', denials: 2 } }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ scope: 'items.read' });
  for (let i = 0; i < 2; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); t.equal(r.status, 403); await r.text(); }
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
  t.equal(res.status, 200);
  t.equal(res.headers.get('driftguard-warning'), 'consumer-quarantined');
  await res.text();
  const listed = await (await fetch(`${dg.admin}/quarantine`)).json() as Record<string, any>;
  t.equal(listed.quarantined[0].mode, 'audit');
  t.ok(dg.logs.some((l) => l.msg === 'consumer would be quarantined (audit)'));
});

t.test('two issuers\' unregistered client-7 are two consumers: one\'s quarantine is not the other\'s', async (t) => {
  const w = await world();
  const c = clock();
  const otherKey = await testKey('ES256');
  const otherKeys = await jwksServer(jwks(otherKey));
  const OTHER = 'https://other-idp.test.local';
  const rules = only(w, { quarantine: { denials: 2, window: '1m', period: '5m' }, idempotency: { at: 'medium', window: '1m' } }, (r) => {
    r.consumers.unknown = 'allow';
    r.identity.issuers.push({ ...r.identity.issuers[0], issuer: OTHER, jwks: { ...r.identity.issuers[0].jwks, url: otherKeys.url } });
    for (const consumer of r.consumers.registry) consumer.issuer = r.identity.issuers[0].issuer;
  });
  const dg = await startLifecycle(rules, { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); await otherKeys.close(); });
  const ours = await w.token({ sub: 'client-7', now: c.now() });
  const weakTheirs = await w.token({ key: otherKey, iss: OTHER, sub: 'client-7', scope: 'items.read', now: c.now() });
  const theirs = await w.token({ key: otherKey, iss: OTHER, sub: 'client-7', now: c.now() });
  // The other issuer's client-7 gets itself quarantined...
  for (let i = 0; i < 2; i++) await problem(t, await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weakTheirs, { 'idempotency-key': `k${i}` }), body: '{}' }), 'insufficient-scope', 403);
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(theirs) }), 'consumer-quarantined', 403);
  // ...and ours is not, nor does it share idempotency keys with it.
  const read = await fetch(`${dg.url}/items/1`, { headers: bearer(ours) });
  t.equal(read.status, 200, 'our client-7 is not quarantined by theirs');
  await read.text();
  const listed = await (await fetch(`${dg.admin}/quarantine`)).json() as Record<string, any>;
  t.same(listed.quarantined.map((q: any) => q.subject), [JSON.stringify([OTHER, 'client-7'])], 'listed under its issuer and subject');
  const lift = await fetch(`${dg.admin}/quarantine/${encodeURIComponent(JSON.stringify([OTHER, 'client-7']))}`, { method: 'DELETE' });
  t.equal(lift.status, 200, 'lifted by that name');
  await lift.text();
  t.equal((await fetch(`${dg.url}/items/1`, { headers: bearer(theirs) })).status, 200);
});

t.test('traversal: writes to distinct operations arriving together, their bodies late, pass the limit no more than one by one (retry storm off)', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ retryStorm: { mode: 'off' }, traversal: { mode: 'enforce', maxOperations: 2, window: '1m' }, idempotency: { mode: 'enforce', at: 'low' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const port = Number(new URL(dg.url).port);
  let open!: () => void;
  const gate = new Promise<void>((r) => { open = r; });
  const body = '{"x":1}';
  // Each head at once; each body only once every head has been decided as far as it can be.
  const send = (method: string, path: string, i: number) => new Promise<string>((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    let got = '';
    s.on('data', (c) => { got += c.toString('latin1'); if (got.includes('\r\n\r\n')) { s.destroy(); resolve(got.split('\r\n')[0]!); } });
    s.on('error', () => resolve('error'));
    s.on('connect', async () => {
      s.write(`${method} ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Type: application/json\r\nIdempotency-Key: k${i}\r\nContent-Length: ${body.length}\r\n\r\n`);
      await gate;
      s.write(body);
    });
  });
  const writes = [['POST', '/items'], ['PUT', '/items/1/blob'], ['POST', '/payments'], ['POST', '/items/1/archive']].map(([m, p], i) => send(m!, p!, i));
  // Every head decided as far as it can be: past the policy checks, the traversal check waiting for its body.
  t.ok(await until(() => dg.seen.length === 4 && dg.seen.every((x) => x.ctx.checks.some((c) => c.check === 'deprecation')), 10_000), 'the four wait for their bodies');
  open();
  const statuses = (await Promise.all(writes)).map((line) => line.split(' ')[1]);
  t.equal(statuses.filter((s) => s === '403').length, 2, 'two refused as endpoint traversal');
  t.equal(new Set(w.up.seen.map((s) => `${s.method} ${s.url}`)).size, 2, 'two operations reached the upstream, the limit (all four did)');
});

t.test('retry storm (counts: unsuccessful, the default): a healthy poller never counts; retries of a failing request and a burst in flight do', async (t) => {
  const w = await world();
  const c = clock();
  const dg = await startLifecycle(only(w, { retryStorm: { maxRepeats: 3, window: '1m' }, quarantine: { mode: 'enforce', denials: 10, window: '1m', period: '15m' } }), { now: c.now });
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ now: c.now() });
  const get = async (path: string) => { const r = await fetch(`${dg.url}${path}`, { headers: bearer(tok) }); await r.text(); return r.status; };
  // Polled every 2 s for a minute, answered 200 each time: it was 429 from the fourth poll,
  // and quarantined (every operation refused for 15 minutes) after three of those.
  const polls: number[] = [];
  for (let i = 0; i < 30; i++) { polls.push(await get('/items/1')); c.advance(2000); }
  t.same([...new Set(polls)], [200], 'thirty polls, all 200');
  // The same request failing upstream: its retries count.
  w.up.handler = (_req, res) => { res.writeHead(503); res.end(); };
  const retries: number[] = [];
  for (let i = 0; i < 4; i++) retries.push(await get('/items/2'));
  t.same(retries, [503, 503, 503, 429], 'the fourth retry of a failing request is a retry storm');
  // A 200 whose body the upstream cuts is a failure too, though its head said 200.
  w.up.handler = (_req, res) => { res.writeHead(200, { 'content-length': '1000' }); res.write('partial'); setTimeout(() => res.destroy(), 10); };
  const cut: string[] = [];
  for (let i = 0; i < 4; i++) {
    const r = await fetch(`${dg.url}/items/4`, { headers: bearer(tok) });
    try { await r.text(); cut.push(`${r.status}`); } catch { cut.push(`${r.status} cut`); }
  }
  t.same(cut, ['200 cut', '200 cut', '200 cut', '429'], 'retries of an answer cut short count');
  // A burst of identical requests at once counts while in flight, whatever they get.
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => { void held.then(() => { res.writeHead(200); res.end('{}'); }); };
  const burst = Array.from({ length: 6 }, () => get('/items/3'));
  await until(() => w.up.seen.filter((s) => s.url === '/items/3').length === 3);
  // The other three decided while the three are in flight (100 ms were not always enough).
  t.ok(await until(() => dg.seen.filter((x) => x.ctx.req.url === '/items/3' && x.decision !== undefined).length === 6, 10_000), 'the six decided');
  release();
  t.same((await Promise.all(burst)).sort(), [200, 200, 200, 429, 429, 429], 'three forwarded, three refused');
});

/** Rules where anyone may call (people by default) and act for others, `victim` a registered automation, these monitors only. */
const sharing = (victim: string, monitors: Record<string, unknown>) => (r: Record<string, any>) => {
  r.credentials = { taskBindingAt: 'never' };
  r.consumers.unknown = 'allow';
  r.consumers.defaultKind = 'human';
  r.consumers.registry.push({ subject: victim, kind: 'automation', owner: 'team-pay' });
  r.delegation = { unlisted: 'allow' };
  r.monitors = monitorsOnly(monitors);
};

/**
 * A key table of 20 places, 2 a consumer, where a registered automation (the victim) has kept
 * one write's key; `victimRetried` asserts that its retry is still a duplicate-write, not sent.
 */
async function keyTable(t: Test) {
  const VICTIM = 'spiffe://test.local/ns/pay/sa/settlement';
  const w = await world();
  const dg = await startLifecycle(w.rules(sharing(VICTIM, { idempotency: { at: 'medium', window: '1h', maxKeys: 20, maxKeysPerConsumer: 2 } })));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const post = async (tok: string, key: string, body = '{"amount":100}') => { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': key, 'content-type': 'application/json' }), body }); await r.text(); return r.status; };
  const victim = await w.token({ sub: VICTIM });
  t.equal(await post(victim, 'settle-1'), 200);
  return {
    w, post,
    async victimRetried() {
      const before = w.up.seen.length;
      t.equal(await post(victim, 'settle-1'), 409, 'the victim\'s retry is still a duplicate-write');
      t.equal(w.up.seen.length, before, 'and was not sent again');
    },
  };
}

t.test('idempotency: an agent acting for many people is one consumer under maxKeysPerConsumer, and cannot push another\'s keys out', async (t) => {
  const { w, post, victimRetried } = await keyTable(t);
  // Ten people, four writes each, by one agent: 40 keys, which by (agent, person) were ten
  // buckets of two, twenty keys, the whole table.
  for (let p = 0; p < 10; p++) {
    const tok = await w.token({ sub: `user-${p}@test.local`, claims: { act: { sub: AGENT } } });
    for (let i = 0; i < 4; i++) t.equal(await post(tok, `k-${i}`, `{"i":${i}}`), 200);
  }
  await victimRetried();
});

t.test('idempotency: agents nobody vouches for, under many names for one person, are that person\'s share of the table', async (t) => {
  const { w, post, victimRetried } = await keyTable(t);
  // One person, twenty agent names under an iss nobody trusts: each holds its own keys, but
  // they are no issuer's word, so they share the person's two places, not twenty shares.
  for (let a = 0; a < 20; a++) {
    const tok = await w.token({ sub: 'user-1@test.local', claims: { act: { sub: `agent-${a}`, iss: 'https://untrusted.example' } } });
    t.equal(await post(tok, 'k-1', `{"a":${a}}`), 200);
  }
  await victimRetried();
});

t.test('retry storm: one consumer\'s many distinct requests push out its own fingerprints under maxFingerprintsPerConsumer, never another\'s retry storm', async (t) => {
  const VICTIM = 'spiffe://test.local/ns/pay/sa/poller';
  const w = await world();
  // Every answer a failure: every repeat counts (retryStorm.counts unsuccessful).
  w.up.handler = (_req, res) => { res.writeHead(503); res.end(); };
  const dg = await startLifecycle(w.rules(sharing(VICTIM, { retryStorm: { maxRepeats: 2, window: '1h', maxFingerprints: 20, maxFingerprintsPerConsumer: 4 } })));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const get = async (tok: string, path: string) => { const r = await fetch(`${dg.url}${path}`, { headers: bearer(tok) }); await r.text(); return r.status; };
  const victim = await w.token({ sub: VICTIM });
  t.same([await get(victim, '/items/1'), await get(victim, '/items/1')], [503, 503], 'the victim\'s request, twice');
  // One agent, for five people, 30 distinct requests: more than the whole table. As five
  // shares (one per person), or with no share at all, they pushed the victim's fingerprint out.
  const people = await Promise.all(Array.from({ length: 5 }, (_, p) => w.token({ sub: `user-${p}@test.local`, claims: { act: { sub: AGENT } } })));
  const retried: number[] = [];
  for (let i = 0; i < 30; i++) {
    // Among them, one request retried after every three others: its share's least recently
    // seen goes, not its oldest, so the retry is still remembered.
    if (i % 3 === 0 && retried.length < 3) retried.push(await get(people[0]!, '/items/7'));
    t.equal(await get(people[i % 5]!, `/items/${100 + i}`), 503);
  }
  t.same(retried, [503, 503, 429], 'the agent\'s retried request is a retry storm at its third');
  t.equal(await get(victim, '/items/1'), 429, 'the victim\'s third is still a retry storm');
});

t.test('idempotency: a write whose body broke while it was decided was never sent, and its key is free for the retry', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.monitors = monitorsOnly({ maxBodyBytes: 16, idempotency: { at: 'medium', window: '1h' } }); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const port = Number(new URL(dg.url).port);
  // A chunked body (not read by the monitors: fingerprinted as chunked) whose second chunk is
  // not one: Node gives up on it while the token is being verified.
  await new Promise<void>((resolve) => {
    const s = connect({ port, host: '127.0.0.1' });
    s.on('error', () => {});
    s.on('close', () => resolve());
    s.on('connect', () => s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Type: application/json\r\nIdempotency-Key: job-42\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nZZ\r\n`));
    setTimeout(() => s.destroy(), 2000);
  });
  t.ok(await until(() => dg.seen[0]?.decision !== undefined), 'decided');
  t.equal(w.up.seen.length, 0, 'nothing reached the upstream');
  const retry = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'job-42', 'content-type': 'application/json' }), body: '{"amount":100}' });
  await retry.text();
  t.equal(retry.status, 200, 'the retry with the same key goes through (it was 422 idempotency-key-reused for an hour)');
  t.equal(w.up.seen.length, 1);
});

t.test('quarantine table full: the least recently checked goes, whatever the admin API read meanwhile', async (t) => {
  const [A, B, C] = ['a', 'b', 'c'].map((x) => `spiffe://test.local/ns/x/sa/${x}`) as [string, string, string];
  const scenario = async (look: (admin: string) => Promise<void>) => {
    const w = await world();
    const dg = await startLifecycle(w.rules((r) => {
      r.credentials = { taskBindingAt: 'never' };
      for (const s of [A, B, C]) r.consumers.registry.push({ subject: s, kind: 'automation', owner: 'team-x' });
      r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 1, window: '1m', period: '1h', maxQuarantined: 2 } });
    }));
    try {
      const send = async (sub: string, method: string, path: string) => { const r = await fetch(`${dg.url}${path}`, { method, headers: bearer(await w.token({ sub, scope: 'items.read' })), ...(method === 'POST' ? { body: '{}' } : {}) }); await r.text(); };
      await send(A, 'POST', '/items');
      await send(B, 'POST', '/items');
      await send(A, 'GET', '/items/1'); // A runs into its quarantine: B is the least recently checked
      await look(dg.admin);
      await send(C, 'POST', '/items'); // a third: the table of two drops one
      const q = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { subject: string }[] };
      return q.quarantined.map((x) => x.subject.split('/').at(-1)!).sort();
    } finally { await dg.close(); await w.close(); }
  };
  t.same(await scenario(async () => {}), ['a', 'c'], 'B goes');
  const read = async (admin: string) => { for (const p of ['/quarantine', '/consumers']) await (await fetch(`${admin}${p}`)).text(); };
  t.same(await scenario(read), ['a', 'c'], 'B goes though GET /quarantine and /consumers read it last (A went)');
});

t.test('a refusal keeps the warnings found before it: a person\'s stale write refused for its missing idempotency key learns its contract is stale too', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = { ...monitorsOnly({ idempotency: { at: 'medium' } }), kinds: ['automation', 'human'] };
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ sub: HUMAN, contract: '2026-06' });
  const res = await fetch(`${dg.url}/payments`, { method: 'POST', headers: bearer(tok, { 'content-type': 'application/json' }), body: '{}' });
  const body = await problem(t, res, 'idempotency-key-required', 400);
  t.same(body.warnings, ['stale-contract'], 'the problem lists the warning (before: dropped)');
  t.equal(res.headers.get('driftguard-warning'), 'stale-contract', 'and the header names it, as on a forwarded answer');
  t.same(dg.seen[0]?.decision?.warnings, ['stale-contract'], 'as the decision recorded it');
  // A refusal with no warning before it has neither.
  const fresh = await fetch(`${dg.url}/payments`, { method: 'POST', headers: bearer(await w.token({ sub: HUMAN }), { 'content-type': 'application/json' }), body: '{}' });
  const plain = await problem(t, fresh, 'idempotency-key-required', 400);
  t.notOk('warnings' in plain);
  t.equal(fresh.headers.get('driftguard-warning'), null);
});
