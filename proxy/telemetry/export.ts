// Span export, as it runs on the export thread (export-worker.ts): the exporter the settings
// name (OTLP over http/protobuf, http/json or grpc, or the console) behind one SDK
// BatchSpanProcessor, the resource every span carries, and reports of what was exported and
// what was dropped. Only the export thread loads this module, and only the exporter
// configured is loaded (the gRPC one brings a whole gRPC stack).

import { createNoopMeter, TraceFlags, type Meter, type MeterProvider } from '@opentelemetry/api';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { defaultResource, detectResources, hostDetector, resourceAttributesEnvDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, ConsoleSpanExporter, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace';
import type { ISerializer } from '@opentelemetry/otlp-transformer';
import type { TracesConfig } from './config.ts';
import { spansOf, type SpanOrigin, type SpanSource } from './spans.ts';
import { atMost } from '../lib/wait.ts';
import type { Agent as HttpAgent, ClientRequest } from 'node:http';

/**
 * What a collector said of spans it took but would not keep: OTLP's partial success, a
 * successful answer (200, or gRPC OK) whose `partialSuccess` names `rejectedSpans` and an
 * `errorMessage`. The SDK passes it only to `diag.warn`, so those spans were counted exported.
 */
export interface Rejection {
  readonly spans: number;
  readonly message: string;
}

/** Rejected spans as the response decoder gives them: a number, an int64 as text (JSON) or a protobufjs Long. */
function spanCount(v: unknown): number {
  const n = typeof v === 'object' && v !== null && 'toNumber' in v ? (v as { toNumber(): number }).toNumber() : Number(v ?? 0);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

/** The collector's text in a log line: one line, bounded. It is the collector's, not a caller's. */
function collectorText(v: unknown): string {
  return typeof v === 'string' ? v.replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, 200) : '';
}

/**
 * `serializer` with each decoded response's partial success noted for `take`. The exporter
 * decodes an answer and calls its export's callback in the same turn, one after the other,
 * so the note taken in that callback (ReportingExporter) is its own request's answer.
 */
function noting<Request, Response>(serializer: ISerializer<Request, Response>): { serializer: ISerializer<Request, Response>; take(): Rejection | undefined } {
  let noted: Rejection | undefined;
  return {
    serializer: {
      serializeRequest: (request) => serializer.serializeRequest(request),
      deserializeResponse: (data) => {
        noted = undefined;
        const response = serializer.deserializeResponse(data);
        const partial = (response as { partialSuccess?: { rejectedSpans?: unknown; errorMessage?: unknown } } | undefined)?.partialSuccess;
        const rejection = { spans: spanCount(partial?.rejectedSpans), message: collectorText(partial?.errorMessage) };
        if (rejection.spans > 0 || rejection.message !== '') noted = rejection;
        return response;
      },
    },
    take() { const r = noted; noted = undefined; return r; },
  };
}

/** The exporter the settings name, and how to read the partial success of the request it last had answered. */
async function exporter(config: TracesConfig): Promise<{ exporter: SpanExporter; rejection(): Rejection | undefined }> {
  if (config.exporter === 'console') return { exporter: new ConsoleSpanExporter(), rejection: () => undefined };
  // Without a url the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT and _HEADERS itself.
  const options = { timeoutMillis: config.exportTimeoutMs, ...(config.url !== undefined ? { url: config.url } : {}) };
  const [{ OTLPExporterBase }, { ProtobufTraceSerializer, TraceExporterMetricsHelper, JsonTraceSerializer }] = await Promise.all([
    import('@opentelemetry/otlp-exporter-base'), import('@opentelemetry/otlp-transformer'),
  ]);
  if (config.protocol === 'grpc') {
    // The SDK's gRPC OTLPTraceExporter as it builds itself, with the response decoder noting.
    const grpc = await import('@opentelemetry/otlp-grpc-exporter-base');
    const noted = noting(ProtobufTraceSerializer);
    return {
      exporter: new OTLPExporterBase(grpc.createOtlpGrpcExportDelegate(grpc.convertLegacyOtlpGrpcOptions(options, 'TRACES'), noted.serializer,
        'otlp_grpc_span_exporter', TraceExporterMetricsHelper, undefined, 'TraceExportService', '/opentelemetry.proto.collector.trace.v1.TraceService/Export')),
      rejection: noted.take,
    };
  }
  // The SDK's OTLP/HTTP exporter as its OTLPTraceExporter builds it (its transport, retries,
  // OTEL_EXPORTER_OTLP_* settings), with a deadline on each request (withDeadline) and, over
  // http/protobuf, driftguard's span encoder in place of the SDK's serializer (otlp-proto.ts).
  const json = config.protocol === 'http/json';
  const [http, proto] = await Promise.all([import('@opentelemetry/otlp-exporter-base/node-http'), json ? undefined : import('./otlp-proto.ts')]);
  const settings = http.convertLegacyHttpOptions(options, 'TRACES', 'v1/traces', { 'Content-Type': json ? 'application/json' : 'application/x-protobuf' });
  const agentFor = settings.agentFactory;
  settings.agentFactory = async (protocol) => withDeadline(await agentFor(protocol), config.exportTimeoutMs + DEADLINE_MARGIN_MS);
  const noted = noting(proto?.traceSerializer ?? JsonTraceSerializer);
  return {
    exporter: new OTLPExporterBase(http.createOtlpHttpExportDelegate(settings, noted.serializer, 'otlp_http_span_exporter', TraceExporterMetricsHelper, undefined)),
    rejection: noted.take,
  };
}

/**
 * About what a span's text takes, for the queue's byte bound where spans are held as objects:
 * its name, attribute keys and values, events and links. The same span gives the same figure
 * when it is queued and when it is settled.
 */
function textBytes(span: ReadableSpan): number {
  let n = 64 + span.name.length + attributesBytes(span.attributes);
  for (const e of span.events) n += 32 + e.name.length + attributesBytes(e.attributes ?? {});
  for (const l of span.links) n += 48 + attributesBytes(l.attributes ?? {});
  return n;
}

function attributesBytes(attributes: Readonly<Record<string, unknown>>): number {
  let n = 0;
  for (const key in attributes) {
    const v = attributes[key];
    n += key.length + 8;
    if (typeof v === 'string') n += v.length;
    else if (Array.isArray(v)) for (const x of v) n += typeof x === 'string' ? x.length + 8 : 8;
  }
  return n;
}

/** After the export timeout, what the exporter waits before it reports the export failed (ReportingExporter). */
const DEADLINE_MARGIN_MS = 500;

/**
 * `agent` with every request it carries destroyed `ms` after it was made. The exporter's own
 * timeout is an idle timeout: a collector that trickles its answer (never idle, never done)
 * held each export's request open, and after 30 of them (the exporter's concurrency limit)
 * every export was refused until the collector let go. Node's ClientRequest hands itself to
 * its agent's addRequest(), the hook proxy agents use too; the agent's sockets, pooling and TLS
 * options (OTEL_EXPORTER_OTLP_CERTIFICATE and the like) are the exporter's own.
 */
function withDeadline<A extends HttpAgent>(agent: A, ms: number): A {
  const hooked = agent as A & { addRequest(req: ClientRequest, options: unknown): void };
  const add = hooked.addRequest.bind(agent);
  hooked.addRequest = (req, options) => {
    const timer = setTimeout(() => req.destroy(new Error(`export took longer than ${ms}ms`)), ms).unref();
    req.once('close', () => clearTimeout(timer));
    add(req, options);
  };
  return agent;
}

/** What the export side reports back: spans settled (exported or dropped) and failures. */
export interface ExportReports {
  /** `rejected`: spans a collector answered for as rejected (a partial success), not exported. */
  settled(exported: number, queueFull: number, exportFailed: number, rejected?: number): void;
  failed(message: string): void;
}

/**
 * Calls back exactly once per batch, within the export timeout of each of its requests even
 * when the exporter never answers (a hanging collector), and reports what was exported and
 * what was dropped. A batch that `split` cuts in parts goes out as one export request per
 * part, one after the other; the batch has succeeded when every part has.
 */
interface BatchParts {
  readonly split?: (spans: ReadableSpan[]) => ReadableSpan[][];
  readonly settled?: (spans: ReadableSpan[]) => void;
  /** The partial success of the answer the exporter is calling back for, if it had one. */
  readonly rejection?: () => Rejection | undefined;
}

/**
 * Batches exported at once, at most. At shutdown the batch processor starts every queued batch
 * at once (over http/json and grpc, up to 64 batches of 64): past the exporter's limit of 30
 * requests in flight the rest failed at once, spans lost with a healthy collector. In between,
 * the processor exports one batch at a time anyway.
 */
const BATCHES_IN_FLIGHT = 8;

class ReportingExporter implements SpanExporter {
  readonly #inner: SpanExporter;
  readonly #timeoutMs: number;
  readonly #reports: ExportReports;
  readonly #split: (spans: ReadableSpan[]) => ReadableSpan[][];
  readonly #settled: (spans: ReadableSpan[]) => void;
  readonly #rejection: () => Rejection | undefined;

  /** `split` cuts a batch in parts; `settled` is called with a batch's spans once it is exported or failed. */
  constructor(inner: SpanExporter, timeoutMs: number, reports: ExportReports, parts: BatchParts = {}) {
    this.#inner = inner; this.#timeoutMs = timeoutMs; this.#reports = reports;
    this.#split = parts.split ?? ((spans) => [spans]);
    this.#settled = parts.settled ?? (() => {});
    this.#rejection = parts.rejection ?? (() => undefined);
  }

  /** Batches being exported, and those waiting for their turn (BATCHES_IN_FLIGHT). */
  #inFlight = 0;
  readonly #waiting: (() => void)[] = [];
  readonly #idle: (() => void)[] = [];

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    const run = (): void => {
      this.#inFlight++;
      this.#exportBatch(spans, (result) => {
        this.#inFlight--;
        const next = this.#waiting.shift();
        if (next) next();
        else if (this.#inFlight === 0) for (const idle of this.#idle.splice(0)) idle();
        resultCallback(result);
      });
    };
    if (this.#inFlight < BATCHES_IN_FLIGHT) run(); else this.#waiting.push(run);
  }

  /** Once no batch is being exported or waits to be: a shutdown's flush is over then. */
  settledAll(): Promise<void> {
    return this.#inFlight === 0 && this.#waiting.length === 0 ? Promise.resolve() : new Promise((resolve) => { this.#idle.push(resolve); });
  }

  #exportBatch(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    // One part after the other: parts sent together could pass the exporter's limit of 30
    // requests in flight, which fails the rest at once ("Concurrent export limit reached").
    const parts = this.#split(spans);
    let failure: ExportResult | undefined;
    const next = (i: number): void => {
      this.#exportPart(parts[i]!, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) failure ??= result;
        if (i + 1 < parts.length) next(i + 1);
        else { this.#settled(spans); resultCallback(failure ?? result); }
      });
    };
    next(0);
  }

  #exportPart(spans: ReadableSpan[], partDone: (result: ExportResult) => void): void {
    let done = false;
    const finish = (result: ExportResult) => {
      // Taken whatever happens next, so that no answer's note is left for another request's.
      const rejection = this.#rejection();
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (result.code === ExportResultCode.SUCCESS) {
        const rejected = Math.min(rejection?.spans ?? 0, spans.length);
        this.#reports.settled(spans.length - rejected, 0, 0, rejected);
        if (rejection) {
          const said = rejection.message !== '' ? `: ${rejection.message}` : '';
          this.#reports.failed(rejected > 0 ? `the collector rejected ${rejected} of ${spans.length} spans${said}` : `the collector took the spans with a warning${said}`);
        }
      } else {
        this.#reports.settled(0, 0, spans.length);
        this.#reports.failed(result.error?.message ?? 'export failed');
      }
      partDone(result);
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
 * At most this many bytes of encoded spans in one export request (the resource and scope add
 * a few hundred). A request body above 1 MiB is refused by common defaults in front of a
 * collector (nginx's client_max_body_size, for one) with a 413, which the exporter does not
 * retry: the whole batch would be lost. 512 typical spans make about 500 KB; 512 spans at
 * driftguard's caps (a 2 KiB path, long delegation chains) about 3.4 MB.
 */
const MAX_EXPORT_BYTES = 1_000_000;

/** Consecutive parts of at most MAX_EXPORT_BYTES of encoded spans (a larger span alone); one part at least, so that every batch is called back. */
function byEncodedBytes(encodedLength: (span: ReadableSpan) => number | undefined): (spans: ReadableSpan[]) => ReadableSpan[][] {
  return (spans) => {
    const parts: ReadableSpan[][] = [];
    let part: ReadableSpan[] = [];
    let bytes = 0;
    for (const span of spans) {
      const n = encodedLength(span) ?? 0;
      if (part.length > 0 && bytes + n > MAX_EXPORT_BYTES) { parts.push(part); part = []; bytes = 0; }
      part.push(span);
      bytes += n;
    }
    if (part.length > 0 || parts.length === 0) parts.push(part);
    return parts;
  };
}

/**
 * The batch processor reports spans it refused because its queue was full only through its
 * self-observability meter (otel.sdk.processor.span.processed with error.type=queue_full):
 * this minimal MeterProvider listens to that one counter and ignores everything else.
 */
function queueFullListener(reports: ExportReports): MeterProvider {
  const noop = createNoopMeter();
  const meter: Meter = Object.create(noop) as Meter;
  meter.createCounter = ((name: string, options?: unknown) => {
    if (name !== 'otel.sdk.processor.span.processed') return noop.createCounter(name, options as undefined);
    return {
      add(n: number, attributes?: Record<string, unknown>) {
        if (attributes?.['error.type'] === 'queue_full') reports.settled(0, n, 0);
      },
    };
  }) as Meter['createCounter'];
  return { getMeter: () => meter };
}

export interface SpanExport {
  /** Build the sources' spans (one or two each) and queue them for the next batch. */
  add(sources: readonly SpanSource[]): void;
  /** Export what is queued, waiting at most `flushMs` (or the export timeout, if shorter). */
  shutdown(flushMs: number): Promise<void>;
}

export async function spanExport(config: TracesConfig, reports: ExportReports): Promise<SpanExport> {
  // With driftguard's own encoder (http/protobuf), spans are encoded as they arrive and a
  // batch is a copy of their bytes (otlp-proto.ts, preEncode), sent in parts of at most
  // MAX_EXPORT_BYTES.
  const own = config.exporter === 'otlp' && config.protocol === 'http/protobuf' ? await import('./otlp-proto.ts') : undefined;
  // Bytes of encoded spans queued or being exported: they live outside this thread's heap
  // limits (Uint8Arrays), so maxQueueSize alone let a queue of spans at the caps hold 36 MiB.
  // Counted for every span the processor keeps: sampled ones (sources come only for sampled
  // requests) before shutdown. The spans are counted too, and refused here at maxQueueSize:
  // the processor then never drops one for its own full queue, which would leave its bytes
  // counted for good (the request thread keeps to maxQueueSize as well, but this does not
  // rest on it).
  let queuedBytes = 0;
  let queuedSpans = 0;
  let closing = false;
  // Over http/json and grpc the SDK encodes a batch when it goes: a span is held as objects,
  // counted by its text (textBytes). A queue bounded by count alone, of spans at the caps, ran
  // the thread out of its heap while a collector hung, and it died at every fill.
  const bytesOf = own ? (span: ReadableSpan) => own.encodedLength(span) ?? 0 : textBytes;
  const parts: BatchParts = {
    ...(own ? { split: byEncodedBytes(own.encodedLength) } : {}),
    settled: (spans) => {
      for (const s of spans) queuedBytes -= bytesOf(s);
      queuedSpans -= spans.length;
    },
  };
  const chosen = await exporter(config);
  const reporting = new ReportingExporter(chosen.exporter, config.exportTimeoutMs, reports, { ...parts, rejection: chosen.rejection });
  const processor = new BatchSpanProcessor({
    exporter: reporting,
    maxQueueSize: config.maxQueueSize,
    maxExportBatchSize: config.maxExportBatchSize,
    scheduledDelayMillis: config.scheduledDelayMs,
    // The exporter's own timeout fires first; this is the processor's last resort.
    exportTimeoutMillis: config.exportTimeoutMs + 2_000,
    selfObsMeterProvider: queueFullListener(reports),
  });
  const origin: SpanOrigin = {
    resource: defaultResource()
      .merge(detectResources({ detectors: [hostDetector, resourceAttributesEnvDetector] }))
      .merge(resourceFromAttributes({ 'service.name': config.serviceName })),
    scope: { name: 'driftguard' },
  };
  return {
    add(sources) {
      const spans: ReadableSpan[] = [];
      for (const s of sources) for (const span of spansOf(origin, s)) spans.push(span);
      let refused = 0;
      const kept: ReadableSpan[] = [];
      for (const span of own ? own.preEncode(spans) : spans) {
        const bytes = bytesOf(span);
        if (!closing && (queuedBytes + bytes > config.maxQueueBytes || queuedSpans >= config.maxQueueSize)) { refused++; continue; }
        if (!closing && (span.spanContext().traceFlags & TraceFlags.SAMPLED) !== 0) { queuedBytes += bytes; queuedSpans++; }
        kept.push(span);
      }
      // A message's spans share one buffer: when some were refused, the kept ones take their
      // own bytes, or the refused ones' would stay in memory, uncounted, as long as they live.
      for (const span of kept) processor.onEnd(refused && own ? own.detached(span) : span);
      if (refused) reports.settled(0, refused, 0);
    },
    async shutdown(flushMs) {
      closing = true;
      // Flush what is queued, but hold shutdown at most flushMs: the OTLP exporter
      // retries a refused connection until its export timeout (10 s by default), and a pod
      // being stopped should not wait that long for a collector that is not there.
      // And wait for every batch, not for the first to fail: the processor's flush gives up at
      // the first failed batch (Promise.all), and the thread was then ended with the others
      // still being exported, delivered spans counted as export_failed.
      const flushed = processor.shutdown().catch(() => {}).then(() => reporting.settledAll());
      await atMost(flushed, Math.min(config.exportTimeoutMs, flushMs));
    },
  };
}
