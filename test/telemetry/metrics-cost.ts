// Measures the per-request cost of counting a decision (one counter with 5 labels and one
// histogram observation) and the cost of one scrape, two ways: driftguard's plain-object
// metrics (proxy/telemetry/metrics.ts) and the OpenTelemetry metrics SDK with its Prometheus
// serializer. Run by hand: node test/telemetry/metrics-cost.ts. Not a test (no timings in tests).
// The OpenTelemetry packages used here are sdk-node's own dependencies, installed with it.

import { performance } from 'node:perf_hooks';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import { Counter, Histogram, Registry } from '../../proxy/telemetry/metrics.ts';

const N = 500_000;
const ops = ['getItem', 'listItems', 'createItem', 'pay', 'deleteItem'];
const reasons = ['allowed', 'stale-contract', 'deprecated-operation', 'missing-credential'];
const BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

function plain(): { perOp: number; scrape: number } {
  const reg = new Registry();
  const c = reg.add(new Counter('driftguard_decisions_total', 'x', ['decision', 'enforced', 'reason', 'operation', 'consumer_kind']));
  const h = reg.add(new Histogram('driftguard_added_latency_seconds', 'x', ['decision'], BUCKETS));
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    c.inc(['allow', 'true', reasons[i & 3]!, ops[i % 5]!, 'automation']);
    h.observe(['allow'], (i % 1000) / 1e6);
  }
  const perOp = (performance.now() - t0) / N * 1000;
  const s0 = performance.now();
  for (let i = 0; i < 100; i++) reg.text();
  return { perOp, scrape: (performance.now() - s0) / 100 };
}

async function sdk(): Promise<{ perOp: number; scrape: number }> {
  const exporter = new PrometheusExporter({ preventServerStart: true });
  const provider = new MeterProvider({ readers: [exporter] });
  const meter = provider.getMeter('driftguard');
  const c = meter.createCounter('driftguard_decisions');
  const h = meter.createHistogram('driftguard_added_latency', { unit: 's', advice: { explicitBucketBoundaries: BUCKETS } });
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    c.add(1, { decision: 'allow', enforced: 'true', reason: reasons[i & 3]!, operation: ops[i % 5]!, consumer_kind: 'automation' });
    h.record((i % 1000) / 1e6, { decision: 'allow' });
  }
  const perOp = (performance.now() - t0) / N * 1000;
  const serializer = new PrometheusSerializer();
  const s0 = performance.now();
  for (let i = 0; i < 100; i++) {
    const { resourceMetrics } = await exporter.collect();
    serializer.serialize(resourceMetrics);
  }
  const scrape = (performance.now() - s0) / 100;
  await provider.shutdown();
  return { perOp, scrape };
}

// Warm up both, then measure.
plain(); await sdk();
const p = plain();
const s = await sdk();
console.log(`plain objects: ${p.perOp.toFixed(3)} µs per request (counter + histogram), ${p.scrape.toFixed(3)} ms per scrape`);
console.log(`OpenTelemetry SDK + PrometheusSerializer: ${s.perOp.toFixed(3)} µs per request, ${s.scrape.toFixed(3)} ms per scrape`);
