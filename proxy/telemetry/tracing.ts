// The trace pipeline: an OpenTelemetry TracerProvider (sdk-trace) with one BatchSpanProcessor
// in front of the exporter the settings name (OTLP over http/protobuf, http/json or grpc, or
// the console), W3C Trace Context in and out. It is driftguard's own provider, never
// registered as the process-global one: the global API, an embedding application's own SDK
// and a second driftguard in the same process (tests) are left alone. This is why the
// pieces are assembled here rather than by NodeSDK.start(), which registers globals (and
// puts the console exporter behind a SimpleSpanProcessor, which blocks per span).
//
// Export never blocks or fails a request: spans are queued and exported in batches off the
// request path. A span that cannot be exported (queue full, collector down, refusing or
// hanging past the export timeout) is dropped and counted, by cause.

import { ROOT_CONTEXT, SpanKind, createNoopMeter, defaultTextMapGetter, defaultTextMapSetter, trace, type Context, type Meter, type MeterProvider, type Span, type Tracer } from '@opentelemetry/api';
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from '@opentelemetry/core';
import { defaultResource, detectResources, hostDetector, resourceAttributesEnvDetector, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler, AlwaysOnSampler, BatchSpanProcessor, ConsoleSpanExporter, ParentBasedSampler, TraceIdRatioBasedSampler, TracerProvider,
  type ReadableSpan, type Sampler, type SpanExporter,
} from '@opentelemetry/sdk-trace';
import { OTLPTraceExporter as OtlpProtobuf } from '@opentelemetry/exporter-trace-otlp-proto';
import { OTLPTraceExporter as OtlpJson } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as OtlpGrpc } from '@opentelemetry/exporter-trace-otlp-grpc';
import type { TracesConfig, SamplerName } from './config.ts';

export type DropCause = 'queue_full' | 'export_failed';

export interface SpanCounts {
  exported: number;
  dropped: Record<DropCause, number>;
}

export interface Tracing {
  readonly tracer: Tracer;
  readonly counts: SpanCounts;
  /** The caller's trace context (traceparent, tracestate), or the root context. */
  extract(headers: Record<string, string | string[] | undefined>): Context;
  /** Write traceparent/tracestate for `span` into `into`. */
  inject(span: Span, into: Record<string, string>): void;
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
    default: return new OtlpProtobuf(options);
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
  const processors = inner ? [new BatchSpanProcessor({
    exporter: new CountingExporter(inner, config.exportTimeoutMs, counts, onError),
    maxQueueSize: config.maxQueueSize,
    maxExportBatchSize: config.maxExportBatchSize,
    scheduledDelayMillis: config.scheduledDelayMs,
    // The exporter's own timeout fires first; this is the processor's last resort.
    exportTimeoutMillis: config.exportTimeoutMs + 2_000,
    selfObsMeterProvider: queueFullListener(counts),
  })] : [];
  const resource = defaultResource()
    .merge(detectResources({ detectors: [hostDetector, resourceAttributesEnvDetector] }))
    .merge(resourceFromAttributes({ 'service.name': config.serviceName }));
  const provider = new TracerProvider({
    resource,
    sampler: sampler(config.sampler, config.samplerArg),
    spanProcessors: processors,
    spanLimits: { attributeValueLengthLimit: 4096, attributeCountLimit: 128, eventCountLimit: 64 },
  });
  const tracer = provider.getTracer('driftguard');
  return {
    tracer, counts,
    extract(headers) {
      if (headers.traceparent === undefined) return ROOT_CONTEXT;
      return propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
    },
    inject(span, into) {
      propagator.inject(trace.setSpan(ROOT_CONTEXT, span), into, defaultTextMapSetter);
    },
    async shutdown() {
      // Flush what is queued, but hold shutdown at most SHUTDOWN_FLUSH_MS: the OTLP exporter
      // retries a refused connection until its export timeout (10 s by default), and a pod
      // being stopped should not wait that long for a collector that is not there.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        provider.shutdown().catch(() => {}),
        new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.min(config.exportTimeoutMs, SHUTDOWN_FLUSH_MS)); timer.unref(); }),
      ]);
      clearTimeout(timer);
    },
  };
}

