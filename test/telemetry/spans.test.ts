// Every decision is one SERVER span, exported over real OTLP/HTTP to a receiver on loopback:
// name, kind, HTTP and driftguard.* attributes, one event per check, status, and the
// caller's trace continued through driftguard to the upstream and back (traceresponse).

import t from 'tap';
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:http';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { baseRules, writeRules, AGENT, BOT } from '../support/driftguard.ts';
import { loadRules } from '../../proxy/rules/load.ts';
import { raw, get } from '../support/raw.ts';
import { parsePrometheus, sample } from './prometheus.ts';
import { collector, startWithTelemetry, traceparent, randomHex, KIND, STATUS, type ExportedSpan } from './support.ts';
import type { Observer } from '../../proxy/observe.ts';

const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
const otlp = await collector();
// Stands in for another feature module (credential lifecycle) that records decision attributes.
const extra: Observer = {
  begin(ctx) {
    ctx.extra['delegation.chain'] = ['spiffe://test.local/ns/app/sa/orchestrator', AGENT];
    ctx.extra['task.id'] = 'task-42';
    ctx.extra['not a valid key'] = 'ignored';
    ctx.extra['object.value'] = { ignored: true };
    return { upstreamHeaders() {}, responseHeaders() {}, decided() {}, forwarding() {}, forwarded() {}, end() {} };
  },
};
const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
  r.telemetry = { traces: { endpoint: otlp.url, serviceName: 'driftguard-test', batch: { scheduledDelay: '50ms' } } };
}), {}, extra);
const tokens: string[] = [];
const mint = async (o: Parameters<typeof token>[0]) => { const tok = await token(o); tokens.push(tok); return tok; };
t.teardown(async () => { await dg.stop(); await up.close(); await keys.close(); await otlp.close(); });

interface Call {
  method?: string;
  path: string;
  tok?: string;
  headers?: Record<string, string>;
}

/** Make a call with a fresh caller trace; return the response, its problem body and the exported server span. */
async function call(c: Call) {
  const traceId = randomHex(16);
  const parent = randomHex(8);
  const headers: Record<string, string> = { traceparent: traceparent(traceId, parent), tracestate: 'vendor=abc', ...c.headers };
  if (c.tok) headers.authorization = `Bearer ${c.tok}`;
  const res = await fetch(dg.url + c.path, { method: c.method ?? 'GET', headers, ...(c.method === 'POST' ? { body: '{}' } : {}) });
  const text = await res.text();
  const span = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  return { res, text, body: res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : undefined, span, traceId, parent };
}

function events(span: ExportedSpan): string[] {
  return span.events.map((e) => `${e.name}:${e.attributes['driftguard.check.outcome']}${e.attributes['driftguard.check.reason'] ? ':' + e.attributes['driftguard.check.reason'] : ''}`);
}

t.test('allow: server span continues the caller trace, client span parents the upstream request', async (t) => {
  const tok = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const before = up.seen.length;
  const { res, span, traceId, parent } = await call({ path: '/items/7?secret=should-not-appear', tok });
  t.equal(res.status, 200);
  t.equal(span.name, 'GET /items/{id}');
  t.equal(span.kind, KIND.SERVER);
  t.equal(span.parentSpanId, parent, 'the caller\'s span is the parent');
  t.equal(span.status.code, STATUS.UNSET);
  t.notOk('driftguard.cut' in span.attributes, 'a whole answer was not cut');
  t.equal(span.resource['service.name'], 'driftguard-test');
  const a = span.attributes;
  t.match(a, {
    'http.request.method': 'GET', 'url.path': '/items/7', 'url.scheme': 'http', 'http.route': '/items/{id}',
    'http.response.status_code': 200, 'server.address': '127.0.0.1',
    'driftguard.decision': 'allow', 'driftguard.enforced': true, 'driftguard.reason': 'allowed',
    'driftguard.operation': 'getItem', 'driftguard.sensitivity': 'low', 'driftguard.deprecated': false,
    'driftguard.consumer': AGENT, 'driftguard.consumer.kind': 'automation', 'driftguard.consumer.owner': 'team-app',
    'driftguard.consumer.registered': true, 'driftguard.issuer': 'https://issuer.test.local',
    'driftguard.contract.declared': '2026-09', 'driftguard.contract.current': '2026-09',
    'driftguard.rules.hash': dg.dg.generation.rules.hash,
    'driftguard.delegation.chain': ['spiffe://test.local/ns/app/sa/orchestrator', AGENT],
    'driftguard.task.id': 'task-42',
  });
  t.equal(typeof a['driftguard.token.jti'], 'string', 'the token id, not the token');
  t.notOk('url.query' in a, 'no query string on the span');
  t.notOk(Object.keys(a).some((k) => k.includes('not a valid key') || k.includes('object.value')), 'invalid extra entries are left out');
  t.equal(typeof a['server.port'], 'number');
  t.same(events(span), ['canonical-path:continue', 'operation:continue', 'sunset:continue', 'credential:continue', 'consumer:continue', 'scopes:continue', 'declared-operations:continue', 'contract:continue', 'deprecation:continue', 'dates:continue']);

  const client = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
  t.equal(client.parentSpanId, span.spanId, 'the CLIENT span is a child of the SERVER span');
  t.match(client.attributes, { 'http.request.method': 'GET', 'server.address': '127.0.0.1', 'server.port': up.port, 'http.response.status_code': 200, 'url.full': `${up.origin}/items/7` });
  t.equal(client.status.code, STATUS.UNSET);
  t.equal(span.traceState, 'vendor=abc', 'the SERVER span carries the caller\'s trace state');
  t.equal(client.traceState, 'vendor=abc', 'and so does the CLIENT span');

  const seen = up.seen.slice(before);
  t.equal(seen.length, 1);
  t.equal(seen[0]!.headers.traceparent, traceparent(traceId, client.spanId), 'the upstream gets one traceparent: same trace, the client span as parent');
  t.equal(seen[0]!.headers.tracestate, 'vendor=abc', 'tracestate is carried on');
  t.equal(res.headers.get('traceresponse'), traceparent(traceId, span.spanId), 'traceresponse names the trace and the span that answered');
});

t.test('a request without traceparent starts a new trace and still gets traceresponse', async (t) => {
  const res = await fetch(dg.url + '/status');
  await res.text();
  const tr = res.headers.get('traceresponse');
  t.match(tr, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  const span = await otlp.waitFor((s) => s.traceId === tr!.split('-')[1] && s.kind === KIND.SERVER);
  t.equal(span.parentSpanId, undefined, 'a root span');
  t.equal(span.attributes['driftguard.decision'], 'allow');
  t.equal(span.attributes['driftguard.operation'], 'status');
  t.notOk('driftguard.consumer' in span.attributes, 'a public operation has no consumer');
});

t.test('under a new trace the caller\'s tracestate is not sent upstream (W3C Trace Context §3.3)', async (t) => {
  const valid = traceparent(randomHex(16), randomHex(8));
  for (const [name, parent] of [
    ['no traceparent', undefined],
    ['uppercase hex', valid.toUpperCase().replace(/^00/, '00')],
    ['all-zero trace id', `00-${'0'.repeat(32)}-${randomHex(8)}-01`],
    ['version ff', valid.replace(/^00/, 'ff')],
  ] as const) {
    const before = up.seen.length;
    const res = await fetch(dg.url + '/status', { headers: { ...(parent ? { traceparent: parent } : {}), tracestate: 'congo=t61rcWkgMzE' } });
    await res.text();
    const seen = up.seen[before]!;
    t.notOk(seen.headers.tracestate, `${name}: the vendor state of another trace is dropped (before: sent with the new traceparent)`);
    t.match(seen.headers.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, `${name}: a new traceparent`);
  }
  const res = await fetch(dg.url + '/status', { headers: { traceparent: valid, tracestate: 'congo=t61rcWkgMzE' } });
  await res.text();
  t.equal(up.seen.at(-1)!.headers.tracestate, 'congo=t61rcWkgMzE', 'a continued trace keeps it');
});

t.test('warn: deprecated operation and stale contract are forwarded and recorded as warn', async (t) => {
  const tok = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const dep = await call({ path: '/search', tok });
  t.equal(dep.res.status, 200);
  t.match(dep.span.attributes, { 'driftguard.decision': 'warn', 'driftguard.reason': 'deprecated-operation', 'driftguard.operation': 'oldSearch', 'driftguard.deprecated': true, 'driftguard.replacement': 'listItems', 'driftguard.warnings': ['deprecated-operation'], 'http.response.status_code': 200 });
  t.same(events(dep.span).slice(-2), ['deprecation:warn:deprecated-operation', 'dates:continue'], 'the deprecation warned; the dates, looked at again last, held');
  t.equal(dep.span.status.code, STATUS.UNSET);

  const old = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-06' });
  const stale = await call({ path: '/items', tok: old });
  t.equal(stale.res.status, 200);
  t.match(stale.span.attributes, { 'driftguard.decision': 'warn', 'driftguard.reason': 'stale-contract', 'driftguard.contract.declared': '2026-06', 'driftguard.contract.current': '2026-09', 'driftguard.contract.changed_in': '2026-09' });
  t.equal(events(stale.span).at(-3), 'contract:warn:stale-contract');
});

t.test('each kind of deny: span, events, status and the problem body\'s traceId', async (t) => {
  const tok = (o: Partial<Parameters<typeof token>[0]> = {}) => mint({ key, sub: AGENT, scope: 'items.read items.write items.admin payments.write', contract: '2026-09', ...o });
  const cases: { reason: string; status: number; call: () => Promise<Call>; lastCheck: string; attrs?: Record<string, unknown> }[] = [
    { reason: 'unknown-operation', status: 403, lastCheck: 'operation', call: async () => ({ path: '/admin/users', tok: await tok() }) },
    { reason: 'operation-sunset', status: 410, lastCheck: 'sunset', call: async () => ({ path: '/legacy' }), attrs: { 'driftguard.operation': 'legacy', 'driftguard.sunset': '2025-06-01T00:00:00.000Z' } },
    { reason: 'missing-credential', status: 401, lastCheck: 'credential', call: async () => ({ path: '/items/1' }) },
    { reason: 'invalid-credential', status: 401, lastCheck: 'credential', call: async () => ({ path: '/items/1', tok: 'not.a.token' }) },
    { reason: 'credential-lifetime-exceeded', status: 401, lastCheck: 'credential', call: async () => ({ path: '/items/1', tok: await tok({ ttl: 86_400 }) }) },
    { reason: 'unknown-consumer', status: 403, lastCheck: 'consumer', call: async () => ({ path: '/items/1', tok: await tok({ sub: 'spiffe://test.local/ns/x/sa/stranger' }) }), attrs: { 'driftguard.consumer': 'spiffe://test.local/ns/x/sa/stranger', 'driftguard.consumer.registered': false } },
    { reason: 'insufficient-scope', status: 403, lastCheck: 'scopes', call: async () => ({ method: 'POST', path: '/items', tok: await tok({ scope: 'items.read' }) }) },
    { reason: 'undeclared-operation', status: 403, lastCheck: 'declared-operations', call: async () => ({ method: 'POST', path: '/items', tok: await tok({ sub: BOT }) }), attrs: { 'driftguard.consumer.owner': 'team-ops' } },
    { reason: 'contract-version-required', status: 400, lastCheck: 'contract', call: async () => ({ path: '/items/1', tok: await tok({ contract: undefined }) }) },
    { reason: 'unknown-contract-version', status: 400, lastCheck: 'contract', call: async () => ({ path: '/items/1', tok: await tok({ contract: '1999-01' }) }) },
    { reason: 'stale-contract', status: 409, lastCheck: 'contract', call: async () => ({ method: 'POST', path: '/payments', tok: await tok({ contract: '2026-06' }) }), attrs: { 'driftguard.sensitivity': 'critical', 'driftguard.contract.declared': '2026-06', 'driftguard.contract.changed_in': '2026-09' } },
    { reason: 'deprecated-operation', status: 403, lastCheck: 'deprecation', call: async () => ({ method: 'DELETE', path: '/items/1', tok: await tok({ sub: BOT }) }), attrs: { 'driftguard.deprecated': true, 'driftguard.sunset': '2099-01-01T00:00:00.000Z', 'driftguard.replacement': 'archiveItem' } },
  ];
  for (const c of cases) {
    const before = up.seen.length;
    const r = await call(await c.call());
    t.equal(r.res.status, c.status, `${c.reason}: status`);
    t.equal(r.body?.code, c.reason, `${c.reason}: problem code`);
    t.equal(r.body?.traceId, r.traceId, `${c.reason}: the problem body carries the caller's trace id`);
    t.equal(r.res.headers.get('traceresponse'), traceparent(r.traceId, r.span.spanId), `${c.reason}: traceresponse`);
    t.equal(r.span.kind, KIND.SERVER);
    t.equal(r.span.parentSpanId, r.parent);
    t.match(r.span.attributes, { 'driftguard.decision': 'deny', 'driftguard.enforced': true, 'driftguard.reason': c.reason, 'http.response.status_code': c.status, ...c.attrs }, `${c.reason}: attributes`);
    t.equal(r.span.status.code, STATUS.UNSET, `${c.reason}: a deny is a decision, not a span error`);
    const ev = events(r.span);
    t.equal(ev[0], 'canonical-path:continue');
    t.equal(ev.at(-1), `${c.lastCheck}:deny:${c.reason}`, `${c.reason}: the last event is the check that denied`);
    t.equal(up.seen.length, before, `${c.reason}: nothing reached the upstream`);
    t.notOk(otlp.spans.some((s) => s.traceId === r.traceId && s.kind === KIND.CLIENT), `${c.reason}: no CLIENT span`);
  }
});

t.test('malformed request: denied before any other check, still traced', async (t) => {
  const traceId = randomHex(16);
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  const res = await raw(port, get('/items/../admin', [`traceparent: ${traceparent(traceId, randomHex(8))}`]));
  t.equal(res.status, 400);
  t.equal(res.json().traceId, traceId);
  const span = await otlp.waitFor((s) => s.traceId === traceId);
  t.match(span.attributes, { 'driftguard.decision': 'deny', 'driftguard.reason': 'malformed-request', 'http.response.status_code': 400 });
  t.same(events(span), ['canonical-path:deny:malformed-request']);
  t.equal(span.name, 'GET', 'no route: the span is named by the method alone');
});

t.test('a fragment in the target (an implicit-flow token): refused, and recorded without it', async (t) => {
  const traceId = randomHex(16);
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  const res = await raw(port, get('/items/7#access_token=FRAGMENT-SECRET', [`traceparent: ${traceparent(traceId, randomHex(8))}`]));
  t.equal(res.status, 400);
  t.notMatch(res.body, 'FRAGMENT-SECRET', 'not in the answer');
  const span = await otlp.waitFor((s) => s.traceId === traceId);
  t.equal(span.attributes['url.path'], '/items/7#(redacted)', 'the span has the path, the fragment replaced');
  const recent = await (await fetch(`${dg.admin}/decisions?limit=1000`)).text();
  t.notMatch(recent, 'FRAGMENT-SECRET', 'not in /decisions');
  // The decision log and every log line: the test "no token, query string …" below.
});

t.test('a method outside the known set: the span is named HTTP, the method recorded as _OTHER and as sent', async (t) => {
  const traceId = randomHex(16);
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  const res = await raw(port, get('/items/1', [`traceparent: ${traceparent(traceId, randomHex(8))}`], 'PROPFIND'));
  t.equal(res.json().traceId, traceId, 'decided and traced');
  const span = await otlp.waitFor((s) => s.traceId === traceId);
  t.equal(span.name, 'HTTP', 'the semantic conventions\' name: `_OTHER` would read as a method');
  t.match(span.attributes, { 'http.request.method': '_OTHER', 'http.request.method_original': 'PROPFIND' });
});

t.test('upstream down: 502, the server span is an error, the client span records the failure', async (t) => {
  const down = await upstream();
  await down.close();
  const other = await startWithTelemetry(baseRules(down.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(() => other.stop());
  const traceId = randomHex(16);
  const res = await fetch(other.url + '/status', { headers: { traceparent: traceparent(traceId, randomHex(8)) } });
  const body = await res.json() as { code: string; traceId: string };
  t.equal(res.status, 502);
  t.equal(body.code, 'upstream-unavailable');
  t.equal(body.traceId, traceId);
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(server.status.code, STATUS.ERROR);
  t.equal(server.attributes['http.response.status_code'], 502);
  t.equal(server.attributes['error.type'], '502');
  t.equal(server.attributes['driftguard.decision'], 'allow', 'the decision was allow; forwarding failed');
  t.equal(server.attributes['driftguard.reason'], 'upstream-unavailable', 'the reason is the forward stage\'s, as the caller got it');
  t.equal(server.status.message, 'upstream-unavailable');
  t.match(server.attributes['driftguard.detail'], /could not be reached \(ECONNREFUSED\)/);
  t.match(body, { detail: /could not be reached \(ECONNREFUSED\)/ }, 'the problem says the same');
  const client = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
  t.equal(client.status.code, STATUS.ERROR);
  t.equal(client.attributes['error.type'], 'upstream-unavailable');
  // An unsampled trace's allow whose forward failed is exported all the same, and its 502 says so.
  const quiet = randomHex(16);
  const unsampled = await fetch(other.url + '/status', { headers: { traceparent: traceparent(quiet, randomHex(8), false) } });
  await unsampled.text();
  t.equal(unsampled.status, 502);
  const recorded = await otlp.waitFor((s) => s.traceId === quiet && s.kind === KIND.SERVER);
  t.equal(unsampled.headers.get('traceresponse'), `00-${quiet}-${recorded.spanId}-01`, 'traceresponse: recorded (before: -00, set when it was decided)');
  const line = (await other.stop()).split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.traceId === traceId);
  t.match(line, { decision: 'allow', reason: 'upstream-unavailable', status: 502, detail: /ECONNREFUSED/ }, 'the decision log finds it by its reason');
});

t.test('an answer cut because reloaded rules refuse it: the record says why, and the span is no error (driftguard enforcing, not failing)', async (t) => {
  const streams = await upstream();
  streams.handler = (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/event-stream' }); res.write('data: 1\n\n'); };
  const withAgent = (keep: boolean) => baseRules(streams.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
    if (!keep) r.consumers.registry = r.consumers.registry.filter((c: { subject: string }) => c.subject !== AGENT);
  });
  const other = await startWithTelemetry(withAgent(true));
  t.teardown(async () => { await other.stop(); await streams.close(); });
  const traceId = randomHex(16);
  const res = await fetch(other.url + '/items/1', { headers: { traceparent: traceparent(traceId, randomHex(8)), authorization: `Bearer ${await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' })}` } });
  t.equal(res.status, 200);
  const reader = res.body!.getReader();
  await reader.read();
  await other.dg.swap(loadRules(writeRules(withAgent(false))));
  await reader.read().then(async () => { for (;;) if ((await reader.read()).done) break; }, () => {});
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(server.attributes['driftguard.cut'], 'reload');
  t.equal(server.attributes['driftguard.cut.reason'], 'unknown-consumer', 'the refusal\'s reason (before: only in an aggregate log line)');
  t.equal(server.status.code ?? STATUS.UNSET, STATUS.UNSET, 'not an error (before: ERROR, error.type reload)');
  t.notOk('error.type' in server.attributes);
  const line = (await other.stop()).trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.traceId === traceId);
  t.match(line, { decision: 'allow', cut: 'reload', 'cut.reason': 'unknown-consumer' }, 'the decision log says the same');
});

t.test('identity unavailable: the JWKS is down, 503 with its span, an error status and the credential event', async (t) => {
  const deadKeys = await jwksServer(jwks(key));
  deadKeys.down = true;
  const other = await startWithTelemetry(baseRules(up.origin, deadKeys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
    r.identity.issuers[0].jwks.timeout = '200ms';
  }));
  t.teardown(async () => { await other.stop(); await deadKeys.close(); });
  const tok = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const traceId = randomHex(16);
  const before = up.seen.length;
  const res = await fetch(other.url + '/items/1', { headers: { traceparent: traceparent(traceId, randomHex(8)), authorization: `Bearer ${tok}` } });
  const body = await res.json() as { code: string; traceId: string };
  t.equal(res.status, 503);
  t.equal(body.code, 'identity-unavailable');
  t.equal(body.traceId, traceId);
  t.equal(up.seen.length, before, 'never forwarded');
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(server.attributes['driftguard.decision'], 'deny');
  t.equal(server.attributes['driftguard.reason'], 'identity-unavailable');
  t.equal(server.attributes['http.response.status_code'], 503);
  t.equal(server.status.code, STATUS.ERROR, 'a 5xx answer is an error on the server span');
  t.equal(events(server).at(-1), 'credential:deny:identity-unavailable', 'the last event says why');
});

t.test('audit mode: a would-deny is forwarded and recorded as an unenforced deny', async (t) => {
  const audit = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.proxy.mode = 'audit';
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(() => audit.stop());
  const traceId = randomHex(16);
  const res = await fetch(audit.url + '/items/1', { headers: { traceparent: traceparent(traceId, randomHex(8)) } });
  await res.text();
  t.equal(res.status, 200);
  const span = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.match(span.attributes, { 'driftguard.decision': 'deny', 'driftguard.enforced': false, 'driftguard.reason': 'missing-credential', 'http.response.status_code': 200 });
  t.equal(events(span).at(-1), 'credential:would-deny:missing-credential');
});

t.test('an unsampled caller trace is continued unsampled: nothing exported, context still propagated', async (t) => {
  const traceId = randomHex(16);
  const before = up.seen.length;
  const res = await fetch(dg.url + '/status', { headers: { traceparent: traceparent(traceId, randomHex(8), false) } });
  await res.text();
  t.match(res.headers.get('traceresponse'), new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
  t.match(up.seen[before]!.headers.traceparent, new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
  // Another sampled request's span arriving shows the exporter has flushed past this one.
  const marker = randomHex(16);
  await (await fetch(dg.url + '/status', { headers: { traceparent: traceparent(marker, randomHex(8)) } })).text();
  await otlp.waitFor((s) => s.traceId === marker);
  t.notOk(otlp.spans.some((s) => s.traceId === traceId), 'the unsampled trace was not exported');
});

t.test('an unsampled caller\'s refusal and warning are exported all the same: its sampled flag cannot hide them from an incident\'s trace', async (t) => {
  // A client whose own tracer samples 1% sends -00 on the other 99%: before, none of their
  // denials had a span. The flag still goes upstream as it came; traceresponse says the span
  // was recorded (W3C Trace Context Level 2: the caller may keep its side by it).
  const tok = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  const cases = [
    ['a denial', '/items/1', undefined, 'deny'],
    ['a warning (deprecated operation, forwarded)', '/search', tok, 'warn'],
  ] as const;
  for (const [what, path, bearerToken, decision] of cases) {
    const traceId = randomHex(16);
    const before = up.seen.length;
    const res = await fetch(dg.url + path, { headers: { traceparent: traceparent(traceId, randomHex(8), false), ...(bearerToken ? { authorization: `Bearer ${bearerToken}` } : {}) } });
    await res.text();
    const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
    t.equal(res.headers.get('traceresponse'), `00-${traceId}-${server.spanId}-01`, `${what}: traceresponse says driftguard recorded its span (before: -00)`);
    t.equal(server.attributes['driftguard.decision'], decision, `${what}: exported (before: dropped with the caller's flag)`);
    if (decision === 'warn') {
      t.match(up.seen[before]!.headers.traceparent, new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`), `${what}: the upstream gets the flag as it came`);
      const client = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
      t.equal(client.parentSpanId, server.spanId, `${what}: with its CLIENT span`);
    }
  }
});

t.test('an IPv6 address is recorded without its brackets, on both spans (semantic conventions: server.address is the address)', async (t) => {
  // SERVER span: the address the caller reached driftguard at, from Host.
  const traceId = randomHex(16);
  const port = Number(new URL(dg.url).port);
  const res = await raw(port, `GET /status HTTP/1.1\r\nHost: [::1]:8443\r\ntraceparent: ${traceparent(traceId, randomHex(8))}\r\nConnection: close\r\n\r\n`);
  t.equal(res.status, 200);
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(server.attributes['server.address'], '::1', 'not [::1]');
  t.equal(server.attributes['server.port'], 8443);

  // CLIENT span: an upstream at an IPv6 address, on ::1.
  const v6 = createServer((_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end('{}'); });
  await new Promise<void>((resolve) => v6.listen(0, '::1', resolve));
  const v6Port = (v6.address() as AddressInfo).port;
  const dg6 = await startWithTelemetry(baseRules(`http://[::1]:${v6Port}`, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, serviceName: 'driftguard-v6', batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(async () => { await dg6.stop(); await new Promise((resolve) => v6.close(resolve)); });
  const traceId6 = randomHex(16);
  const r6 = await fetch(dg6.url + '/status', { headers: { traceparent: traceparent(traceId6, randomHex(8)) } });
  await r6.text();
  t.equal(r6.status, 200, 'forwarded to the IPv6 upstream');
  const client = await otlp.waitFor((s) => s.traceId === traceId6 && s.kind === KIND.CLIENT);
  t.equal(client.attributes['server.address'], '::1', 'not [::1]');
  t.equal(client.attributes['server.port'], v6Port);
  t.equal(client.attributes['url.full'], `http://[::1]:${v6Port}/status`, 'the URL keeps its brackets');
});

t.test('a credential in the Host header is not recorded as server.address (a refusal is exported whatever the sampler says)', async (t) => {
  const port = Number(new URL(dg.url).port);
  const opaque = 'ghp_opaqueHostSecret0123456789abcdef';
  const jwt = await mint({ key, sub: AGENT, scope: 'items.read', contract: '2026-09' });
  for (const [host, status, secret] of [
    // userinfo a client copied from a URL's authority: no host, refused (400)
    [`${opaque}@api.example.com`, 400, opaque],
    // a JWT is three dotted labels of a valid host name: forwarded, and recorded replaced
    [jwt, 200, jwt.split('.')[1]!.slice(0, 40)],
  ] as const) {
    const traceId = randomHex(16);
    const res = await raw(port, `GET /items/1 HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${jwt}\r\ntraceparent: ${traceparent(traceId, randomHex(8))}\r\nConnection: close\r\n\r\n`);
    t.equal(res.status, status);
    const span = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
    t.notOk(JSON.stringify(span).includes(secret), `no part of the credential in the span (server.address ${String(span.attributes['server.address']).slice(0, 40)})`);
  }
});

t.test('no token, query string or Authorization value in anything driftguard wrote', async (t) => {
  const decisionLog = await dg.stop();
  t.ok(decisionLog.length > 0, 'the decision log was written');
  const everything = [decisionLog, ...dg.logs, ...otlp.bodies].join('\n');
  t.ok(tokens.length >= 10);
  for (const tok of tokens) {
    t.notOk(everything.includes(tok), 'token absent');
    // The signature alone would be just as bad.
    t.notOk(everything.includes(tok.split('.')[2]!), 'token signature absent');
  }
  t.notOk(everything.includes('not.a.token'), 'even an invalid token is not echoed');
  t.notOk(everything.includes('should-not-appear'), 'the query string is not recorded');
  t.notOk(everything.includes('FRAGMENT-SECRET'), 'nor a fragment');
});

t.test('a client that leaves before any answer: status 0 in the log, no status code on the span, the upstream call aborted', async (t) => {
  const slow = await upstream();
  let upstreamGotIt!: () => void;
  const reached = new Promise<void>((r) => { upstreamGotIt = r; });
  slow.handler = (req) => { req.resume(); upstreamGotIt(); /* never answers */ };
  const other = await startWithTelemetry(baseRules(slow.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(async () => { await other.stop(); await slow.close(); });
  const traceId = randomHex(16);
  const gone = new AbortController();
  const res = fetch(other.url + '/status', { headers: { traceparent: traceparent(traceId, randomHex(8)) }, signal: gone.signal });
  await reached;
  gone.abort();
  await res.catch(() => { /* the test's own abort: nothing of driftguard's to assert here */ });
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.notOk('http.response.status_code' in server.attributes, 'no status code: there was no response');
  t.equal(server.attributes['driftguard.decision'], 'allow');
  const client = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
  t.equal(client.attributes['error.type'], 'client closed', 'the upstream call is recorded as cut by the client');
  const line = (await other.stop()).trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.traceId === traceId);
  t.equal(line?.status, 0, 'the decision log says no answer, not 200');
});

t.test('a client that leaves mid-download: the upstream call is recorded as cut by the client, not as an upstream error', async (t) => {
  const endless = await upstream();
  endless.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    const more = setInterval(() => { if (res.destroyed) clearInterval(more); else res.write('x'.repeat(1000)); }, 10);
  };
  const other = await startWithTelemetry(baseRules(endless.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(async () => { await other.stop(); await endless.close(); });
  const traceId = randomHex(16);
  const gone = new AbortController();
  const res = await fetch(other.url + '/status', { headers: { traceparent: traceparent(traceId, randomHex(8)) }, signal: gone.signal });
  t.equal(res.status, 200);
  await res.body!.getReader().read();
  gone.abort();
  const client = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.CLIENT);
  t.equal(client.attributes['error.type'], 'client closed', 'cut by the client (was UNKNOWN: the abort reached undici first)');
  t.equal(client.attributes['http.response.status_code'], 200, 'after the upstream\'s 200');
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(server.attributes['driftguard.cut'], 'client', 'the server span says the answer was cut, by the client');
  t.equal(server.status.code ?? STATUS.UNSET, STATUS.UNSET, 'a client that leaves is no error of the server');
  t.notOk('error.type' in server.attributes);
  const metrics = parsePrometheus(await (await fetch(`${other.admin}/metrics`)).text());
  t.equal(sample(metrics, 'driftguard_answers_cut_total', { by: 'client' }), 1, 'counted as cut by the client');
  const line = (await other.stop()).trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.traceId === traceId);
  t.match(line, { status: 200, cut: 'client', decision: 'allow' }, 'the decision log says the 200 was cut');
});

t.test('an upstream that fails mid-body: the record keeps its status and says the answer was cut, the server span is an error', async (t) => {
  const failing = await upstream();
  failing.handler = (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100000' });
    res.write('x'.repeat(1000));
    setTimeout(() => res.socket?.destroy(), 100);
  };
  const other = await startWithTelemetry(baseRules(failing.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }));
  t.teardown(async () => { await other.stop(); await failing.close(); });
  const traceId = randomHex(16);
  const res = await fetch(other.url + '/status', { headers: { traceparent: traceparent(traceId, randomHex(8)) } });
  t.equal(res.status, 200, 'the head had gone out with the first body bytes');
  await t.rejects(res.text(), 'the client sees a truncated answer');
  const server = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(server.attributes['http.response.status_code'], 200);
  t.type(server.attributes['driftguard.cut'], 'string');
  t.match(server.attributes['driftguard.cut'], /^(UND_ERR_SOCKET|ECONNRESET)$/, 'cut by the upstream, named by its error');
  t.equal(server.attributes['error.type'], server.attributes['driftguard.cut'], 'error.type names the error');
  t.equal(server.status.code, STATUS.ERROR, 'the caller did not get the whole answer: an error');
  const metrics = parsePrometheus(await (await fetch(`${other.admin}/metrics`)).text());
  t.equal(sample(metrics, 'driftguard_answers_cut_total', { by: 'upstream' }), 1, 'counted as cut by the upstream');
  t.equal(sample(metrics, 'driftguard_answers_cut_total', { by: 'client' }), undefined);
  const line = (await other.stop()).trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.traceId === traceId);
  t.match(line, { status: 200, cut: server.attributes['driftguard.cut'], decision: 'allow' });
});
