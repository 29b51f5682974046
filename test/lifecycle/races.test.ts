// What changes while a request is being decided: a decision may wait for signing keys or for
// a body (as long as monitors.bodyTimeout, at the client's pace). A revocation, a quarantine
// or a reload that renames the consumer in that time must still stop it. Real driftguard, real
// key server and upstream on loopback; the waits are made with a slow key server and a body
// sent in two parts.

import t, { type Test } from 'tap';
import { connect } from 'node:net';
import { decodeJwt } from 'jose';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, AGENT, HUMAN } from '../support/driftguard.ts';
import { testKey, jwks, token, ISSUER } from '../support/keys.ts';
import { world, startLifecycle, monitorsOnly, bearer, trustAlso, until, type Seen } from './support.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Wait until the request `which` picks out has run the check `name` (the request is then
 * decided that far, and waits for its body or a key ahead), or fail. A fixed sleep was not
 * always enough on a loaded machine: the change meant to land while the request waits landed
 * before its check had run, and the test tested another path (or failed on the recheck record).
 */
async function reached(t: Test, seen: () => Seen | undefined, name: string): Promise<void> {
  t.ok(await until(() => seen()?.ctx.checks.some((c) => c.check === name) ?? false, 10_000), `the request has run the ${name} check`);
}

/** A POST whose body arrives in two parts, `gapMs` apart, on a raw socket; resolves with the status line. */
function halfSentPost(port: number, path: string, tok: string, body: string, between: () => Promise<void>): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let answer = '';
    s.on('data', (d) => { answer += d; if (answer.includes('\r\n\r\n')) { s.destroy(); resolve(answer.split('\r\n')[0]!); } });
    s.on('error', reject);
    s.write(`POST ${path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 5)}`);
    void between().then(() => s.write(body.slice(5)), reject);
  });
}

t.test('a token revoked while its request\'s body is arriving is not forwarded', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.monitors = monitorsOnly({ retryStorm: { mode: 'enforce', maxRepeats: 5, window: '1m' } }); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const port = Number(new URL(dg.url).port);
  const status = await halfSentPost(port, '/items', tok, '{"name":"widget-1"}', async () => {
    await reached(t, () => dg.seen[0], 'revocation'); // decided up to the retry-storm check, which waits for the body
    const revoked = await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'jti', value: decodeJwt(tok).jti, reason: 'leaked' }) });
    t.equal(revoked.status, 201, 'the admin is told it is revoked');
    await revoked.text();
  });
  t.equal(status, 'HTTP/1.1 401 Unauthorized', 'refused (it was forwarded: 200)');
  t.equal(w.up.seen.length, 0, 'the upstream never saw the write');
  const last = dg.seen.at(-1)!;
  t.equal(last.decision?.reason, 'credential-revoked');
  t.same(last.ctx.checks.at(-1), { check: 'recheck', outcome: 'deny', reason: 'credential-revoked' }, 'by the recheck');
});

t.test('a quarantine placed while a request\'s body is arriving stops it; its idempotency key is freed', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.monitors = monitorsOnly({ idempotency: { mode: 'enforce', at: 'critical' }, quarantine: { denials: 2, window: '1m', period: '5m' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token({ claims: { task_id: 't-1' } });
  const port = Number(new URL(dg.url).port);
  const send = (key: string) => new Promise<string>((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let answer = '';
    s.on('data', (d) => { answer += d; if (answer.includes('\r\n\r\n')) { s.destroy(); resolve(answer.split('\r\n')[0]!); } });
    s.on('error', reject);
    const body = '{"amount":5}';
    s.write(`POST /payments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${tok}\r\nidempotency-key: ${key}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 3)}`);
    void (async () => {
      await reached(t, () => dg.seen.find((x) => x.ctx.req.headers['idempotency-key'] === key), 'quarantine');
      // Two refusals of the same consumer quarantine it meanwhile.
      const weak = await w.token({ scope: 'items.read' });
      for (let i = 0; i < 2; i++) await (await fetch(`${dg.url}/payments`, { method: 'POST', headers: bearer(weak, { 'idempotency-key': `w${i}` }), body })).text();
      s.write(body.slice(3));
    })().catch(reject);
  });
  t.equal(await send('k-1'), 'HTTP/1.1 403 Forbidden', 'refused (it was forwarded)');
  t.equal(w.up.seen.length, 0);
  t.equal(dg.seen.find((x) => x.ctx.req.headers['idempotency-key'] === 'k-1')?.decision?.reason, 'consumer-quarantined');
  t.equal((await fetch(`${dg.admin}/quarantine/${encodeURIComponent(String(decodeJwt(tok).sub))}`, { method: 'DELETE' })).status, 200);
  const retry = await fetch(`${dg.url}/payments`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'k-1', 'content-type': 'application/json' }), body: '{"amount":5}' });
  t.equal(retry.status, 200, 'the key was freed: the retry goes through (not 409 duplicate-write)');
  await retry.text();
});

t.test('a request under way when a reload renames its quarantined consumer is still refused', async (t) => {
  const w = await world();
  const X = 'client-7';
  const rules = (register: boolean) => w.rules((r) => {
    r.identity.issuers[0].jwks.cooldown = '1s';
    trustAlso(r, 'https://other.test.local');
    r.consumers.unknown = 'allow';
    if (register) r.consumers.registry.push({ subject: X, issuer: ISSUER, kind: 'automation', owner: 'team-x' });
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '10m' } });
  });
  const dg = await startLifecycle(rules(false));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ sub: X, scope: '' });
  for (let i = 0; i < 2; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(weak) })).text();
  // A token signed by a key the sidecar has not seen: its check waits for the key server
  // (past the key set's 1 s cooldown since its first fetch, or it is told to retry at once).
  await sleep(1_050);
  const k2 = await testKey('ES256');
  w.keys.body = jwks(w.key, k2);
  w.keys.delayMs = 800;
  const tok = await token({ key: k2, sub: X, scope: 'items.read', contract: '2026-09' });
  const fetches = w.keys.fetches;
  const inflight = fetch(`${dg.url}/items/1`, { headers: bearer(tok) });
  // Its credential check waits for the slow key server (800 ms): the reload lands meanwhile.
  t.ok(await until(() => w.keys.fetches > fetches, 10_000), 'the request waits for the keys');
  await dg.dg.swap(loadRules(writeRules(rules(true))));
  const res = await inflight;
  t.equal(res.status, 403, 'refused (it was forwarded: 200)');
  t.equal(((await res.json()) as { code: string }).code, 'consumer-quarantined');
  t.equal(w.up.seen.length, 0);
  const consumers = (await (await fetch(`${dg.admin}/consumers`)).json() as { consumers: { subject: string }[] }).consumers.map((c) => c.subject);
  t.notOk(consumers.includes(JSON.stringify([ISSUER, X])), 'nothing is recorded under its old name');
});

t.test('a write whose client leaves while it waits for a pool connection frees its idempotency key: it was never sent', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.proxy.connections = 1;
    r.proxy.timeouts = { connect: '1s', response: '5s' };
    r.monitors = monitorsOnly({ idempotency: { mode: 'enforce', at: 'medium', window: '1h' } });
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  let release!: () => void;
  const held = new Promise<void>((r) => { release = r; });
  w.up.handler = (req, res) => {
    req.resume();
    req.on('end', () => { void (req.headers['idempotency-key'] === 'a' ? held : Promise.resolve()).then(() => { res.writeHead(200); res.end('{}'); }); });
  };
  const tok = await w.token();
  const post = (key: string, signal?: AbortSignal) => fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': key, 'content-type': 'application/json' }), body: '{"x":1}', ...(signal ? { signal } : {}) });
  const a = post('a'); // holds the only upstream connection
  while (w.up.seen.length === 0) await sleep(10);
  const gone = new AbortController();
  const b = post('b', gone.signal).catch((err: Error) => err.name);
  // Decided, waiting for the pool.
  t.ok(await until(() => dg.seen.find((x) => x.ctx.req.headers['idempotency-key'] === 'b')?.decision !== undefined, 10_000), 'b is decided');
  gone.abort();
  t.equal(await b, 'AbortError');
  // driftguard has seen b's client leave (its forwarding ended: nothing sent) before the connection frees.
  t.ok(await until(() => dg.seen.find((x) => x.ctx.req.headers['idempotency-key'] === 'b')?.forwarded !== undefined, 10_000), 'b\'s forwarding ended');
  release();
  t.equal((await a).status, 200);
  t.equal(w.up.seen.length, 1, 'b never reached the upstream');
  const retry = await post('b');
  t.equal(retry.status, 200, 'its retry goes through (it was 409 duplicate-write, "already sent")');
  await retry.text();
  t.equal(w.up.seen.length, 2);
  t.equal(dg.seen.find((x) => x.ctx.req.headers['idempotency-key'] === 'b')?.decision?.decision, 'allow');
});

t.test('the recheck does not warn again for what an audit-mode check warned already', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => { r.revocation = { mode: 'audit' }; r.monitors = monitorsOnly({ retryStorm: { mode: 'enforce', maxRepeats: 5, window: '1m' } }); }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const tok = await w.token();
  const revoke = async (value: unknown) => (await fetch(`${dg.admin}/revocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'jti', value, reason: 'x' }) })).text();
  await revoke(decodeJwt(tok).jti);
  const status = await halfSentPost(Number(new URL(dg.url).port), '/items', tok, '{"name":"widget-1"}', async () => { await reached(t, () => dg.seen.at(-1), 'revocation'); await revoke('unrelated'); });
  t.equal(status, 'HTTP/1.1 200 OK', 'audit mode: forwarded');
  const last = dg.seen.at(-1)!;
  t.equal(last.ctx.warnings.length, 1, 'one warning (it was twice)');
  t.notOk(last.ctx.checks.some((c) => c.check === 'recheck' && c.outcome !== 'continue'), 'the recheck found nothing new');
});

t.test('the recheck runs a quarantine check that only warned (the person\'s audit quarantine) again: the agent quarantined meanwhile is refused', async (t) => {
  const w = await world();
  const patch = (mode: string) => (r: Record<string, any>) => {
    r.proxy.mode = mode;
    r.credentials = { taskBindingAt: 'never' };
    r.delegation = { consumers: [{ subject: HUMAN, actors: [AGENT] }] };
    r.monitors = { kinds: ['automation', 'human'], idempotency: { mode: 'off' }, traversal: { mode: 'off' }, retryStorm: { mode: 'enforce' }, quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } };
  };
  // The person is quarantined under proxy.mode audit (recorded, not enforced), then enforce.
  const dg = await startLifecycle(w.rules(patch('audit')));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = (sub: string) => w.token({ sub, scope: 'items.read' });
  const deny = async (sub: string) => { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(await weak(sub), { 'content-type': 'application/json' }), body: '{}' }); await r.text(); };
  for (let i = 0; i < 3; i++) await deny(HUMAN);
  await dg.dg.swap(loadRules(writeRules(w.rules(patch('enforce')))));
  // The agent's write for the person: its head now, decided as far as its body.
  const delegated = await w.token({ sub: HUMAN, claims: { act: { sub: AGENT } } });
  const body = '{"a":1}';
  const s = connect({ port: Number(new URL(dg.url).port), host: '127.0.0.1' });
  t.teardown(() => s.destroy());
  let answer = '';
  s.on('data', (c) => { answer += c.toString('latin1'); });
  await new Promise<void>((r) => s.once('connect', () => r()));
  s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${delegated}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
  await reached(t, () => dg.seen.find((x) => x.ctx.req.headers.authorization === `Bearer ${delegated}`), 'quarantine');
  // Meanwhile the agent is quarantined, enforced, by three denials of its own.
  for (let i = 0; i < 3; i++) await deny(AGENT);
  const before = w.up.seen.length;
  s.write(body);
  t.ok(await until(() => answer.includes('\r\n\r\n')), 'answered');
  t.match(answer.split('\r\n')[0], / 403 /, 'refused: the agent is quarantined');
  t.match(answer, /consumer-quarantined/);
  t.equal(w.up.seen.length, before, 'not forwarded');
});
