// Export never blocks or fails a request: with the collector down, hanging or refusing,
// requests keep succeeding and the lost spans are counted in driftguard_spans_dropped_total.

import t from 'tap';
import { createServer } from 'node:net';
import { testKey, jwks } from '../support/keys.ts';
import { upstream, jwksServer, listen, close } from '../support/servers.ts';
import { baseRules } from '../support/driftguard.ts';
import { collector, eventually, grpcCollector, startWithTelemetry } from './support.ts';
import { parsePrometheus, sample } from './prometheus.ts';

const key = await testKey('ES256');
const up = await upstream();
const keys = await jwksServer(jwks(key));
t.teardown(async () => { await up.close(); await keys.close(); });

async function dropped(admin: string, cause: string): Promise<number> {
  const text = await (await fetch(admin + '/metrics')).text();
  return sample(parsePrometheus(text), 'driftguard_spans_dropped_total', { cause }) ?? -1;
}

async function exported(admin: string): Promise<number> {
  const text = await (await fetch(admin + '/metrics')).text();
  return sample(parsePrometheus(text), 'driftguard_spans_exported_total', {}) ?? -1;
}

// OTLP's partial success: the collector answers 200 (gRPC OK) and names spans it rejected. The
// SDK only passes that to its diagnostic logger, and they were counted as exported.
for (const protocol of ['http/protobuf', 'http/json', 'grpc'] as const) {
  t.test(`a partial success over ${protocol}: the spans the collector rejected are counted dropped (rejected), not exported, and its message logged`, async (t) => {
    const otlp = protocol === 'grpc' ? await grpcCollector() : await collector();
    otlp.rejecting = { rejected: 1, message: 'span attribute\ntoo long' };
    t.teardown(() => otlp.close());
    const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
      r.telemetry = { traces: { endpoint: otlp.url, protocol, batch: { scheduledDelay: '20ms' } } };
    }));
    t.teardown(() => dg.stop());
    for (let i = 0; i < 6; i++) {
      const res = await fetch(dg.url + '/status');
      await res.text();
      t.equal(res.status, 200);
    }
    const sent = () => otlp.perRequest.reduce((a, b) => a + b, 0);
    // Every export request had one span rejected: those are dropped, the rest exported.
    await eventually('the spans of all six requests settled', async () => otlp.spans.filter((s) => s.kind === 2).length === 6
      && (await exported(dg.admin)) + (await dropped(dg.admin, 'rejected')) === sent());
    t.ok(otlp.requests >= 1, 'the collector had export requests');
    t.equal(await dropped(dg.admin, 'rejected'), otlp.perRequest.filter((n) => n > 0).length, 'one span of each export request counted rejected');
    t.equal(await exported(dg.admin), sent() - otlp.requests, 'and not counted exported');
    t.equal(await dropped(dg.admin, 'export_failed'), 0, 'an answered export is no failed one');
    const line = dg.logs.find((l) => l.includes('the collector rejected'));
    t.match(line, /the collector rejected 1 of \d+ spans: span attribute too long/, 'the collector\'s message is logged, on one line');
  });
}

t.test('collector down (connection refused): requests succeed, spans counted as dropped', async (t) => {
  // A port that was just free: nothing listens there.
  const probe = createServer();
  const port = await listen(probe as never);
  await close(probe as never);
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: `http://127.0.0.1:${port}`, exportTimeout: '500ms', batch: { scheduledDelay: '20ms' } } };
  }));
  t.teardown(() => dg.stop());
  for (let i = 0; i < 20; i++) {
    const res = await fetch(dg.url + '/status');
    await res.text();
    t.equal(res.status, 200);
  }
  await eventually('dropped spans to be counted', async () => (await dropped(dg.admin, 'export_failed')) >= 20);
  t.ok(await dropped(dg.admin, 'export_failed') >= 20, 'every span was counted as dropped');
  t.ok(dg.logs.some((l) => l.includes('span export failed')), 'the failure is logged');
  t.ok(dg.logs.filter((l) => l.includes('span export failed')).length <= 1, 'and not once per batch');
});

t.test('collector hanging: requests succeed while the export waits; spans dropped after the export timeout', async (t) => {
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, exportTimeout: '300ms', batch: { scheduledDelay: '20ms', maxQueueSize: 4, maxExportBatchSize: 2 } } };
  }));
  t.teardown(() => dg.stop());
  // First request: its span goes out in an export the collector never answers.
  await (await fetch(dg.url + '/status')).text();
  await eventually('the collector to receive an export', async () => otlp.requests > 0);
  // While that export hangs, requests keep being answered, and the queue (4) overflows.
  for (let i = 0; i < 30; i++) {
    const res = await fetch(dg.url + '/status');
    await res.text();
    t.equal(res.status, 200);
  }
  t.ok(await dropped(dg.admin, 'queue_full') > 0, 'spans beyond the queue are dropped and counted at once');
  await eventually('the hanging export to time out and be counted', async () => (await dropped(dg.admin, 'export_failed')) > 0);
  t.pass('the timed-out export was counted');
});

t.test('collector answering 503: retried within the timeout, then dropped and counted; requests unaffected', async (t) => {
  const otlp = await collector();
  otlp.mode = 'refuse503';
  t.teardown(() => otlp.close());
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { endpoint: otlp.url, exportTimeout: '500ms', batch: { scheduledDelay: '20ms' } } };
  }));
  t.teardown(() => dg.stop());
  const res = await fetch(dg.url + '/status');
  await res.text();
  t.equal(res.status, 200);
  await eventually('the refused export to be counted', async () => (await dropped(dg.admin, 'export_failed')) >= 1);
  t.ok(otlp.requests >= 1);
});

t.test('exporter none: no export at all, trace context still continued', async (t) => {
  const otlp = await collector();
  t.teardown(() => otlp.close());
  const dg = await startWithTelemetry(baseRules(up.origin, keys.url, (r) => {
    r.telemetry = { traces: { exporter: 'none', endpoint: otlp.url } };
  }));
  t.teardown(() => dg.stop());
  const before = up.seen.length;
  const res = await fetch(dg.url + '/status', { headers: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' } });
  await res.text();
  t.match(up.seen[before]!.headers.traceparent, /^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$/, 'the caller\'s flag goes upstream as it came');
  t.match(res.headers.get('traceresponse'), /^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-00$/, 'traceresponse: driftguard recorded nothing (before: -01)');
  // Stopping flushes whatever an export thread would hold: none may have reached the receiver.
  await dg.stop();
  t.equal(otlp.requests, 0);
});
