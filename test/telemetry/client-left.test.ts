// A client that leaves while its decision is being made (here: the keys of a rotated signing
// key being fetched from a slow identity provider). The decision is still made and recorded as
// it was, with status 0 (the client got nothing); before, the close itself was recorded, as a
// made-up `deny` / `internal-error`, which an alert on internal errors then paged for. With
// the credential lifecycle, a write whose caller left before forwarding frees its
// idempotency key (nothing reached the upstream), and a body whose caller left is not waited for.

import t, { type Test } from 'tap';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { testKey, jwks, token } from '../support/keys.ts';
import { upstream, jwksServer, type Upstream } from '../support/servers.ts';
import { baseRules, AGENT } from '../support/driftguard.ts';
import { startWithTelemetry, eventually } from './support.ts';
import { parsePrometheus, sample } from './prometheus.ts';
import { startLifecycle, bearer, monitorsOnly, ALL_SCOPES } from '../lifecycle/support.ts';
import { matchEach } from '../support/lists.ts';

/** Send `request` and hang up after `ms`, before any answer. */
function leaveAfter(port: number, request: string, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => { s.write(request); setTimeout(() => { s.destroy(); resolve(); }, ms); });
    s.on('error', () => resolve());
  });
}

/**
 * A driftguard made by `start` from rules (patched by `patch`), and a token signed by a key its
 * JWKS publishes only from now on, and 800 ms late: a request with it waits for the keys.
 */
async function slowRotation<D extends { close(): Promise<unknown> }>(t: Test, patch: (r: Record<string, any>) => void, start: (rules: Record<string, any>) => Promise<D>): Promise<{ up: Upstream; dg: D; tok: string }> {
  const [key, rotated] = [await testKey('ES256'), await testKey('ES256')];
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  t.teardown(async () => { await up.close(); await keys.close(); });
  const dg = await start(baseRules(up.origin, keys.url, (r) => {
    Object.assign(r.identity.issuers[0].jwks, { cooldown: '1s', timeout: '5s' });
    patch(r);
  }));
  t.teardown(() => dg.close());
  await new Promise((r) => setTimeout(r, 1_100)); // past the cooldown: an unknown kid refetches
  keys.body = jwks(key, rotated);
  keys.delayMs = 800;
  return { up, dg, tok: await token({ key: rotated, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09' }) };
}

const lifecycleOnly = (monitors: Record<string, unknown>) => (r: Record<string, any>) => {
  r.credentials = { taskBindingAt: 'never' };
  r.monitors = monitorsOnly(monitors);
};

t.test('the decision is recorded as made, with status 0, not as an internal-error deny', async (t) => {
  const { up, dg, tok } = await slowRotation(t, (r) => { r.telemetry = { traces: { exporter: 'none' } }; }, startWithTelemetry);
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  await leaveAfter(port, `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n\r\n`, 200);
  const metrics = async () => parsePrometheus(await (await fetch(`${dg.admin}/metrics`)).text());
  await eventually('the decision to be counted', async () => (sample(await metrics(), 'driftguard_decisions_total', { decision: 'allow', reason: 'allowed' }) ?? 0) === 1);
  t.equal(sample(await metrics(), 'driftguard_decisions_total', { decision: 'deny', reason: 'internal-error' }), undefined, 'no internal-error was counted');
  t.equal(up.seen.length, 0, 'nothing was forwarded for a client that had left');
  t.equal(sample(await metrics(), 'driftguard_upstream_duration_seconds_count') ?? 0, 0, 'no upstream call observed');
  const log = (await dg.stop()).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(log.length, 1);
  t.match(log[0], { decision: 'allow', reason: 'allowed', status: 0, operation: 'getItem' }, 'the log line is the decision, with status 0');
  t.notOk('upstreamMs' in log[0]!, 'and no upstream time: nothing was sent');
});

t.test('a drain waits for the decision of a client that left, so that shutdown flushes its record', async (t) => {
  const { dg, tok } = await slowRotation(t, (r) => { r.telemetry = { traces: { exporter: 'none' } }; }, startWithTelemetry);
  const port = (dg.dg.traffic.address() as AddressInfo).port;
  await leaveAfter(port, `GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\n\r\n`, 200);
  // A SIGTERM now: before, the drain found nothing in flight and the log was closed before the decision came.
  await dg.dg.drain(5_000);
  const log = (await dg.stop()).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  matchEach(t, log, [{ decision: 'allow', status: 0 }], 'the decision is in the flushed log');
});

t.test('an idempotent write whose caller left before forwarding frees its key', async (t) => {
  const { up, dg, tok } = await slowRotation(t, lifecycleOnly({ idempotency: { at: 'high', window: '1h' } }), startLifecycle);
  // Without a body, so that nothing is left to read once the caller is gone.
  await leaveAfter(Number(new URL(dg.url).port), `POST /items/1/archive HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nIdempotency-Key: k-1\r\nContent-Length: 0\r\n\r\n`, 200);
  // Decided, and its forwarding over (nothing sent: the caller had left), which frees the key.
  // A fixed 100 ms after the decision could come before that end on a busy machine.
  await eventually('the forwarding to end', async () => dg.seen.length === 1 && dg.seen[0]!.decision !== undefined && dg.seen[0]!.forwarded !== undefined);
  t.equal(dg.seen[0]!.decision!.decision, 'allow', 'the write was allowed');
  const retry = await fetch(`${dg.url}/items/1/archive`, { method: 'POST', headers: bearer(tok, { 'idempotency-key': 'k-1' }) });
  await retry.text();
  // Before: the key stayed reserved (in flight) for good, and every retry was a duplicate-write.
  t.equal(retry.status, 200, 'the retry is forwarded: the first attempt never reached the upstream');
  t.equal(up.seen.length, 1, 'the upstream got the write once');
});

t.test('a body whose caller left is not waited for until monitors.bodyTimeout', async (t) => {
  const { up, dg, tok } = await slowRotation(t, lifecycleOnly({ bodyTimeout: '30s', retryStorm: { maxRepeats: 5, window: '1m' } }), startLifecycle);
  const body = '{"name":"a"}';
  await leaveAfter(Number(new URL(dg.url).port), `POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tok}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`, 200);
  // Before: the read waited for events that never come, the whole 30 s.
  await eventually('the decision to be made, once the keys came (not at the 30 s read)', async () => dg.seen[0]?.decision !== undefined, 5_000);
  t.match(dg.seen[0]!.decision, { decision: 'deny', reason: 'malformed-request' }, 'a body that could not be read, as for any cut body');
  t.equal(up.seen.length, 0);
});
