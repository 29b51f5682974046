// A request's two spans, built once it has ended: the SERVER span (the decision) and the
// CLIENT span (the upstream call). The request's thread sends their sources (SpanSource:
// plain data, the decision record among it) to the export thread (export-thread.ts), which
// builds them there as plain ReadableSpans, the SDK's export shape, so the BatchSpanProcessor
// and every OTLP exporter take them as they are. Their attributes are made from the record
// only when the exporter reads them.
//
// Attribute limits are kept by construction, not by truncation at export: every value is
// a fixed vocabulary, a rules value, or capped where it is read from the request (the path
// at 2,048 characters, Host at 256, User-Agent at 512, feature values at 1,024), well under
// the OpenTelemetry default of unlimited and the 4,096 driftguard used to set. One exception:
// the consumer's subject, a verified token's `sub`, is recorded whole (it is what responders
// and /decisions?consumer= match on), bounded only by the 16 KiB a request head may have.

import { SpanKind, SpanStatusCode, TraceFlags, type Attributes, type AttributeValue, type HrTime, type SpanContext, type SpanStatus } from '@opentelemetry/api';
import { TraceState, type InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace';
import type { CheckRecord } from '../pipeline/types.ts';
import { FIELDS, cutBy, type DecisionRecord } from './record.ts';

/**
 * `METHOD route`, or `METHOD`; a method outside the known set (`_OTHER`) is named `HTTP`, as the
 * HTTP semantic conventions name it: `_OTHER` would read as a method.
 */
function spanName(method: string, route: string | undefined): string {
  const m = method === '_OTHER' ? 'HTTP' : method;
  return route !== undefined ? `${m} ${route}` : m;
}

const UNSET: SpanStatus = { code: SpanStatusCode.UNSET };

export type AttributeVisitor = (key: string, value: AttributeValue) => void;

/** Epoch milliseconds (with a fraction) as OpenTelemetry's [seconds, nanoseconds]. */
export function hrTime(ms: number): HrTime {
  const seconds = Math.floor(ms / 1000);
  return [seconds, Math.min(999_999_999, Math.round((ms - seconds * 1000) * 1e6))];
}

function duration(start: HrTime, end: HrTime): HrTime {
  let s = end[0] - start[0];
  let ns = end[1] - start[1];
  if (ns < 0) { s -= 1; ns += 1e9; }
  return [s, ns];
}

/** What the SERVER span says about the request itself, read when it arrived. */
export interface RequestFacts {
  readonly method: string;
  /** The method as sent, when it is not one HTTP defines (method is then `_OTHER`). */
  readonly methodOriginal?: string;
  readonly serverAddress?: string;
  readonly serverPort?: number;
  readonly clientAddress?: string;
  readonly protocolVersion: string;
  readonly userAgent?: string;
}

/**
 * A request's trace as it crosses to the export thread: plain data (a message between
 * threads keeps no prototypes), the trace state in its W3C form.
 */
export interface TraceRef {
  readonly traceId: string;
  /** The SERVER span's id. */
  readonly spanId: string;
  readonly sampled: boolean;
  /** The caller's span, when the request carried a valid traceparent. */
  readonly parent?: { readonly traceId: string; readonly spanId: string; readonly traceFlags: number; readonly isRemote?: boolean };
  readonly traceState?: string;
}

/**
 * What a request's spans are built from, sent from the request's thread to the export thread:
 * the SERVER span's facts and record, and the upstream call's, when there was one.
 */
export interface SpanSource {
  readonly trace: TraceRef;
  readonly facts: RequestFacts;
  readonly record: DecisionRecord;
  readonly checksAtMs: number;
  readonly endMs: number;
  readonly call?: UpstreamCall;
}

/** Where every span of one driftguard comes from, as exporters report it. */
export interface SpanOrigin {
  readonly resource: Resource;
  readonly scope: InstrumentationScope;
}

abstract class FinishedSpan implements ReadableSpan {
  abstract readonly name: string;
  abstract readonly kind: SpanKind;
  readonly parentSpanContext?: SpanContext;
  readonly startTime: HrTime;
  readonly endTime: HrTime;
  readonly links = [];
  readonly ended = true;
  readonly resource: ReadableSpan['resource'];
  readonly instrumentationScope: ReadableSpan['instrumentationScope'];
  readonly droppedAttributesCount = 0;
  readonly droppedEventsCount = 0;
  readonly droppedLinksCount = 0;
  readonly #context: SpanContext;
  #attributes?: Attributes;

  constructor(origin: SpanOrigin, context: SpanContext, parent: SpanContext | undefined, startMs: number, endMs: number) {
    this.#context = context;
    if (parent) this.parentSpanContext = parent;
    this.startTime = hrTime(startMs);
    this.endTime = hrTime(endMs);
    this.resource = origin.resource;
    this.instrumentationScope = origin.scope;
  }

  spanContext(): SpanContext { return this.#context; }
  get duration(): HrTime { return duration(this.startTime, this.endTime); }
  get attributes(): Attributes {
    if (!this.#attributes) {
      const a: Attributes = {};
      this.eachAttribute((key, value) => { a[key] = value; });
      this.#attributes = a;
    }
    return this.#attributes;
  }

  abstract get events(): TimedEvent[];
  abstract get status(): SpanStatus;
  /**
   * Each attribute in its order, without building the object: driftguard's encoder writes
   * them straight to the wire (otlp-proto.ts), and `attributes` is built from the same calls
   * for every other exporter.
   */
  abstract eachAttribute(visit: AttributeVisitor): void;
}

/** A span of this driftguard's in `trace` (so never remote). */
function contextOf(trace: TraceRef, spanId: string): SpanContext {
  return {
    traceId: trace.traceId, spanId, isRemote: false,
    traceFlags: trace.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
    ...(trace.traceState !== undefined ? { traceState: new TraceState(trace.traceState) } : {}),
  };
}

/**
 * A check event's attributes: one frozen object per outcome and reason, shared by every span,
 * which lets the encoder reuse the event's bytes (otlp-proto.ts).
 */
const checkAttributeSets = new Map<string, Attributes>();

function checkAttributes(c: CheckRecord): Attributes {
  const withReason = c.reason !== undefined && c.outcome !== 'continue';
  const key = withReason ? `${c.outcome} ${c.reason}` : c.outcome;
  let attrs = checkAttributeSets.get(key);
  if (!attrs) {
    attrs = Object.freeze(withReason
      ? { 'driftguard.check.outcome': c.outcome, 'driftguard.check.reason': c.reason }
      : { 'driftguard.check.outcome': c.outcome });
    checkAttributeSets.set(key, attrs);
  }
  return attrs;
}

/** The decision: HTTP semantic conventions, the record's `driftguard.*` fields, one event per check. */
export class ServerSpan extends FinishedSpan {
  readonly kind = SpanKind.SERVER;
  readonly name: string;
  readonly #facts: RequestFacts;
  readonly #record: DecisionRecord;
  readonly #checksAtMs: number;

  constructor(origin: SpanOrigin, s: SpanSource) {
    super(origin, contextOf(s.trace, s.trace.spanId), s.trace.parent, s.record.timeMs, s.endMs);
    this.#facts = s.facts;
    this.#record = s.record;
    this.#checksAtMs = s.checksAtMs;
    this.name = spanName(s.facts.method, s.record.route);
  }

  // HTTP semantic conventions: a server span is an error only for 5xx; a deny is a
  // decision, not a failure (driftguard.decision says it).
  // An answer the upstream cut short is one too: the caller got part of it.
  get status(): SpanStatus {
    const r = this.#record;
    if ((r.status ?? 0) >= 500) return { code: SpanStatusCode.ERROR, message: r.reason };
    return upstreamCut(r) ? { code: SpanStatusCode.ERROR, message: r.cut! } : UNSET;
  }

  get events(): TimedEvent[] {
    const time = hrTime(this.#checksAtMs);
    return this.#record.checks.map((c: CheckRecord) => ({ name: c.check, time, attributes: checkAttributes(c) }));
  }

  eachAttribute(visit: AttributeVisitor): void {
    const f = this.#facts;
    const r = this.#record;
    visit('http.request.method', f.method);
    if (f.methodOriginal !== undefined) visit('http.request.method_original', f.methodOriginal);
    visit('url.scheme', 'http');
    if (f.serverAddress) visit('server.address', f.serverAddress);
    if (f.serverPort !== undefined) visit('server.port', f.serverPort);
    if (f.clientAddress) visit('client.address', f.clientAddress);
    visit('network.protocol.version', f.protocolVersion);
    if (f.userAgent) visit('user_agent.original', f.userAgent);
    if (r.route !== undefined) visit('http.route', r.route);
    visit('url.path', r.path);
    // 0: the client left before any answer, and a span without a response has no status code.
    if (r.status) visit('http.response.status_code', r.status);
    for (const [key, attr] of FIELDS) {
      const v = r[key];
      if (v !== undefined) visit(attr, v as AttributeValue);
    }
    if (r.extra) for (const key in r.extra) visit('driftguard.' + key, r.extra[key]!);
    if ((r.status ?? 0) >= 500) visit('error.type', String(r.status));
    else if (upstreamCut(r)) visit('error.type', r.cut!);
  }
}

/**
 * The upstream or driftguard's drain cut an answer that had started: a failure. Not the client
 * leaving, nor driftguard enforcing (a revocation, reloaded rules): those are decisions.
 */
function upstreamCut(r: DecisionRecord): boolean {
  const by = cutBy(r);
  return by === 'upstream' || by === 'drain';
}

/** Where the upstream is: one object per rules' upstream, shared by every call to it. */
export interface Upstream {
  readonly address: string;
  readonly port: number;
  readonly origin: string;
}

/**
 * What the CLIENT span records of the upstream call; its method, route and path are the
 * request's (the SERVER span's), and `upstream` is shared, so a message of many sources
 * carries it once.
 */
export interface UpstreamCall {
  /** The span's id: what the upstream received in traceparent. */
  readonly spanId: string;
  readonly upstream: Upstream;
  readonly startMs: number;
  readonly endMs: number;
  readonly status?: number;
  /** Why the call failed (upstream-unavailable, upstream-timeout, an error name, aborted). */
  readonly error?: string;
  /** Sent twice: the first attempt's kept-alive connection was closed under it. */
  readonly resent?: true;
}

/** The upstream call: its context is what the upstream received in traceparent. */
export class ClientSpan extends FinishedSpan {
  readonly kind = SpanKind.CLIENT;
  readonly name: string;
  readonly #call: UpstreamCall;
  readonly #method: string;
  readonly #template?: string;
  readonly #path: string;

  /** `server`: the SERVER span's context, the parent; this span's differs only in its id. */
  constructor(origin: SpanOrigin, s: SpanSource, call: UpstreamCall, server: SpanContext) {
    super(origin, { ...server, spanId: call.spanId }, server, call.startMs, call.endMs);
    this.#call = call;
    this.#method = s.facts.method;
    if (s.record.route !== undefined) this.#template = s.record.route;
    this.#path = s.record.path;
    this.name = spanName(this.#method, this.#template);
  }

  get events(): TimedEvent[] { return []; }

  get status(): SpanStatus {
    const c = this.#call;
    if (c.error !== undefined) return { code: SpanStatusCode.ERROR, message: c.error };
    return c.status !== undefined && c.status >= 400 ? { code: SpanStatusCode.ERROR } : UNSET;
  }

  eachAttribute(visit: AttributeVisitor): void {
    const c = this.#call;
    visit('http.request.method', this.#method);
    if (this.#template !== undefined) visit('url.template', this.#template);
    visit('server.address', c.upstream.address);
    visit('server.port', c.upstream.port);
    visit('url.full', c.upstream.origin + this.#path);
    if (c.status !== undefined) visit('http.response.status_code', c.status);
    // One span for both attempts (semantic conventions would have one each): it says so.
    if (c.resent) visit('http.request.resend_count', 1);
    if (c.error !== undefined) visit('error.type', c.error);
    else if (c.status !== undefined && c.status >= 400) visit('error.type', String(c.status));
  }
}

/** The request's spans: the upstream call's CLIENT span first, as it ended first. */
export function spansOf(origin: SpanOrigin, source: SpanSource): ReadableSpan[] {
  const server = new ServerSpan(origin, source);
  // The CLIENT span shares the SERVER span's context, trace state included: parsed once.
  return source.call ? [new ClientSpan(origin, source, source.call, server.spanContext()), server] : [server];
}
