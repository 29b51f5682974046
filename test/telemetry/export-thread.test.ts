// The export thread (proxy/telemetry/export-thread.ts, export-worker.ts): a real worker thread
// exporting to a real OTLP receiver on loopback. What the request thread hands over comes
// back as spans; what cannot be exported is counted, by cause, at once where it is known at
// once; shutdown flushes; a thread that dies is counted and replaced. The failing thread is
// test/support/failing-export-worker.ts, since the real one cannot be made to die on demand.

import t from 'tap';
import { ExportThread } from '../../proxy/telemetry/export-thread.ts';
import type { TracesConfig } from '../../proxy/telemetry/config.ts';
import type { SpanSource } from '../../proxy/telemetry/spans.ts';
import { collector, eventually, KIND } from './support.ts';

function config(url: string, over: Partial<TracesConfig> = {}): TracesConfig {
  return {
    exporter: 'otlp', protocol: 'http/protobuf', url, serviceName: 'export-thread-test', sampler: 'always_on', samplerArg: 1,
    exportTimeoutMs: 2_000, maxQueueSize: 64, maxExportBatchSize: 8, scheduledDelayMs: 20, ...over,
  };
}

let n = 0;
function client(): SpanSource {
  n++;
  const now = Date.now();
  return {
    kind: 'client',
    trace: { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', sampled: true, traceState: 'vendor=one' },
    spanId: n.toString(16).padStart(16, '0'),
    call: { method: 'GET', address: '127.0.0.1', port: 9, url: `http://127.0.0.1:9/items/${n}`, template: '/items/{id}', status: 200 },
    startMs: now, endMs: now + 1,
  };
}

t.test('spans handed over come back from the collector, and are counted as exported', async (t) => {
  const otlp = await collector();
  t.teardown(() => otlp.close());
  const thread = new ExportThread(config(otlp.url + '/v1/traces'), (m) => t.fail(m));
  t.teardown(() => thread.shutdown());
  for (let i = 0; i < 20; i++) thread.add(client());
  await eventually('20 spans at the collector', async () => otlp.spans.length === 20);
  const s = otlp.spans[0]!;
  t.equal(s.kind, KIND.CLIENT);
  t.equal(s.traceId, '0af7651916cd43dd8448eb211c80319c');
  t.equal(s.parentSpanId, 'b7ad6b7169203331', 'the parent is the SERVER span named in the source');
  t.equal(s.name, 'GET /items/{id}');
  t.equal(s.attributes['url.template'], '/items/{id}');
  t.equal(s.resource['service.name'], 'export-thread-test', 'the resource is built on the export thread');
  await eventually('the exports to be counted', async () => thread.counts.exported === 20);
  t.same(thread.counts.dropped, { queue_full: 0, export_failed: 0 });
});

t.test('shutdown exports what is still on its way', async (t) => {
  const otlp = await collector();
  t.teardown(() => otlp.close());
  // A batch of 8 that never fills and a delay far beyond the test: only shutdown sends these.
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { scheduledDelayMs: 60_000 }), (m) => t.fail(m));
  for (let i = 0; i < 5; i++) thread.add(client());
  await thread.shutdown();
  t.equal(otlp.spans.length, 5, 'all five were exported before shutdown resolved');
  t.equal(thread.counts.exported, 5);
  thread.add(client());
  t.equal(thread.counts.dropped.export_failed, 1, 'a span after shutdown is dropped and counted');
});

t.test('at most maxQueueSize spans on their way: the rest are dropped as queue_full at once', async (t) => {
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { maxQueueSize: 4, maxExportBatchSize: 2, exportTimeoutMs: 300 }), () => {});
  t.teardown(() => thread.shutdown());
  for (let i = 0; i < 10; i++) thread.add(client());
  t.equal(thread.counts.dropped.queue_full, 6, 'counted synchronously, before any export answered');
  await eventually('the hanging exports to time out and be counted', async () => thread.counts.dropped.export_failed === 4);
  // Settled spans free their places in the queue.
  thread.add(client());
  t.equal(thread.counts.dropped.queue_full, 6, 'a place freed by a failed export is taken again');
});

t.test('a thread that dies: what it held is counted as export_failed, and a new one starts, not sooner than restartMs', async (t) => {
  const warnings: string[] = [];
  const entry = new URL('../support/failing-export-worker.ts', import.meta.url);
  // The first start is at construction; a thread under tap's TypeScript loader takes about a
  // second to load, well within restartMs.
  const restartMs = 4_000;
  const started = Date.now();
  const thread = new ExportThread(config('http://127.0.0.1:9/v1/traces'), (m) => warnings.push(m), { entry, restartMs });
  t.teardown(() => thread.shutdown());
  await eventually('the thread to start', async () => warnings.includes('started'));
  for (let i = 0; i < 3; i++) thread.add(client()); // posted within POST_MS (10 ms), and the thread exits
  await eventually('the thread to stop', async () => warnings.some((w) => w.includes('stopped (exit code 3)')));
  t.equal(thread.counts.dropped.export_failed, 3, 'the three spans it held');
  // Within restartMs of the last start: no new thread, the batch is dropped and counted when
  // it would be posted (a thread started instead would take far longer to take and lose them).
  for (let i = 0; i < 3; i++) thread.add(client());
  await new Promise((r) => setTimeout(r, 60));
  t.equal(thread.counts.dropped.export_failed, 6, 'no thread to take them');
  t.equal(warnings.filter((w) => w === 'started').length, 1);
  t.ok(Date.now() - started < restartMs, 'those were within restartMs of the start');
  await new Promise((r) => setTimeout(r, started + restartMs + 50 - Date.now()));
  for (let i = 0; i < 3; i++) thread.add(client());
  await eventually('a second thread to start', async () => warnings.filter((w) => w === 'started').length === 2);
  await eventually('it to stop too', async () => thread.counts.dropped.export_failed === 9);
  t.notOk(warnings.some((w) => /Bearer|authorization/i.test(w)));
});
