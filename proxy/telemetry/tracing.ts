// The trace pipeline's request-thread half, from OpenTelemetry SDK parts (sdk-trace): the
// sampler the settings name and W3C Trace Context in. Nothing is registered as the
// process-global provider: the global API, an embedding application's own SDK and a second
// driftguard in the same process (tests) are left alone. This is why the pieces are
// assembled here rather than by NodeSDK.start(), which registers globals (and puts the
// console exporter behind a SimpleSpanProcessor, which blocks per span).
//
// There is no Tracer either. A request's spans are known in full only when it ends, and the
// decision record has every fact they carry; so a request takes its ids and sampling
// decision here when it begins, and when it ends the sources of its spans go to the export
// thread (export-thread.ts), which builds the spans there (spans.ts), batches and exports
// them. The SDK's Span would validate each attribute and event as it is set, on every
// request, exported or not: measured, that was about a quarter of what driftguard-core added
// to a request with `exporter: none` (README, Performance).
//
// Export never blocks or fails a request. A span that cannot be exported (queue full,
// collector down, refusing or hanging past the export timeout) is dropped and counted, by
// cause.

import { ROOT_CONTEXT, defaultTextMapGetter, isSpanContextValid, trace, type SpanContext, type SpanKind, type TraceState } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { AlwaysOffSampler, AlwaysOnSampler, ParentBasedSampler, RandomIdGenerator, SamplingDecision, TraceIdRatioBasedSampler, type Sampler } from '@opentelemetry/sdk-trace';
import type { TracesConfig, SamplerName } from './config.ts';
import { ExportThread, noSpanCounts, type SpanCounts, type WarningAbout } from './export-thread.ts';
import type { SpanSource, TraceRef } from './spans.ts';

export type { DropCause, SpanCounts } from './export-thread.ts';

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
  /**
   * Whether a request that is not a plain allow is exported though the head sampler dropped
   * it: every sampler but `always_off`. A caller's sampled flag (`-00`, what a client whose own
   * tracer samples 1% sends on the other 99%) must not hide its refusals from an incident's trace.
   */
  readonly keepsRefusals: boolean;
  /** Continue the caller's trace (traceparent, tracestate) or start one, and sample it. */
  start(headers: Record<string, string | string[] | undefined>, name: string, kind: SpanKind): TraceStart;
  newSpanId(): string;
  /** Send a finished, sampled span's source to the export thread. */
  export(span: SpanSource): void;
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

/**
 * Export failures reported at most once a minute: a collector outage must not flood the log.
 * The thread's own stops are limited apart (a restart comes at most every 5 s): under the same
 * limit, a collector's timeout hid the thread's crash that followed it.
 */
export function limitedWarnings(warn: (message: string) => void, now: () => number = Date.now): (message: string, about: WarningAbout) => void {
  const last: Record<WarningAbout, number> = { export: -Infinity, thread: -Infinity };
  return (message, about) => {
    const at = now();
    if (at - last[about] < 60_000) return;
    last[about] = at;
    warn(message);
  };
}

export function tracing(config: TracesConfig, warn: (message: string) => void): Tracing {
  const onError = limitedWarnings(warn);
  const thread = config.exporter === 'none' ? undefined : new ExportThread(config, onError);
  const chosen = sampler(config.sampler, config.samplerArg);
  const ids = new RandomIdGenerator();
  return {
    counts: thread?.counts ?? noSpanCounts(),
    exporting: thread !== undefined,
    keepsRefusals: thread !== undefined && config.sampler !== 'always_off',
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
    export(span) { thread?.add(span); },
    shutdown: async () => thread?.shutdown(),
  };
}

/** A request's trace as its spans' sources carry it to the export thread. */
export function traceRef(t: TraceStart): TraceRef {
  return {
    traceId: t.traceId, spanId: t.spanId, sampled: t.sampled,
    ...(t.parent ? { parent: { traceId: t.parent.traceId, spanId: t.parent.spanId, traceFlags: t.parent.traceFlags, isRemote: t.parent.isRemote ?? false } } : {}),
    ...(t.traceState !== undefined ? { traceState: t.traceState.serialize() } : {}),
  };
}
