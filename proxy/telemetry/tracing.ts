// The trace pipeline, from OpenTelemetry SDK parts (sdk-trace): the sampler the settings
// name, W3C Trace Context in, and one BatchSpanProcessor in front of the exporter (OTLP over
// http/protobuf, http/json or grpc, or the console). Nothing is registered as the
// process-global provider: the global API, an embedding application's own SDK and a second
// driftguard in the same process (tests) are left alone. This is why the pieces are
// assembled here rather than by NodeSDK.start(), which registers globals (and puts the
// console exporter behind a SimpleSpanProcessor, which blocks per span).
//
// There is no Tracer either. A request's spans are known in full only when it ends, and the
// decision record has every fact they carry; so a request takes its ids and sampling
// decision here when it begins, and its finished spans are built once, from the record, only
// when they will be exported (spans.ts). The SDK's Span would validate each attribute and
// event as it is set, on every request, exported or not: measured, that was about a quarter
// of what driftguard-core added to a request with `exporter: none` (README, Performance).
//
// Export never blocks or fails a request: spans are queued and exported in batches off the
// request path. A span that cannot be exported (queue full, collector down, refusing or
// hanging past the export timeout) is dropped and counted, by cause.

import { ROOT_CONTEXT, createNoopMeter, defaultTextMapGetter, isSpanContextValid, trace, type Meter, type MeterProvider, type SpanContext, type SpanKind, type TraceState } from '@opentelemetry/api';
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult, type InstrumentationScope } from '@opentelemetry/core';
import { defaultResource, detectResources, hostDetector, resourceAttributesEnvDetector, resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import {
  AlwaysOffSampler, AlwaysOnSampler, BatchSpanProcessor, ConsoleSpanExporter, ParentBasedSampler, RandomIdGenerator, SamplingDecision, TraceIdRatioBasedSampler,
  type ReadableSpan, type Sampler, type SpanExporter,
} from '@opentelemetry/sdk-trace';
import { OTLPExporterBase } from '@opentelemetry/otlp-exporter-base';
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from '@opentelemetry/otlp-exporter-base/node-http';
import { TraceExporterMetricsHelper } from '@opentelemetry/otlp-transformer';
import { OTLPTraceExporter as OtlpJson } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as OtlpGrpc } from '@opentelemetry/exporter-trace-otlp-grpc';
import type { TracesConfig, SamplerName } from './config.ts';
import { traceSerializer } from './otlp-proto.ts';

export type DropCause = 'queue_full' | 'export_failed';

export interface SpanCounts {
  exported: number;
  dropped: Record<DropCause, number>;
}

/** Where a SERVER span sits in its trace: the caller's context continued, or a new trace. */
export interface TraceStart {
  readonly traceId: string;
  readonly spanId: string;
  /** Sampled spans are exported; the flag goes out in traceparent and traceresponse either way. */
  readonly sampled: boolean;
  /** The caller's span, when the request carried a valid traceparent. */
  readonly parent?: SpanContext;
  readonly traceState?: TraceState;
}

export interface Tracing {
  readonly counts: SpanCounts;
  /** Whether finished spans go anywhere: false with `exporter: none`, so none is built. */
  readonly exporting: boolean;
  readonly resource: Resource;
  readonly scope: InstrumentationScope;
  /** Continue the caller's trace (traceparent, tracestate) or start one, and sample it. */
  start(headers: Record<string, string | string[] | undefined>, name: string, kind: SpanKind): TraceStart;
  newSpanId(): string;
  /** Queue a finished, sampled span for export in the next batch. */
  export(span: ReadableSpan): void;
  shutdown(): Promise<void>;
}

const propagator = new W3CTraceContextPropagator();

function sampler(name: SamplerName, ratio: number): Sampler {
  switch (name) {
    case 'always_on': return new AlwaysOnSampler();
    case 'always_off': return new AlwaysOffSampler();
    case 'traceidratio': return new TraceIdRatioBasedSampler(ratio);
    case 'parentbased_always_on': return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off': return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio': return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) });
  }
}

function exporter(config: TracesConfig): SpanExporter | undefined {
  if (config.exporter === 'none') return undefined;
  if (config.exporter === 'console') return new ConsoleSpanExporter();
  // Without a url the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT and _HEADERS itself.
  const options = { timeoutMillis: config.exportTimeoutMs, ...(config.url !== undefined ? { url: config.url } : {}) };
  switch (config.protocol) {
    case 'http/json': return new OtlpJson(options);
    case 'grpc': return new OtlpGrpc(options);
    // The SDK's http/protobuf exporter (its transport, retries, OTEL_EXPORTER_OTLP_* settings)
    // with driftguard's span encoder in place of its serializer (otlp-proto.ts says why).
    default: return new OTLPExporterBase(createOtlpHttpExportDelegate(
      convertLegacyHttpOptions(options, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' }),
      traceSerializer, 'otlp_http_span_exporter', TraceExporterMetricsHelper, undefined));
  }
}

/**
 * Calls back exactly once per batch, within the export timeout even when the exporter never
 * answers (a hanging collector), and counts what was exported and what was dropped.
 */
class CountingExporter implements SpanExporter {
  readonly #inner: SpanExporter;
  readonly #timeoutMs: number;
  readonly #counts: SpanCounts;
  readonly #onError: (message: string) => void;

  constructor(inner: SpanExporter, timeoutMs: number, counts: SpanCounts, onError: (message: string) => void) {
    this.#inner = inner; this.#timeoutMs = timeoutMs; this.#counts = counts; this.#onError = onError;
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    let done = false;
    const finish = (result: ExportResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (result.code === ExportResultCode.SUCCESS) this.#counts.exported += spans.length;
      else {
        this.#counts.dropped.export_failed += spans.length;
        this.#onError(result.error?.message ?? 'export failed');
      }
      resultCallback(result);
    };
    const timer = setTimeout(() => finish({ code: ExportResultCode.FAILED, error: new Error(`export took longer than ${this.#timeoutMs}ms`) }), this.#timeoutMs + 500);
    timer.unref();
    try {
      this.#inner.export(spans, finish);
    } catch (err) {
      finish({ code: ExportResultCode.FAILED, error: err as Error });
    }
  }

  shutdown(): Promise<void> { return this.#inner.shutdown(); }
  forceFlush(): Promise<void> { return this.#inner.forceFlush?.() ?? Promise.resolve(); }
}

/**
 * The batch processor reports spans it refused because its queue was full only through its
 * self-observability meter (otel.sdk.processor.span.processed with error.type=queue_full):
 * this minimal MeterProvider listens to that one counter and ignores everything else.
 */
function queueFullListener(counts: SpanCounts): MeterProvider {
  const noop = createNoopMeter();
  const meter: Meter = Object.create(noop) as Meter;
  meter.createCounter = ((name: string, options?: unknown) => {
    if (name !== 'otel.sdk.processor.span.processed') return noop.createCounter(name, options as undefined);
    return {
      add(n: number, attributes?: Record<string, unknown>) {
        if (attributes?.['error.type'] === 'queue_full') counts.dropped.queue_full += n;
      },
    };
  }) as Meter['createCounter'];
  return { getMeter: () => meter };
}

/** Longest wait for the last export at shutdown. */
const SHUTDOWN_FLUSH_MS = 3_000;

export function tracing(config: TracesConfig, warn: (message: string) => void): Tracing {
  const counts: SpanCounts = { exported: 0, dropped: { queue_full: 0, export_failed: 0 } };
  // Report export failures at most once a minute: a collector outage must not flood the log.
  let lastWarn = -Infinity;
  const onError = (message: string) => {
    const now = Date.now();
    if (now - lastWarn < 60_000) return;
    lastWarn = now;
    warn(message);
  };
  const inner = exporter(config);
  const processor = inner ? new BatchSpanProcessor({
    exporter: new CountingExporter(inner, config.exportTimeoutMs, counts, onError),
    maxQueueSize: config.maxQueueSize,
    maxExportBatchSize: config.maxExportBatchSize,
    scheduledDelayMillis: config.scheduledDelayMs,
    // The exporter's own timeout fires first; this is the processor's last resort.
    exportTimeoutMillis: config.exportTimeoutMs + 2_000,
    selfObsMeterProvider: queueFullListener(counts),
  }) : undefined;
  const resource = defaultResource()
    .merge(detectResources({ detectors: [hostDetector, resourceAttributesEnvDetector] }))
    .merge(resourceFromAttributes({ 'service.name': config.serviceName }));
  const chosen = sampler(config.sampler, config.samplerArg);
  const ids = new RandomIdGenerator();
  return {
    counts, resource, exporting: processor !== undefined,
    scope: { name: 'driftguard' },
    start(headers, name, kind) {
      // The SDK's Tracer.startSpan does this too, but also builds a Span object with
      // validated attributes and events per request; driftguard builds its spans once, at
      // the end, from the decision record (observation.ts), and only when they are exported.
      const context = headers.traceparent === undefined ? ROOT_CONTEXT : propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
      const parent = trace.getSpanContext(context);
      const valid = parent !== undefined && isSpanContextValid(parent);
      const traceId = valid ? parent.traceId : ids.generateTraceId();
      const result = chosen.shouldSample(context, traceId, name, kind, {}, []);
      const traceState = result.traceState ?? (valid ? parent.traceState : undefined);
      return {
        traceId, spanId: ids.generateSpanId(),
        sampled: result.decision === SamplingDecision.RECORD_AND_SAMPLED,
        ...(valid ? { parent } : {}),
        ...(traceState !== undefined ? { traceState } : {}),
      };
    },
    newSpanId: () => ids.generateSpanId(),
    export(span) { processor?.onEnd(span); },
    async shutdown() {
      // Flush what is queued, but hold shutdown at most SHUTDOWN_FLUSH_MS: the OTLP exporter
      // retries a refused connection until its export timeout (10 s by default), and a pod
      // being stopped should not wait that long for a collector that is not there.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        (processor?.shutdown() ?? Promise.resolve()).catch(() => {}),
        new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.min(config.exportTimeoutMs, SHUTDOWN_FLUSH_MS)); timer.unref(); }),
      ]);
      clearTimeout(timer);
    },
  };
}

