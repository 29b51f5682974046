// Fail closed: an exception anywhere on the decision path denies with 500 internal-error
// (in audit mode too) and nothing reaches the upstream; a defect while writing an answer is
// a 500 and a log line, never a crashed process. The faults are injected through the seams
// the server offers (a check's long-lived state, an observer): no real part fails on demand.

import t from 'tap';
import { world, keys, assertDenied } from './world.ts';
import { upstream, jwksServer } from '../support/servers.ts';
import { jwks } from '../support/keys.ts';
import { baseRules } from '../support/driftguard.ts';
import { collector, startWithTelemetry, traceparent, randomHex, KIND } from '../telemetry/support.ts';
import type { Observer } from '../../proxy/observe.ts';
import type { LifecycleState } from '../../proxy/lifecycle/state.ts';

// Revocation state whose lookup throws, as a defect in it would.
const broken = { revocations: { match() { throw new Error('revocation lookup failed: Bearer should-not-leak'); } } } as unknown as LifecycleState;
const revocationOn = (mode: 'enforce' | 'audit') => (r: Record<string, any>) => {
  r.proxy.mode = mode;
  r.revocation = { mode: 'enforce' };
  r.monitors = { kinds: [], quarantine: { mode: 'off' }, retryStorm: { mode: 'off' }, traversal: { mode: 'off' }, idempotency: { mode: 'off' } };
};

// An observer (telemetry, in production) that adds a header value Node refuses to write.
const badHeader: Observer = {
  begin: () => ({
    upstreamHeaders() {}, decided() {}, forwarding() {}, forwarded() {}, end() {},
    responseHeaders(into) { into['x-broken'] = 'line\nbreak'; },
  }),
};

for (const mode of ['enforce', 'audit'] as const) {
  t.test(`a check that throws denies with 500 internal-error (${mode} mode)`, async (t) => {
    const w = await world(t, revocationOn(mode), { deps: { lifecycle: broken } });
    const a = await w.call('GET', '/items/1', { token: await w.tok() });
    assertDenied(t, w, a, 500, 'internal-error');
    t.equal(a.json.detail, 'the revocation check failed');
    t.notOk(a.text.includes('should-not-leak'), 'the exception\'s message stays inside');
    t.notOk(a.headers.has('driftguard-warning'), 'enforced, not a would-deny');
  });
}

t.test('an answer that cannot be written is a 500 and a log line; the process goes on', async (t) => {
  const w = await world(t, () => {}, { observer: badHeader });
  const denied = await w.call('GET', '/items/1');
  t.equal(denied.status, 500, 'a denial whose answer could not be written');
  t.equal(denied.json?.code, 'internal-error');
  t.notOk(denied.headers.has('x-broken'));
  const allowed = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(allowed.status, 500, 'an allowed request whose answer could not be written');
  t.equal(allowed.json?.code, 'internal-error');
  const failures = w.logs.filter((l) => l.msg === 'request failed unexpectedly');
  t.ok(failures.length >= 2, 'each is logged');
  t.match(failures[0], { level: 'error', error: 'TypeError', code: 'ERR_INVALID_CHAR' });
  t.notOk(JSON.stringify(w.logs).includes('line\\nbreak'), 'the offending value is not logged');
  t.equal((await w.call('GET', '/status')).status, 500, 'still answering');
});

// An observer that loses the canonical target after the decision, as a defect elsewhere might.
const lostTarget: Observer = {
  begin: (ctx) => ({
    upstreamHeaders() {}, responseHeaders() {}, forwarding() {}, forwarded() {}, end() {},
    decided() { delete (ctx as { target?: unknown }).target; },
  }),
};

t.test('an allowed request without its canonical target is a 500, never forwarded to a guessed path', async (t) => {
  const w = await world(t, () => {}, { observer: lostTarget });
  const a = await w.call('GET', '/items/1', { token: await w.tok() });
  t.equal(a.status, 500, 'a defect of driftguard\'s (before: 502 upstream-unavailable, blaming the upstream for a path of "undefined" undici refused)');
  t.equal(a.json?.code, 'internal-error');
  t.equal(w.up.seen.length, 0, 'nothing reached the upstream');
});

t.test('with tracing on, that 500 names the trace, as internal-error tells the caller to report', async (t) => {
  const k = await keys();
  const up = await upstream();
  const keyServer = await jwksServer(jwks(k.es));
  const otlp = await collector();
  const dg = await startWithTelemetry(baseRules(up.origin, keyServer.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, batch: { scheduledDelay: '50ms' } } };
  }), {}, badHeader);
  t.teardown(async () => { await dg.stop(); await up.close(); await keyServer.close(); await otlp.close(); });
  const traceId = randomHex(16);
  const res = await fetch(dg.url + '/items/1', { headers: { traceparent: traceparent(traceId, randomHex(8)) } });
  const body = await res.json() as { code: string; traceId?: string };
  t.equal(res.status, 500);
  t.equal(body.code, 'internal-error');
  t.equal(body.traceId, traceId, 'the problem names the caller\'s trace');
  const logged = dg.logs.map((l) => JSON.parse(l)).find((l) => l.msg === 'request failed unexpectedly');
  t.equal(logged?.traceId, traceId, 'and so does the log line');
  const span = await otlp.waitFor((s) => s.traceId === traceId && s.kind === KIND.SERVER);
  t.equal(span.attributes['http.response.status_code'], 500, 'the span has the 500 the caller got');
});
