// The export thread (proxy/telemetry/export-thread.ts, export-worker.ts): a real worker thread
// exporting to a real OTLP receiver on loopback. What the request thread hands over comes
// back as spans; what cannot be exported is counted, by cause, at once where it is known at
// once; shutdown flushes; a thread that dies is counted and replaced. The failing thread is
// test/support/failing-export-worker.ts, since the real one cannot be made to die on demand.

import t, { type Test } from 'tap';
import { ExportThread } from '../../proxy/telemetry/export-thread.ts';
import { limitedWarnings } from '../../proxy/telemetry/tracing.ts';
import { spanExport } from '../../proxy/telemetry/export.ts';
import type { TracesConfig } from '../../proxy/telemetry/config.ts';
import type { SpanSource } from '../../proxy/telemetry/spans.ts';
import type { DecisionRecord } from '../../proxy/telemetry/record.ts';
import { collector, eventually, KIND } from './support.ts';
import { until } from '../lifecycle/support.ts';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { decodeTraces } from '../support/otlp.ts';

function config(url: string, over: Partial<TracesConfig> = {}): TracesConfig {
  return {
    exporter: 'otlp', protocol: 'http/protobuf', url, serviceName: 'export-thread-test', sampler: 'always_on', samplerArg: 1,
    exportTimeoutMs: 2_000, maxQueueSize: 64, maxQueueBytes: 8 * 1024 * 1024, maxExportBatchSize: 8, scheduledDelayMs: 20, ...over,
  };
}

let n = 0;
const upstream = { address: '127.0.0.1', port: 9, origin: 'http://127.0.0.1:9' };

/** A request's span source: its SERVER span, and its CLIENT span when `forwarded`. */
function source(forwarded = false): SpanSource {
  n++;
  const now = Date.now();
  const spanId = n.toString(16).padStart(16, '0');
  const record: DecisionRecord = {
    time: new Date(now).toISOString(), timeMs: now, traceId: '0af7651916cd43dd8448eb211c80319c', spanId,
    decision: 'allow', enforced: true, reason: 'allowed', warnings: [], detail: 'allowed', method: 'GET', path: `/items/${n}`,
    route: '/items/{id}', operation: 'getItem', currentContract: '2026-09', rules: 'abc', status: 200,
    checks: [{ check: 'operation', outcome: 'continue' }],
  };
  return {
    trace: { traceId: record.traceId, spanId, sampled: true, traceState: 'vendor=one' },
    facts: { method: 'GET', protocolVersion: '1.1' }, record, checksAtMs: now, endMs: now + 2,
    ...(forwarded ? { call: { spanId: 'c' + spanId.slice(1), upstream, startMs: now, endMs: now + 1, status: 200 } } : {}),
  };
}

t.test('sources handed over come back from the collector as spans, and are counted as exported', async (t) => {
  const otlp = await collector();
  t.teardown(() => otlp.close());
  const thread = new ExportThread(config(otlp.url + '/v1/traces'), (m) => t.fail(m));
  t.teardown(() => thread.shutdown());
  for (let i = 0; i < 10; i++) thread.add(source(true));
  for (let i = 0; i < 10; i++) thread.add(source());
  await eventually('30 spans at the collector', async () => otlp.spans.length === 30);
  t.equal(otlp.spans.filter((s) => s.kind === KIND.SERVER).length, 20, 'a SERVER span per source');
  const client = otlp.spans.find((s) => s.kind === KIND.CLIENT)!;
  const server = otlp.spans.find((s) => s.kind === KIND.SERVER && s.spanId === client.parentSpanId)!;
  t.ok(server, 'the CLIENT span\'s parent is its request\'s SERVER span');
  t.equal(client.traceId, '0af7651916cd43dd8448eb211c80319c');
  t.equal(client.name, 'GET /items/{id}', 'method and route are the request\'s');
  t.equal(client.attributes['url.full'], `http://127.0.0.1:9${server.attributes['url.path']}`, 'the upstream origin and the request\'s path');
  t.equal(client.attributes['server.port'], 9);
  t.equal(server.attributes['driftguard.operation'], 'getItem');
  t.equal(server.resource['service.name'], 'export-thread-test', 'the resource is built on the export thread');
  await eventually('the exports to be counted', async () => thread.counts.exported === 30);
  t.same(thread.counts.dropped, { queue_full: 0, export_failed: 0, rejected: 0 });
});

t.test('a batch of large spans goes out in requests under 1 MiB, the body limit common in front of a collector', async (t) => {
  // Refuses a body over 1 MiB with 413, as nginx does by default (client_max_body_size 1m);
  // the exporter does not retry a 413, so a batch sent whole would be lost whole.
  const sizes: number[] = [];
  let received = 0;
  // Answers after 50 ms, counting the requests in flight together.
  let inFlight = 0;
  let mostInFlight = 0;
  const server = createServer((req, res) => {
    mostInFlight = Math.max(mostInFlight, ++inFlight);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => setTimeout(() => {
      inFlight--;
      const body = Buffer.concat(chunks);
      sizes.push(body.length);
      if (body.length > 1024 * 1024) { res.writeHead(413).end('too large'); return; }
      for (const rs of decodeTraces(body).resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) received += ss.spans?.length ?? 0;
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    }, 50));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise((resolve) => server.close(resolve)));
  const warnings: string[] = [];
  const thread = new ExportThread(config(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, { maxQueueSize: 4096, maxExportBatchSize: 512, scheduledDelayMs: 50 }), (m) => warnings.push(m));
  t.teardown(() => thread.shutdown());
  // Spans as large as driftguard lets them be: a 2 KiB path (also in the CLIENT span's
  // url.full), a long delegation chain, a long User-Agent. About 3 MB for 512 spans.
  for (let i = 0; i < 256; i++) {
    const s = source(true);
    const record = { ...s.record, path: '/items/' + 'p'.repeat(2040), extra: { 'delegation.chain': Array.from({ length: 8 }, (_, k) => `spiffe://test.local/${k}/` + 'a'.repeat(1000)) } };
    thread.add({ ...s, record, facts: { ...s.facts, userAgent: 'u'.repeat(511) } });
  }
  await eventually('512 spans at the collector, or a refusal', async () => received === 512 || sizes.some((n) => n > 1024 * 1024));
  t.equal(received, 512, 'every span received (before: one 3 MB request, refused with 413, and every span lost)');
  t.ok(sizes.length >= 3, `in ${sizes.length} requests`);
  t.ok(sizes.every((n) => n <= 1024 * 1024), `each under 1 MiB: ${sizes.map((n) => Math.round(n / 1024)).join(', ')} KiB`);
  // One after the other: at shutdown every queued batch is exported at once, and parts sent
  // together could pass the exporter's limit of 30 requests in flight.
  t.equal(mostInFlight, 1, 'the parts of a batch one after the other');
  await eventually('the exports to be counted', async () => thread.counts.exported === 512);
  t.same(thread.counts.dropped, { queue_full: 0, export_failed: 0, rejected: 0 });
  t.same(warnings, []);
});

t.test('shutdown exports what is still on its way', async (t) => {
  const otlp = await collector();
  t.teardown(() => otlp.close());
  // A batch of 8 that never fills and a delay far beyond the test: only shutdown sends these.
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { scheduledDelayMs: 60_000 }), (m) => t.fail(m));
  for (let i = 0; i < 5; i++) thread.add(source());
  await thread.shutdown();
  t.equal(otlp.spans.length, 5, 'all five were exported before shutdown resolved');
  t.equal(thread.counts.exported, 5);
  thread.add(source());
  t.equal(thread.counts.dropped.export_failed, 1, 'a span after shutdown is dropped and counted');
});

t.test('shutdown with a collector that hangs ends after the flush wait, not a backstop later', async (t) => {
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const warnings: string[] = [];
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { scheduledDelayMs: 20 }), (m) => warnings.push(m), { shutdownFlushMs: 300 });
  for (let i = 0; i < 5; i++) thread.add(source());
  // The thread's start (loading the exporter) took more than the default 5 s on a busy machine.
  t.ok(await until(() => otlp.requests >= 1, 20_000), 'the thread is up and its export hangs');
  await thread.shutdown();
  // The open connection to the hung collector kept the thread alive after it gave up, and every
  // stop waited the backstop (the flush wait + 1 s: 4 s in all by default), which says so. Now
  // the thread reports its last export given up on, and is ended 250 ms after that.
  t.notOk(warnings.some((w) => w.includes('did not finish its last export')), 'the thread reported its flush: no backstop');
  t.equal(thread.counts.dropped.export_failed, 5, 'its spans are counted as failed');
});

for (const protocol of ['http/protobuf', 'http/json'] as const) {
  t.test(`${protocol}: an export whose answer trickles (never idle, never done) is cut after the export timeout, not held open`, async (t) => {
    // 200 and then a byte every 100 ms, forever: the exporter's own timeout is an idle one, so
    // such requests stayed open, and after 30 of them every export was refused (over http/json
    // until the cut reached it too).
    const open = new Set<import('node:http').ServerResponse>();
    let requests = 0;
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        requests++;
        res.writeHead(200, { 'content-type': protocol === 'http/json' ? 'application/json' : 'application/x-protobuf' });
        res.flushHeaders();
        open.add(res);
        const drip = setInterval(() => res.write(protocol === 'http/json' ? ' ' : Buffer.alloc(1)), 100);
        res.on('close', () => { clearInterval(drip); open.delete(res); });
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.teardown(() => { server.closeAllConnections(); server.close(); });
    const thread = new ExportThread(config(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, { protocol, exportTimeoutMs: 300, maxExportBatchSize: 4 }), () => {});
    t.teardown(() => thread.shutdown());
    for (let i = 0; i < 4; i++) thread.add(source());
    t.ok(await until(() => requests >= 1, 20_000), 'the export reached the collector (the thread started: seconds on a busy machine)');
    t.ok(await until(() => thread.counts.dropped.export_failed === 4), 'and failed after its timeout');
    t.ok(await until(() => open.size === 0, 2_000), 'its request was cut, freeing its place (300 ms + 500 ms after it was made)');
  });
}

t.test('at most maxQueueSize spans on their way: the rest are dropped as queue_full at once', async (t) => {
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { maxQueueSize: 4, maxExportBatchSize: 2, exportTimeoutMs: 300 }), () => {});
  t.teardown(() => thread.shutdown());
  for (let i = 0; i < 10; i++) thread.add(source());
  t.equal(thread.counts.dropped.queue_full, 6, 'counted synchronously, before any export answered');
  await eventually('the hanging exports to time out and be counted', async () => thread.counts.dropped.export_failed === 4);
  // Settled spans free their places in the queue.
  thread.add(source());
  t.equal(thread.counts.dropped.queue_full, 6, 'a place freed by a failed export is taken again');
});

t.test('at most maxQueueBytes of encoded spans on their way: the rest are dropped as queue_full', async (t) => {
  // Spans of 2 KiB paths, a collector that never answers, room for 64 spans but 64 KiB of
  // bytes: about 24 such spans fit. Before, all 64 were kept: at the caps a full queue of
  // 4,096 held 36 MiB outside the thread's heap.
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { maxQueueSize: 64, maxQueueBytes: 65536, maxExportBatchSize: 8, exportTimeoutMs: 2_000 }), () => {});
  t.teardown(() => thread.shutdown());
  const long = () => { const s = source(); return { ...s, record: { ...s.record, path: '/' + 'p'.repeat(2047) } }; };
  for (let i = 0; i < 64; i++) thread.add(long());
  await eventually('the thread to refuse what does not fit', async () => thread.counts.dropped.queue_full > 0);
  const kept = 64 - thread.counts.dropped.queue_full;
  t.ok(kept >= 16 && kept <= 32, `${kept} of 64 spans kept: 2 to 4 KB each in 64 KiB (a span here is about 2.7 KB)`);
  t.equal(thread.counts.exported, 0, 'none exported: the collector hangs');
});

t.test('bytes are freed as spans settle: after a failed export, spans fit again', async (t) => {
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const thread = new ExportThread(config(otlp.url + '/v1/traces', { maxQueueSize: 64, maxQueueBytes: 65536, maxExportBatchSize: 64, scheduledDelayMs: 20, exportTimeoutMs: 300 }), () => {});
  t.teardown(() => thread.shutdown());
  const long = () => { const s = source(); return { ...s, record: { ...s.record, path: '/' + 'p'.repeat(2047) } }; };
  for (let i = 0; i < 20; i++) thread.add(long());
  await eventually('the first export to fail', async () => thread.counts.dropped.export_failed === 20);
  for (let i = 0; i < 20; i++) thread.add(long());
  await eventually('the second export to fail', async () => thread.counts.dropped.export_failed === 40);
  for (let i = 0; i < 20; i++) thread.add(long());
  await eventually('the third export to fail', async () => thread.counts.dropped.export_failed === 60);
  t.equal(thread.counts.dropped.queue_full, 0, 'three rounds of 20 spans (about 54 KB each), none refused: what settled was freed');
});

t.test('the export side refuses spans past maxQueueSize itself: none is dropped inside the processor with its bytes still counted', async (t) => {
  // Driven directly, without the request thread's own count (export-thread.ts), which keeps
  // the processor's queue from filling. Found by a review helper: had the processor dropped
  // spans for its full queue, their bytes would have stayed counted for good, and after a
  // few rounds no span fitted in maxQueueBytes any more: tracing would stop silently.
  const otlp = await collector();
  otlp.mode = 'hang';
  t.teardown(() => otlp.close());
  const counts = { exported: 0, queueFull: 0, failed: 0 };
  const exp = await spanExport(config(otlp.url + '/v1/traces', { maxQueueSize: 4, maxQueueBytes: 65536, maxExportBatchSize: 4, scheduledDelayMs: 20, exportTimeoutMs: 300 }), {
    settled(e, q, f) { counts.exported += e; counts.queueFull += q; counts.failed += f; },
    failed() {},
  });
  t.teardown(() => exp.shutdown(100));
  const long = () => { const s = source(); return { ...s, record: { ...s.record, path: '/' + 'p'.repeat(2047) } }; };
  const round = async (make: () => SpanSource, n: number, settledBefore: number) => {
    exp.add(Array.from({ length: n }, make));
    await eventually('the round to settle', async () => counts.exported + counts.failed + counts.queueFull === settledBefore + n);
  };
  await round(long, 30, 0);
  await round(() => source(), 30, 30);
  otlp.mode = 'ok';
  await round(long, 30, 60);
  t.equal(counts.exported, 4, 'the last round still exports a full queue (before: none, the bytes of spans the processor dropped were still counted)');
  t.equal(counts.failed, 8, 'the hanging rounds failed what they kept: maxQueueSize each');
  t.equal(counts.queueFull, 78, 'the rest refused as queue_full');
});

t.test('a thread that dies: what it held is counted as export_failed, and a new one starts, not sooner than restartMs', async (t) => {
  const warnings: string[] = [];
  const entry = new URL('../support/failing-export-worker.ts', import.meta.url);
  // restartMs counted on a clock the test moves: however long the thread takes to load and die
  // on a busy machine, it is within restartMs until the test says it is not.
  const restartMs = 4_000;
  let clock = 0;
  const thread = new ExportThread(config('http://127.0.0.1:9/v1/traces'), (m) => warnings.push(m), { entry, restartMs, now: () => clock });
  t.teardown(() => thread.shutdown());
  await new Promise((r) => setTimeout(r, 100));
  t.same(warnings, [], 'no thread before there are spans');
  for (let i = 0; i < 3; i++) thread.add(source());
  await eventually('the thread to start', async () => warnings.includes('started'));
  await eventually('the thread to stop', async () => warnings.some((w) => w.includes('stopped (exit code 3)')));
  t.equal(thread.counts.dropped.export_failed, 3, 'the three spans it held');
  // Within restartMs of the last start: no new thread, the batch is dropped and counted when
  // it would be posted (a thread started instead would take far longer to take and lose them).
  clock = restartMs - 1;
  for (let i = 0; i < 3; i++) thread.add(source());
  // Dropped when the batch would be posted (POST_MS, 10 ms): a timer, late on a busy machine (60 ms were not always enough).
  await eventually('the batch to be dropped', async () => thread.counts.dropped.export_failed >= 6);
  t.equal(thread.counts.dropped.export_failed, 6, 'no thread to take them');
  t.equal(warnings.filter((w) => w === 'started').length, 1);
  clock = restartMs;
  for (let i = 0; i < 3; i++) thread.add(source());
  await eventually('a second thread to start', async () => warnings.filter((w) => w === 'started').length === 2);
  await eventually('it to stop too', async () => thread.counts.dropped.export_failed === 9);
  t.notOk(warnings.some((w) => /Bearer|authorization/i.test(w)));
});

t.test('warnings: export failures at most once a minute, and the thread\'s stops apart from them', async (t) => {
  const logged: string[] = [];
  let now = 0;
  const warn = limitedWarnings((m) => logged.push(m), () => now);
  warn('export took longer than 10000ms', 'export');
  now = 1_000;
  warn('export took longer than 10000ms', 'export');
  // Under one limit, this stop was never logged: the collector's timeout had used the minute.
  warn('the span export thread stopped (exit code 1: out of memory)', 'thread');
  now = 30_000;
  warn('the span export thread stopped (exit code 1: out of memory)', 'thread');
  now = 61_000;
  warn('export failed again', 'export');
  t.same(logged, ['export took longer than 10000ms', 'the span export thread stopped (exit code 1: out of memory)', 'export failed again']);
});

/** A collector that answers every export after `ms` (the `refuse`th request with a 400), counting the requests and the spans of the JSON ones it accepted. */
async function slowCollector(t: Test, ms: number, refuse?: number) {
  const c = { requests: 0, spans: 0, url: '' };
  const server = createServer((req, res) => {
    const n = ++c.requests;
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      const json = req.headers['content-type']?.includes('json') === true;
      const type = { 'content-type': json ? 'application/json' : 'application/x-protobuf' };
      if (n === refuse) { res.writeHead(400, type).end(); return; }
      setTimeout(() => {
        if (json) for (const rs of JSON.parse(Buffer.concat(chunks).toString()).resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) c.spans += ss.spans?.length ?? 0;
        res.writeHead(200, type).end(json ? '{}' : undefined);
      }, ms);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => { server.closeAllConnections(); server.close(); });
  c.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`;
  return c;
}

t.test('at shutdown, the queued batches reach a healthy collector: never more at once than the exporter takes (http/json, 64 a batch)', async (t) => {
  const c = await slowCollector(t, 100);
  const warnings: string[] = [];
  const thread = new ExportThread(config(c.url, { protocol: 'http/json', exportTimeoutMs: 10_000, maxQueueSize: 4096, maxExportBatchSize: 64, scheduledDelayMs: 1000 }), (m) => warnings.push(m));
  for (let i = 0; i < 3000; i++) thread.add(source());
  await thread.shutdown();
  // Before: 47 batches at once, past the exporter's 30: 0 counted as exported, 1,920 received.
  t.equal(c.spans, 3000, 'every span received');
  t.equal(thread.counts.exported, 3000, 'and counted as exported');
  t.equal(thread.counts.dropped.export_failed, 0);
  t.same(warnings.filter((w) => /Concurrent export limit/.test(w)), [], 'no batch refused by the exporter\'s limit');
});

t.test('at shutdown, one batch the collector refuses does not end the flush: the others are delivered, and counted so', async (t) => {
  const c = await slowCollector(t, 300, 2);
  const thread = new ExportThread(config(c.url, { exportTimeoutMs: 10_000, maxQueueSize: 4096, maxExportBatchSize: 512, scheduledDelayMs: 1000 }), () => {});
  for (let i = 0; i < 3000; i++) thread.add(source());
  await thread.shutdown();
  // Six batches of at most 512; the first of the flush refused. Before: 0 exported, 3,000 failed.
  t.equal(thread.counts.exported + thread.counts.dropped.export_failed, 3000, 'every span accounted for');
  t.ok(thread.counts.exported >= 2000, `the accepted batches are counted as exported (${thread.counts.exported})`);
  t.ok(thread.counts.dropped.export_failed > 0 && thread.counts.dropped.export_failed <= 512, `the refused one as failed (${thread.counts.dropped.export_failed})`);
});

t.test('http/json: a full queue of spans at the caps, the collector hanging, is bounded by maxQueueBytes: the thread lives', async (t) => {
  const { createServer: createTcp } = await import('node:net');
  const sockets = new Set<import('node:net').Socket>();
  const hang = createTcp((s) => { sockets.add(s); s.on('error', () => {}); s.resume(); });
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
  t.teardown(() => { for (const s of sockets) s.destroy(); hang.close(); });
  const warnings: string[] = [];
  const thread = new ExportThread(config(`http://127.0.0.1:${(hang.address() as AddressInfo).port}/v1/traces`, {
    protocol: 'http/json', exportTimeoutMs: 60_000, maxQueueSize: 4096, maxExportBatchSize: 64, scheduledDelayMs: 1000,
  }), (m) => warnings.push(m));
  t.teardown(() => thread.shutdown());
  // Anyone can make spans this large: a 2 KiB path, a long detail, a delegation chain, a user agent.
  for (let i = 0; i < 2048; i++) {
    const s = source(true);
    const record = { ...s.record, path: '/items/' + 'p'.repeat(2040), detail: 'd'.repeat(200), extra: { 'delegation.chain': Array.from({ length: 8 }, (_, k) => `spiffe://test.local/${k}/` + 'a'.repeat(1000)) } };
    thread.add({ ...s, record, facts: { ...s.facts, userAgent: 'u'.repeat(511) } });
    if (i % 64 === 0) await new Promise((r) => setTimeout(r, 5));
  }
  t.ok(await until(() => thread.counts.dropped.queue_full > 0, 10_000), 'past maxQueueBytes, spans are dropped as queue_full');
  await new Promise((r) => setTimeout(r, 3_000));
  // Before: bounded by count alone, 4,096 such spans ran the thread out of its heap, and it died at every fill.
  t.same(warnings.filter((w) => /thread stopped/.test(w)), [], 'the export thread did not die');
  t.equal(thread.counts.dropped.export_failed, 0, 'nothing it held was lost');
});
