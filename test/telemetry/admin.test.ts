// GET /metrics (Prometheus text whose counters move), GET /decisions (filters, newest first)
// and the decision log (deny and warn always, allow sampled, no secrets), on a real
// driftguard with real tokens.

import t from 'tap';
import { writeFileSync } from 'node:fs';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, AGENT, BOT } from '../support/driftguard.ts';
import { reloader } from '../../proxy/reload.ts';
import { collector, startWithTelemetry } from './support.ts';
import { parsePrometheus, sample } from './prometheus.ts';
import { raw, get } from '../support/raw.ts';

const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
const otlp = await collector();
const STRANGER = 'spiffe://test.local/ns/x/sa/stranger';
const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
  r.consumers.unknown = 'allow';
  r.telemetry = { traces: { endpoint: otlp.url }, decisionLog: { allowSampleRate: 0 }, recent: { size: 50 } };
}));
const reload = reloader(dg.file, {}, dg.dg, () => {});
dg.dg.reloadStatus = reload.status;
const tokens: string[] = [];
const mint = async (o: Parameters<typeof token>[0]) => { const tok = await token(o); tokens.push(tok); return tok; };
const captured: string[] = [];
t.teardown(async () => { reload.close(); await dg.stop(); await up.close(); await keys.close(); await otlp.close(); });

async function metrics() {
  const text = await (await fetch(dg.admin + '/metrics')).text();
  captured.push(text);
  return parsePrometheus(text);
}

async function decisions(query = ''): Promise<{ status: number; body: any }> {
  const res = await fetch(dg.admin + '/decisions' + query);
  const text = await res.text();
  captured.push(text);
  return { status: res.status, body: JSON.parse(text) };
}

async function call(path: string, tok?: string, method = 'GET'): Promise<number> {
  const res = await fetch(dg.url + path, { method, headers: tok ? { authorization: `Bearer ${tok}` } : {} });
  captured.push(await res.text(), JSON.stringify([...res.headers]));
  return res.status;
}

t.test('requests Node\'s parser refuses are counted by the reason they were answered with', async (t) => {
  const m0 = await metrics();
  const port = new URL(dg.url).port;
  const answers = [
    await raw(Number(port), get(`/items/${'a'.repeat(17 * 1024)}`)),
    await raw(Number(port), get('/items/1', [`X-Padding: ${'a'.repeat(20 * 1024)}`])),
    await raw(Number(port), get('/items/1', [`X-Padding: ${'a'.repeat(20 * 1024)}`])),
  ];
  t.same(answers.map((a) => a.status), [414, 431, 431]);
  const m1 = await metrics();
  const count = (m: ReturnType<typeof parsePrometheus>, reason: string) => sample(m, 'driftguard_unparsed_requests_total', { reason }) ?? 0;
  t.equal(count(m1, 'target-too-long') - count(m0, 'target-too-long'), 1);
  t.equal(count(m1, 'headers-too-large') - count(m0, 'headers-too-large'), 2);
});

t.test('/metrics parses as Prometheus text and its counters move', async (t) => {
  const res = await fetch(dg.admin + '/metrics');
  t.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  await res.text();
  const m0 = await metrics();
  const allow = { decision: 'allow', enforced: 'true', reason: 'allowed', operation: 'getItem', consumer_kind: 'automation' };
  const allowed0 = sample(m0, 'driftguard_decisions_total', allow) ?? 0;
  t.ok((sample(m0, 'driftguard_jwks_refreshes_total', { source: keys.url, result: 'success' }) ?? 0) >= 1, 'the JWKS fetch at start-up is counted');
  t.equal(sample(m0, 'driftguard_jwks_ready', { source: keys.url }), 1);
  t.ok((sample(m0, 'driftguard_jwks_key_set_age_seconds', { source: keys.url }) ?? -1) >= 0);
  t.equal(sample(m0, 'driftguard_rules_info', { hash: dg.dg.generation.rules.hash }), 1);

  const tok = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  t.equal(await call('/items/1', tok), 200);
  t.equal(await call('/items/2', tok), 200);
  t.equal(await call('/items/3', 'not.a.token'), 401);
  const m1 = await metrics();
  t.equal(sample(m1, 'driftguard_decisions_total', allow), allowed0 + 2, 'two allows');
  t.equal(sample(m1, 'driftguard_decisions_total', { decision: 'deny', reason: 'invalid-credential', operation: 'getItem', consumer_kind: 'none' }), 1);
  t.ok((sample(m1, 'driftguard_token_cache_total', { result: 'miss' }) ?? 0) >= 1, 'first use of the token: a miss');
  t.ok((sample(m1, 'driftguard_token_cache_total', { result: 'hit' }) ?? 0) >= 1, 'second use: a hit');
  t.ok((sample(m1, 'driftguard_added_latency_seconds_count', { decision: 'allow' }) ?? 0) >= 2, 'driftguard\'s own latency is observed');
  t.ok((sample(m1, 'driftguard_upstream_duration_seconds_count') ?? 0) >= 2, 'upstream time is observed separately');
  t.equal(sample(m1, 'driftguard_in_flight_requests'), 0);
  // One valid token verified and cached.
  t.equal(sample(m1, 'driftguard_table_entries', { table: 'token_cache' }), 1, 'the token cache holds the one valid token');
  const fill = sample(m1, 'driftguard_table_fill_ratio', { table: 'token_cache' }) ?? NaN;
  t.ok(fill > 0 && fill < 0.01, `and is far from full: ${fill}`);
  t.ok((sample(m1, 'driftguard_table_entries', { table: 'recent_decisions' }) ?? 0) >= 3, 'the ring holds the decisions');
});


t.test('stale and deprecated calls by consumer and owner; unknown subjects collapse to one value', async (t) => {
  const old = await mint({ key, sub: AGENT, scope: 'items.read payments.write', contract: '2026-06' });
  t.equal(await call('/items', old), 200, 'stale contract, low sensitivity: warn');
  t.equal(await call('/payments', old, 'POST'), 409, 'stale contract, critical: deny');
  const current = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  t.equal(await call('/search', current), 200, 'deprecated: warn');
  for (const n of [1, 2]) {
    const stranger = await mint({ key, sub: `${STRANGER}-${n}`, scope: 'items.read', contract: '2026-09' });
    t.equal(await call('/search', stranger), 200);
  }
  const bot = await mint({ key, sub: BOT, scope: 'items.admin', contract: '2026-09' });
  t.equal(await call('/items/9', bot, 'DELETE'), 403, 'deprecated, high sensitivity: deny');
  const m = await metrics();
  t.equal(sample(m, 'driftguard_stale_contract_calls_total', { consumer: AGENT, owner: 'team-app', operation: 'listItems', decision: 'warn' }), 1);
  t.equal(sample(m, 'driftguard_stale_contract_calls_total', { consumer: AGENT, owner: 'team-app', operation: 'pay', decision: 'deny' }), 1);
  t.equal(sample(m, 'driftguard_deprecated_calls_total', { consumer: AGENT, owner: 'team-app', operation: 'oldSearch', decision: 'warn' }), 1);
  t.equal(sample(m, 'driftguard_deprecated_calls_total', { consumer: 'unregistered', owner: 'none', operation: 'oldSearch', decision: 'warn' }), 2, 'two unknown subjects, one series');
  t.equal(sample(m, 'driftguard_deprecated_calls_total', { consumer: BOT, owner: 'team-ops', operation: 'deleteItem', decision: 'deny' }), 1);
  const text = captured.at(-1)!;
  t.notOk(text.includes(STRANGER), 'no unknown subject appears as a label');
});

t.test('rules reloads are counted', async (t) => {
  const good = (await import('node:fs')).readFileSync(dg.file, 'utf8');
  writeFileSync(dg.file, good + '\nnot: [valid\n');
  const r = await reload.reload('test');
  t.ok(r.error, 'the broken file is rejected');
  writeFileSync(dg.file, good);
  const m = await metrics();
  t.equal(sample(m, 'driftguard_rules_reloads_total', { result: 'failure' }), 1);
  t.equal(sample(m, 'driftguard_rules_reloads_total', { result: 'success' }), 0);
});

t.test('/decisions: newest first, every filter, bad parameters refused', async (t) => {
  const all = await decisions();
  t.equal(all.status, 200);
  t.equal(all.body.count, 9, 'every decision so far, allows included');
  t.equal(all.body.capacity, 50);
  const times = all.body.decisions.map((d: any) => Date.parse(d.time));
  t.same(times, [...times].sort((a, b) => b - a), 'newest first');
  t.equal(all.body.decisions[0].operation, 'deleteItem', 'the last call is first');
  t.type(all.body.decisions[0].traceId, 'string');
  t.match(all.body.decisions[0].checks, /deprecation:deny:deprecated-operation$/);

  const byConsumer = await decisions(`?consumer=${encodeURIComponent(BOT)}`);
  t.ok(byConsumer.body.count >= 1);
  t.ok(byConsumer.body.decisions.every((d: any) => d.consumer === BOT));
  const byOwner = await decisions('?owner=team-app');
  t.ok(byOwner.body.count >= 5);
  t.ok(byOwner.body.decisions.every((d: any) => d.owner === 'team-app'));
  const byOp = await decisions('?operation=pay');
  t.equal(byOp.body.count, 1);
  t.equal(byOp.body.decisions[0].reason, 'stale-contract');
  const byReason = await decisions('?reason=stale-contract');
  t.equal(byReason.body.count, 2, 'the deny and the warn, each with that reason (a warning that is not the reason: decisions-filter.test.ts)');
  const byDecision = await decisions('?decision=warn&owner=team-app');
  t.ok(byDecision.body.decisions.every((d: any) => d.decision === 'warn' && d.owner === 'team-app'));
  t.ok(byDecision.body.count >= 2);
  const limited = await decisions('?limit=2');
  t.equal(limited.body.count, 2);
  t.same(limited.body.decisions, all.body.decisions.slice(0, 2));
  const trace = all.body.decisions[3].traceId;
  const byTrace = await decisions(`?traceId=${trace}`);
  t.equal(byTrace.body.count, 1);
  t.equal(byTrace.body.decisions[0].traceId, trace);
  t.equal((await decisions(`?traceId=${trace.toUpperCase()}`)).body.count, 1, 'a trace id in capitals is the same trace');

  const future = await decisions(`?since=${new Date(Date.now() + 60_000).toISOString()}`);
  t.equal(future.body.count, 0);
  const recent = await decisions('?since=10m');
  t.equal(recent.body.count, all.body.count, 'a relative since');
  const past = await decisions(`?until=${Date.parse(all.body.decisions.at(-1).time) - 1}`);
  t.equal(past.body.count, 0, 'until in epoch ms');

  // A time without an offset was read in the process's time zone, 2026-02-30 as March 2.
  for (const q of ['?decision=maybe', '?limit=0', '?limit=1e3', '?limit=0x10', '?limit=1.0', '?limit=%201', '?since=yesterday', '?consumerr=x', '?since=2026-11-25T18:00:00', '?until=2026-11-25%2018:00', '?since=11/25/2026', '?until=2026-02-30']) {
    const bad = await decisions(q);
    t.equal(bad.status, 400, q);
  }
  // A typo is a 400 naming it, not an empty answer that reads as "no such calls".
  for (const [q, detail] of [
    ['?reason=stale_contract', /^reason: "stale_contract" is not a reason code/], ['?traceId=XYZ', /^traceId: must be 32 hexadecimal digits/],
    // A repeated filter replaced the earlier one: decision=deny&decision=allow answered the allows.
    ['?decision=deny&decision=allow', /^decision: given more than once/], ['?owner=team-app&limit=2&owner=team-other', /^owner: given more than once/],
    ['?since=10m&since=1h', /^since: given more than once/],
  ] as const) {
    const bad = await decisions(q);
    t.equal(bad.status, 400, q);
    t.match(bad.body.detail, detail, q);
  }
});

t.test('/metrics: what the process itself costs (this test runs driftguard in its own process)', async (t) => {
  const m0 = await metrics();
  const cpu0 = sample(m0, 'process_cpu_seconds_total')!;
  const tok = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  for (let i = 0; i < 50; i++) t.equal(await call(`/items/${i}`, tok), 200);
  const m1 = await metrics();
  t.ok(sample(m1, 'process_cpu_seconds_total')! > cpu0, 'CPU seconds grow with work');
  const rss = process.memoryUsage.rss();
  const reported = sample(m1, 'process_resident_memory_bytes')!;
  t.ok(Math.abs(reported - rss) < rss * 0.5, `resident memory ${reported} is this process's (${rss} now)`);
  t.ok(Math.abs(sample(m1, 'process_start_time_seconds')! - performance.timeOrigin / 1000) < 1, 'start time is the process start');
  const used = sample(m1, 'nodejs_heap_used_bytes')!;
  const total = sample(m1, 'nodejs_heap_size_total_bytes')!;
  t.ok(used > 1e6 && used <= total, `heap used ${used} within heap total ${total}`);
});

t.test('the ring is bounded', async (t) => {
  for (let i = 0; i < 60; i++) await call('/status');
  const all = await decisions('?limit=1000');
  t.equal(all.body.count, 50);
  t.equal(all.body.held, 50);
});

t.test('decision log: deny and warn always, allow at the sample rate (0 here), fields, no secrets', async (t) => {
  const log = await dg.stop();
  const lines = log.trim().split('\n').map((l) => JSON.parse(l));
  t.equal(lines.length, 7, 'one deny in the first test, six warns and denies in the second');
  t.notOk(lines.some((l) => l.decision === 'allow'), 'allows are not sampled at rate 0');
  t.ok(lines.some((l) => l.decision === 'warn'));
  const pay = lines.find((l) => l.operation === 'pay');
  t.match(pay, {
    msg: 'decision', decision: 'deny', enforced: true, reason: 'stale-contract', consumer: AGENT, consumerKind: 'automation',
    owner: 'team-app', registered: true, issuer: 'https://issuer.test.local', declaredContract: '2026-06', currentContract: '2026-09',
    changedIn: '2026-09', sensitivity: 'critical', method: 'POST', path: '/payments', route: '/payments', status: 409,
    rules: dg.dg.generation.rules.hash,
  });
  t.match(pay.traceId, /^[0-9a-f]{32}$/);
  t.type(pay.jti, 'string');
  t.type(pay.addedMs, 'number');
  t.match(pay.checks, /contract:deny:stale-contract$/);
  t.notOk('upstreamMs' in pay, 'a deny never reached the upstream');
  const everything = [log, ...dg.logs, ...captured, ...otlp.bodies].join('\n');
  // Minted by the tests above (run alone, this test has nothing to look for, and says so).
  t.ok(tokens.length > 0, 'the tests above minted tokens to look for');
  for (const tok of tokens) {
    t.notOk(everything.includes(tok), 'no token anywhere');
    t.notOk(everything.includes(tok.split('.')[2]!), 'no token signature anywhere');
  }
});

t.test('two issuers on one JWKS URL (or URLs differing only in the query) are two series, by issuer', async (t) => {
  const other = 'https://other.test.local';
  const two = await startWithTelemetry(baseRules(up.origin, keys.url + '?tenant=a', (r) => {
    r.identity.issuers.push({ ...r.identity.issuers[0], issuer: other, jwks: { url: keys.url + '?tenant=b' } });
    for (const c of r.consumers.registry) c.issuer = r.identity.issuers[0].issuer;
    r.telemetry = { traces: { exporter: 'none' } };
  }));
  t.teardown(() => two.close());
  const text = await (await fetch(two.admin + '/metrics')).text();
  // Before: the same series twice (the source drops the query), which the parser refuses, as Prometheus does.
  const m = parsePrometheus(text);
  const first = two.dg.generation.rules.identity.issuers[0]!.issuer;
  for (const issuer of [first, other]) {
    t.equal(sample(m, 'driftguard_jwks_ready', { issuer, source: keys.url }), 1, `${issuer}'s key set is ready`);
    t.ok((sample(m, 'driftguard_jwks_refreshes_total', { issuer, source: keys.url, result: 'success' }) ?? 0) >= 1);
  }
});

t.test('GET /decisions?consumer= takes the ["<issuer>","<subject>"] name /consumers shows, for that issuer\'s subject only', async (t) => {
  const other = 'https://other.test.local';
  const two = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.identity.issuers.push({ ...r.identity.issuers[0], issuer: other });
    for (const c of r.consumers.registry) c.issuer = r.identity.issuers[0].issuer;
    r.consumers.unknown = 'allow';
    r.telemetry = { traces: { exporter: 'none' }, recent: { size: 50 } };
  }));
  t.teardown(() => two.close());
  for (const iss of ['https://issuer.test.local', other]) {
    const res = await fetch(`${two.url}/items/1`, { headers: { authorization: `Bearer ${await token({ key, sub: 'client-7', iss, scope: 'items.read', contract: '2026-09' })}` } });
    await res.text();
  }
  // The name /consumers gives it (the lifecycle tests check that; this driftguard has telemetry only).
  const shown = JSON.stringify([other, 'client-7']);
  const found = await (await fetch(`${two.admin}/decisions?consumer=${encodeURIComponent(shown)}`)).json() as { decisions: { issuer: string; consumer: string }[] };
  t.same(found.decisions.map((d) => [d.issuer, d.consumer]), [[other, 'client-7']], 'that issuer\'s client-7 only (it found nothing)');
  const spaced = await (await fetch(`${two.admin}/decisions?consumer=${encodeURIComponent(`["${other}", "client-7"]`)}`)).json() as { decisions: unknown[] };
  t.equal(spaced.decisions.length, 1, 'however spaced');
  const plain = await (await fetch(`${two.admin}/decisions?consumer=client-7`)).json() as { decisions: unknown[] };
  t.equal(plain.decisions.length, 2, 'the plain subject: from every issuer');
});
