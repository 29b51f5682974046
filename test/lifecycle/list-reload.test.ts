// Revocation lists and quarantine across a reload: what the new rules name is what is in
// force. Real list servers on loopback, a real driftguard with the lifecycle feature.

import t, { type Test } from 'tap';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { loadRules } from '../../proxy/rules/load.ts';
import { writeRules, AGENT, HUMAN } from '../support/driftguard.ts';
import { world, startLifecycle, bearer, monitorsOnly, trustAlso, problem } from './support.ts';
import { ISSUER } from '../support/keys.ts';

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a fetch of the old list URL that ends after a reload does not replace the new list', async (t) => {
  let oldFetches = 0;
  let slowOld!: () => void;
  const oldAnswered = new Promise<void>((r) => { slowOld = r; });
  const lists = createServer((req, res) => {
    if (req.url === '/old') {
      // The first read is quick; the next one is still running when the reload comes.
      if (++oldFetches === 1) { res.writeHead(200, { 'content-type': 'application/json', etag: '"old"' }); res.end('{"revocations":[]}'); return; }
      setTimeout(() => { res.writeHead(200, { 'content-type': 'application/json', etag: '"old2"' }); res.end('{"revocations":[]}'); slowOld(); }, 1_200);
      return;
    }
    if (req.headers['if-none-match'] === '"new"') { res.writeHead(304, { etag: '"new"' }); res.end(); return; }
    res.writeHead(200, { 'content-type': 'application/json', etag: '"new"' });
    res.end(JSON.stringify({ revocations: [{ kind: 'subject', value: AGENT, reason: 'compromised' }] }));
  });
  const base = await listen(lists);
  const w = await world();
  const rules = (path: string) => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.revocation = { url: `${base}${path}`, interval: '1s', timeout: '10s' };
  });
  const dg = await startLifecycle(rules('/old'));
  t.teardown(async () => { await dg.close(); await w.close(); lists.close(); });
  const status = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }); await r.text(); return r.status; };
  t.equal(await status(), 200, 'the old list revokes nothing');
  for (let i = 0; i < 100 && oldFetches < 2; i++) await sleep(20);
  t.equal(oldFetches, 2, 'a second fetch of the old list is running');
  await dg.dg.swap(loadRules(writeRules(rules('/new'))));
  for (let i = 0; i < 100 && (await status()) !== 401; i++) await sleep(20);
  t.equal(await status(), 401, 'the new list is in force');
  await oldAnswered;
  await sleep(1_300); // the old answer has landed, and the new source has read its list again (304)
  t.equal(await status(), 401, 'and stays in force after the old fetch ends');
  const listed = await (await fetch(`${dg.admin}/revocations`)).json() as { revocations: { value?: string }[] };
  t.ok(listed.revocations.some((r) => JSON.stringify(r).includes(AGENT)), 'GET /revocations lists it');
});

t.test('a reload naming a list URL anew, with no list read to stay in force, is refused while the URL cannot be read, and taken once it can', async (t) => {
  let serving = true;
  const lists = createServer((_req, res) => {
    if (!serving) { res.writeHead(503).end(); return; }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ revocations: [{ kind: 'jti', value: 'stolen-jti', reason: 'leaked' }] }));
  });
  const up = await listen(lists);
  const w = await world();
  const rules = (url?: string) => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.revocation = { ...(url ? { url } : {}), interval: '1s', timeout: '300ms' };
  });
  const dg = await startLifecycle(rules(`${up}/a`));
  t.teardown(async () => { await dg.close(); await w.close(); lists.close(); });
  const call = async (jti = 'clean-jti') => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ omit: ['jti'], claims: { jti } })) }); const b = await r.text(); return { status: r.status, code: r.status === 200 ? undefined : JSON.parse(b).code }; };
  const ready = async () => { const r = await fetch(`${dg.admin}/readyz`); await r.text(); return r.status; };
  t.same(await call('stolen-jti'), { status: 401, code: 'credential-revoked' }, 'list A read');
  await dg.dg.swap(loadRules(writeRules(rules())));
  await sleep(100);
  t.same(await call('stolen-jti'), { status: 200, code: undefined }, 'no list: its revocations lifted');
  // A typo, or a list server not deployed yet: taken unread, it refused every credential and
  // took every pod out of service. Refused instead, as a new issuer's unreachable keys are.
  const typo = dg.dg.swap(loadRules(writeRules(rules('http://127.0.0.1:1/b'))));
  await t.rejects(typo, { name: 'RulesError', transient: true, message: /revocation\.url: the revocation list cannot be read \(ECONNREFUSED\): taken unread, every request with a credential would be refused until it is; the reload is tried again/ });
  t.same(await call(), { status: 200, code: undefined }, 'the rules in force serve on');
  t.equal(await ready(), 200, 'and the pod stays ready');
  serving = false;
  await t.rejects(dg.dg.swap(loadRules(writeRules(rules(`${up}/a`)))), { message: /the revocation list cannot be read \(HTTP 503\)/ }, 'a list server that answers 503: refused too');
  serving = true;
  await dg.dg.swap(loadRules(writeRules(rules(`${up}/a`))));
  await sleep(100);
  t.same(await call('stolen-jti'), { status: 401, code: 'credential-revoked' }, 'readable: taken, and its list in force');
  t.equal(await ready(), 200);
});

t.test('a reload that turns revocation.mode from audit to enforce while the list URL is unread reads it first, and is refused while it cannot be', async (t) => {
  let serving = false;
  const lists = createServer((_req, res) => {
    if (!serving) { res.writeHead(503).end(); return; }
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"revocations":[]}');
  });
  const up = await listen(lists);
  const w = await world();
  // Audit first, then enforce: the usual way to roll it out. Under audit the pod started with the list unread.
  const rules = (mode: string) => w.rules((r) => { r.credentials = { taskBindingAt: 'never' }; r.revocation = { mode, url: `${up}/list.json`, interval: '10m', timeout: '300ms' }; });
  const dg = await startLifecycle(rules('audit'));
  t.teardown(async () => { await dg.close(); await w.close(); lists.close(); });
  const call = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }); await r.text(); return r.status; };
  await t.rejects(dg.dg.swap(loadRules(writeRules(rules('enforce')))), { transient: true, message: /revocation\.url: the revocation list cannot be read \(HTTP 503\)/ }, 'refused, not taken unread');
  t.equal(await call(), 200, 'the rules in force serve on');
  serving = true;
  await dg.dg.swap(loadRules(writeRules(rules('enforce'))));
  await sleep(100);
  t.equal(await call(), 200, 'readable: taken, and served');
});

t.test('a reload to a list URL that fails keeps the list read before in force, and the pod ready', async (t) => {
  const lists = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ revocations: [{ kind: 'jti', value: 'stolen-jti', reason: 'leaked' }] }));
  });
  const up = await listen(lists);
  const w = await world();
  const rules = (url: string, interval = '1s') => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.revocation = { url, interval, timeout: '300ms' };
  });
  const dg = await startLifecycle(rules(`${up}/a`));
  t.teardown(async () => { await dg.close(); await w.close(); lists.close(); });
  const call = async (jti: string) => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ omit: ['jti'], claims: { jti } })) }); await r.text(); return r.status; };
  const ready = async () => { const r = await fetch(`${dg.admin}/readyz`); await r.text(); return r.status; };
  t.equal(await call('stolen-jti'), 401, 'list A read');
  // A ConfigMap change reaches every pod at once: a list server down then, or a typo in the new
  // URL, must not take every pod out of its Service while each serves with the list it has.
  for (const [url, interval] of [['http://127.0.0.1:1/b', '1s'], [`${up}/a`, '1s'], ['http://127.0.0.1:1/a', '2s']] as const) {
    await dg.dg.swap(loadRules(writeRules(rules(url, interval))));
    await sleep(500);
    t.equal(await ready(), 200, `ready after a reload to ${url} every ${interval}`);
    t.equal(await call('stolen-jti'), 401, 'the list read before stays in force');
    t.equal(await call('clean-jti'), 200, 'and nothing else is refused');
  }
});

t.test('a quarantine placed by would-denies (proxy.mode audit) is an audit one: a reload to enforce does not enforce it', async (t) => {
  const w = await world();
  const rules = (mode: string) => w.rules((r) => {
    r.proxy.mode = mode;
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } });
  });
  const dg = await startLifecycle(rules('audit'));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ scope: 'items.read' });
  for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); t.equal(r.status, 200, 'a would-deny, forwarded'); }
  const listed = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { mode: string }[] };
  t.same(listed.quarantined.map((q) => q.mode), ['audit'], 'listed as an audit quarantine (before: enforce)');
  await dg.dg.swap(loadRules(writeRules(rules('enforce'))));
  const after = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
  await after.text();
  // Before: 403 consumer-quarantined, for a consumer nothing had ever been refused to.
  t.equal(after.status, 200, 'still a would-deny until it ends');
  t.match(after.headers.get('driftguard-warning'), /consumer-quarantined/);
  // But it shields nothing: enforced denials since the reload count (before, none was counted
  // while the audit quarantine held, for up to its period), and quarantine it for real.
  for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); t.equal(r.status, 403, 'an enforced denial'); }
  const now = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { mode: string; reasons: string[] }[] };
  t.same(now.quarantined.map((q) => q.mode), ['enforce'], 'the enforced denials placed an enforced quarantine over the audit one');
  await problem(t, await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) }), 'consumer-quarantined', 403);
});

/** Rules with the quarantine monitor alone (3 denials a minute) in `mode`, started; `rules(mode)` for a reload; `weak` a token whose writes are refused. */
async function quarantining(t: Test, mode: string, period: string) {
  const w = await world();
  const rules = (m: string) => w.rules((r) => {
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ quarantine: { mode: m, denials: 3, window: '1m', period } });
  });
  const dg = await startLifecycle(rules(mode));
  t.teardown(async () => { await dg.close(); await w.close(); });
  return { w, dg, rules, weak: await w.token({ scope: 'items.read' }) };
}

t.test('an audit quarantine (monitors.quarantine.mode audit) does not shield the consumer after a reload to enforce', async (t) => {
  const { w, dg, rules, weak } = await quarantining(t, 'audit', '15m');
  const write = async () => { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); return r.status; };
  for (let i = 0; i < 5; i++) t.equal(await write(), 403, 'refused (its quarantine only audited)');
  t.same((await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { mode: string }[] }).quarantined.map((q) => q.mode), ['audit'], 'audit quarantine; denials under it not counted towards another');
  await dg.dg.swap(loadRules(writeRules(rules('enforce'))));
  for (let i = 0; i < 3; i++) await write();
  t.same((await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { mode: string }[] }).quarantined.map((q) => q.mode), ['enforce'], 'three enforced denials after the reload: enforced');
  const good = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
  await good.text();
  t.equal(good.status, 403, 'and the consumer is refused');
});

t.test('a quarantine counted from would-denies and one enforced denial is an audit one too', async (t) => {
  const w = await world();
  const dg = await startLifecycle(w.rules((r) => {
    r.proxy.mode = 'audit';
    r.credentials = { taskBindingAt: 'never' };
    // The retry-storm monitor reads small bodies: one that does not come is refused in every mode.
    r.monitors = { bodyTimeout: '300ms', retryStorm: { maxRepeats: 100, window: '1m' }, idempotency: { mode: 'off' }, traversal: { mode: 'off' }, quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '15m' } };
  }));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ scope: 'items.read' });
  for (let i = 0; i < 2; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); t.equal(r.status, 200, 'a would-deny, forwarded'); }
  // The third, with every scope (so no earlier would-deny stops the checks before the body is
  // read): its body never comes, an enforced malformed-request, the one enforced denial.
  const full = await w.token();
  const answer = await new Promise<string>((resolve) => {
    const s = connect(Number(new URL(dg.url).port), '127.0.0.1', () => s.write(`POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${full}\r\nContent-Length: 10\r\n\r\n{}`));
    setTimeout(() => { s.destroy(); resolve(got || 'no answer'); }, 5_000).unref();
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); if (got.includes('\r\n\r\n')) { s.destroy(); resolve(got.split('\r\n')[0]!); } });
    s.on('error', () => resolve(got));
  });
  t.equal(answer, 'HTTP/1.1 400 Bad Request', 'the unreadable body is refused, as in any mode');
  const listed = await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { mode: string }[] };
  // Before: the last denial alone decided, and it was enforced: an enforce quarantine.
  t.same(listed.quarantined.map((q) => q.mode), ['audit']);
});

t.test('a reload to quarantine mode audit stops enforcing a quarantine at once', async (t) => {
  const { w, dg, rules, weak } = await quarantining(t, 'enforce', '5m');
  for (let i = 0; i < 3; i++) { const r = await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(weak), body: '{}' }); await r.text(); t.equal(r.status, 403, 'insufficient scope'); }
  const good = await w.token();
  const before = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  t.equal((await before.json() as { code: string }).code, 'consumer-quarantined', 'quarantined under enforce');
  await dg.dg.swap(loadRules(writeRules(rules('audit'))));
  const after = await fetch(`${dg.url}/items/1`, { headers: bearer(good) });
  await after.text();
  t.equal(after.status, 200, 'forwarded under audit');
  t.match(after.headers.get('driftguard-warning'), /consumer-quarantined/, 'with the would-deny as a warning');
});

t.test('a consumer registered (or no longer) by a reload while two issuers are trusted keeps its quarantine, idempotency keys and state', async (t) => {
  const w = await world();
  const SUB = 'client-7';
  const rules = (register: boolean) => w.rules((r) => {
    trustAlso(r, 'https://other.test.local');
    r.consumers.unknown = 'allow';
    if (register) r.consumers.registry.push({ subject: SUB, kind: 'automation', owner: 'team-x', issuer: ISSUER });
    r.monitors = monitorsOnly({ idempotency: { mode: 'enforce', at: 'critical' }, quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '10m' } });
  });
  const dg = await startLifecycle(rules(false));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const full = await w.token({ sub: SUB, claims: { task_id: 't1' } });
  const weak = await w.token({ sub: SUB, scope: 'payments.write' });
  const pay = async () => {
    const res = await fetch(`${dg.url}/payments`, { method: 'POST', headers: bearer(full, { 'content-type': 'application/json', 'idempotency-key': 'k1' }), body: '{"amount":5}' });
    await res.text();
    return res.status;
  };
  t.equal(await pay(), 200, 'the write goes through once');
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(weak) })).text();
  const quarantined = async () => (await (await fetch(`${dg.admin}/quarantine`)).json() as { quarantined: { subject: string }[] }).quarantined.map((q) => q.subject);
  t.same(await quarantined(), [JSON.stringify([ISSUER, SUB])], 'quarantined, named by issuer and subject (unregistered, two issuers)');

  await dg.dg.swap(loadRules(writeRules(rules(true))));
  t.same(await quarantined(), [SUB], 'registered: the quarantine is under its subject now');
  const item = await fetch(`${dg.url}/items/1`, { headers: bearer(full) });
  t.equal(item.status, 403, 'and still in force (it was let through)');
  t.equal(((await item.json()) as { code: string }).code, 'consumer-quarantined');
  t.ok(dg.logs.some((l) => l.msg === 'consumer state kept under the names the reload gives' && Number(l.entries) >= 2), 'logged');
  const consumers = (await (await fetch(`${dg.admin}/consumers`)).json() as { consumers: { subject: string; decisions: Record<string, unknown> }[] }).consumers;
  t.ok(Object.keys(consumers.find((c) => c.subject === SUB)?.decisions ?? {}).includes('allow'), 'its decisions so far are its own under the new name');

  // Lift it, and retry the write with the same key: still a duplicate (it went through twice).
  t.equal((await fetch(`${dg.admin}/quarantine/${encodeURIComponent(SUB)}`, { method: 'DELETE' })).status, 200);
  const before = w.up.seen.length;
  t.equal(await pay(), 409, 'the retried write is refused as a duplicate');
  t.equal(w.up.seen.length, before, 'and not forwarded');

  // And back: no longer registered, its quarantine goes back under issuer and subject.
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(weak) })).text();
  t.same(await quarantined(), [SUB]);
  await dg.dg.swap(loadRules(writeRules(rules(false))));
  t.same(await quarantined(), [JSON.stringify([ISSUER, SUB])]);
  const again = await fetch(`${dg.url}/items/1`, { headers: bearer(full) });
  t.equal(again.status, 403);
  await again.text();
});

t.test('a reload that stops trusting an issuer leaves its consumers\' quarantines where they were, not on a same-named consumer of another', async (t) => {
  const w = await world();
  const OTHER = 'https://other.test.local';
  const SUB = 'client-7';
  const rules = (two: boolean) => w.rules((r) => {
    if (two) trustAlso(r, OTHER);
    r.consumers.unknown = 'allow';
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '10m' } });
  });
  const dg = await startLifecycle(rules(true));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weakOther = await w.token({ sub: SUB, iss: OTHER, scope: 'payments.write' });
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(weakOther) })).text();
  await dg.dg.swap(loadRules(writeRules(rules(false))));
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: SUB })) });
  t.equal(res.status, 200, 'ISSUER\'s client-7 was never quarantined (it was 403 consumer-quarantined)');
  await res.text();
  t.match(dg.logs.find((l) => String(l.msg).startsWith('consumer state dropped by the reload')), { level: 'warn', consumers: 1, quarantinesLifted: 1 }, 'the lifted quarantine is said');
});

t.test('a subject spelled ["<issuer>","<victim>"] does not hand its quarantine to the victim at a reload', async (t) => {
  const w = await world();
  const rules = (connect: string) => w.rules((r) => {
    r.proxy.timeouts.connect = connect;
    r.consumers.unknown = 'allow';
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '10m' } });
  });
  const dg = await startLifecycle(rules('1s'));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const forged = await w.token({ sub: JSON.stringify([ISSUER, AGENT]), scope: 'payments.write' });
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(forged) })).text();
  await dg.dg.swap(loadRules(writeRules(rules('2s'))));
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token()) });
  t.equal(res.status, 200, 'the agent was never quarantined (it was 403 after an unrelated reload)');
  await res.text();
});

t.test('a reload that registers a subject to another issuer drops what was kept for the first issuer\'s, rather than hand it over', async (t) => {
  const w = await world();
  const B = 'https://idp-b.test.local';
  const rules = (second: boolean) => w.rules((r) => {
    if (second) {
      trustAlso(r, B);
      r.consumers.registry.push({ subject: 'bob', issuer: B, kind: 'automation', owner: 'team-b' });
    }
    r.consumers.unknown = 'allow';
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '10m' } });
  });
  const dg = await startLifecycle(rules(false));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const weak = await w.token({ sub: 'bob', scope: 'payments.write' });
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(weak) })).text();
  await dg.dg.swap(loadRules(writeRules(rules(true))));
  const res = await fetch(`${dg.url}/items/1`, { headers: bearer(await w.token({ sub: 'bob', iss: B })) });
  t.equal(res.status, 200, 'B\'s bob was never quarantined (it got the first issuer\'s bob\'s quarantine)');
  await res.text();
});

t.test('a reload that changes nothing about identity keeps the quarantine of an agent named by an act.iss nobody configured', async (t) => {
  const w = await world();
  const rules = (connect: string) => w.rules((r) => {
    r.proxy.timeouts.connect = connect;
    r.consumers.unknown = 'allow';
    r.delegation = { mode: 'off' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 3, window: '1m', period: '10m' } });
  });
  const dg = await startLifecycle(rules('1s'));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const act = { act: { sub: 'agent-x', iss: 'https://agents.example' } };
  const weak = await w.token({ sub: HUMAN, scope: 'payments.write', claims: act });
  for (let i = 0; i < 3; i++) await (await fetch(`${dg.url}/items/1`, { headers: bearer(weak) })).text();
  const full = await w.token({ sub: HUMAN, claims: act });
  const status = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(full) }); await r.text(); return r.status; };
  t.equal(await status(), 403, 'the agent is quarantined');
  await dg.dg.swap(loadRules(writeRules(rules('2s'))));
  t.equal(await status(), 403, 'and still is after the reload (it was lifted)');
});

t.test('a quarantine kept by hash (a name past 128 characters) follows its consumer through reloads that rename it', async (t) => {
  const w = await world();
  const patch = (r: Record<string, any>) => {
    r.consumers.unknown = 'allow';
    r.credentials = { taskBindingAt: 'never' };
    r.monitors = monitorsOnly({ quarantine: { mode: 'enforce', denials: 2, window: '1m', period: '1h' } });
  };
  const dg = await startLifecycle(w.rules(patch));
  t.teardown(async () => { await dg.close(); await w.close(); });
  const reload = async (two: boolean) => {
    await dg.dg.swap(loadRules(writeRules(w.rules((r) => { patch(r); if (two) trustAlso(r, 'https://other.test.local'); }))));
  };
  // 100 characters: short alone, past 128 as ["<issuer>","<subject>"] once two issuers are
  // trusted; 152: past 128 either way.
  for (const sub of ['spiffe://test.local/ns/batch/sa/' + 'w'.repeat(68), 'spiffe://test.local/ns/batch/sa/' + 'x'.repeat(120)]) {
    const tok = await w.token({ sub, scope: 'items.read' });
    const status = async () => { const r = await fetch(`${dg.url}/items/1`, { headers: bearer(tok) }); await r.text(); return r.status; };
    for (let i = 0; i < 2; i++) await (await fetch(`${dg.url}/items`, { method: 'POST', headers: bearer(tok), body: '{}' })).text();
    t.equal(await status(), 403, `quarantined (${sub.length} characters)`);
    await reload(true);
    t.equal(await status(), 403, `${sub.length}: still quarantined once a second issuer is trusted`);
    await reload(false);
    t.equal(await status(), 403, `${sub.length}: and once it is not again`);
  }
});
