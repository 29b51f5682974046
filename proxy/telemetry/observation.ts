// What telemetry does for one request, at the points the server reports (proxy/observe.ts):
// begin: continue the caller's trace (or start one) and take the SERVER span's id and
// sampling decision; decided: note the time of the checks' verdicts; upstreamHeaders/
// forwarding/forwarded: the CLIENT span around the upstream call, whose id the upstream
// receives in traceparent; end: the decision record, from which the spans (spans.ts), the
// metrics, the decision log line and the /decisions entry are all made.
// One object per request, methods on the prototype: no closures on the hot path.

import { performance } from 'node:perf_hooks';
import { SpanKind } from '@opentelemetry/api';
import type { Observation } from '../observe.ts';
import type { Decision, RequestContext } from '../pipeline/types.ts';
import type { ForwardOutcome } from '../forward/forward.ts';
import { buildRecord, logLine, pathOf } from './record.ts';
import { traceRef, type TraceStart, type Tracing } from './tracing.ts';
import type { RequestFacts, TraceRef, UpstreamCall } from './spans.ts';
import type { Instruments } from './instruments.ts';
import type { DecisionLog } from './decision-log.ts';
import type { Ring } from './recent.ts';

/** Shared by every observation of one driftguard. */
export interface Sink {
  readonly tracing: Tracing;
  readonly instruments: Instruments;
  readonly log: DecisionLog;
  readonly allowSampleRate: number;
  readonly ring: Ring;
}

interface Upstream { readonly text: string; readonly address: string; readonly port: number; readonly origin: string }
let lastUpstream: Upstream | undefined;

/** The upstream's address for the CLIENT span, parsed once per rules' upstream, not per request. */
function upstreamOf(text: string): Upstream {
  if (lastUpstream?.text === text) return lastUpstream;
  const u = new URL(text);
  const port = u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
  return (lastUpstream = { text, address: u.hostname, port, origin: u.origin });
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY']);

function hostAndPort(host: string | undefined): [string, number | undefined] {
  if (!host) return ['', undefined];
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(host);
  if (!m) return ['', undefined];
  return [m[1]!.slice(0, 256), m[2] !== undefined ? Number(m[2]) : undefined];
}

export class RequestObservation implements Observation {
  readonly traceId: string;
  readonly #sink: Sink;
  readonly #ctx: RequestContext;
  readonly #trace: TraceStart;
  /** Built only when the spans will be exported. */
  readonly #facts?: RequestFacts;
  #ref?: TraceRef;
  readonly #method: string;
  readonly #start: number;
  #decision?: Decision;
  #decidedAt = 0;
  #client?: UpstreamCall;
  #clientSpanId?: string;
  #forwardStart = 0;
  #upstreamMs = 0;
  #forwarded = false;
  /** forwarding() was reported and forwarded() not yet. */
  #forwarding = false;
  /** end() came while forwarding was still being reported: finish when it is. */
  #pendingStatus?: number;
  #failure?: string;
  #ended = false;

  constructor(sink: Sink, ctx: RequestContext) {
    this.#sink = sink;
    this.#ctx = ctx;
    this.#start = performance.now();
    const req = ctx.req;
    const method = req.method !== undefined && METHODS.has(req.method) ? req.method : '_OTHER';
    this.#method = method;
    const t = sink.tracing.start(req.headers, method, SpanKind.SERVER);
    this.#trace = t;
    this.traceId = t.traceId;
    if (t.sampled && sink.tracing.exporting) {
      // Read now: the socket may be gone by the time the request ends.
      const [address, port] = hostAndPort(req.headers.host);
      const ua = req.headers['user-agent'];
      this.#facts = {
        method,
        ...(method === '_OTHER' && req.method !== undefined ? { methodOriginal: req.method.slice(0, 64) } : {}),
        ...(address ? { serverAddress: address } : {}),
        ...(port !== undefined ? { serverPort: port } : {}),
        ...(req.socket.remoteAddress ? { clientAddress: req.socket.remoteAddress } : {}),
        protocolVersion: req.httpVersion,
        ...(ua ? { userAgent: ua.slice(0, 512) } : {}),
      };
    }
  }

  /** Epoch ms at a performance.now() reading, on the request's own clock (arrival time plus monotonic time since). */
  #epoch(at = performance.now()): number {
    return this.#ctx.now + (at - this.#start);
  }

  /** A W3C traceparent (or Level 2 traceresponse) value for `spanId` in this request's trace. */
  #w3c(spanId: string): string {
    return `00-${this.#trace.traceId}-${spanId}-${this.#trace.sampled ? '01' : '00'}`;
  }

  responseHeaders(into: Record<string, string | string[]>): void {
    // W3C Trace Context Level 2: the trace and the span that answered, for the caller's records.
    into['traceresponse'] = this.#w3c(this.#trace.spanId);
  }

  decided(decision: Decision): void {
    this.#decision = decision;
    this.#decidedAt = this.#epoch();
  }

  upstreamHeaders(into: Record<string, string>): void {
    // The CLIENT span is the upstream request's parent: its id goes out in traceparent.
    const spanId = this.#sink.tracing.newSpanId();
    this.#clientSpanId = spanId;
    into['traceparent'] = this.#w3c(spanId);
    const state = this.#trace.traceState?.serialize();
    if (state) into['tracestate'] = state;
    if (this.#facts) {
      const op = this.#ctx.operation;
      const up = upstreamOf(this.#ctx.rules.proxy.upstream);
      this.#client = {
        method: this.#method, address: up.address, port: up.port, url: up.origin + pathOf(this.#ctx),
        ...(op ? { template: op.path } : {}),
      };
    }
  }

  forwarding(): void {
    this.#forwardStart = performance.now();
    this.#forwarded = true;
    this.#forwarding = true;
  }

  forwarded(outcome: ForwardOutcome): void {
    const now = performance.now();
    this.#upstreamMs = now - this.#forwardStart;
    this.#forwarding = false;
    if (outcome.failure) this.#failure = outcome.failure;
    const call = this.#client;
    if (call) {
      if (outcome.status !== undefined) call.status = outcome.status;
      if (outcome.failure || outcome.aborted) call.error = outcome.failure ?? outcome.error ?? 'aborted';
      this.#exportClient(call, now);
    }
    if (this.#pendingStatus !== undefined) this.end(this.#pendingStatus);
  }

  /** The CLIENT span, from the start of forwarding to `endAt` (a performance.now() reading). */
  #exportClient(call: UpstreamCall, endAt: number): void {
    this.#sink.tracing.export({ kind: 'client', trace: this.#traceRef(), spanId: this.#clientSpanId!, call, startMs: this.#epoch(this.#forwardStart), endMs: this.#epoch(endAt) });
    this.#client = undefined;
  }

  #traceRef(): TraceRef {
    return (this.#ref ??= traceRef(this.#trace));
  }

  end(status: number): void {
    if (this.#ended) return;
    // The response closes as the last body byte is written, which can be reported before the
    // forwarder's own end: wait for it, so upstream time and the CLIENT span are complete.
    if (this.#forwarding) { this.#pendingStatus = status; return; }
    this.#ended = true;
    const sink = this.#sink;
    const d = this.#decision ?? { decision: 'deny', reason: 'internal-error', detail: 'no decision was made', enforced: true, warnings: [] } satisfies Decision;
    const r = buildRecord(this.#ctx, d, this.traceId, this.#trace.spanId);
    const endAt = performance.now();
    const durationMs = endAt - this.#start;
    r.status = status;
    r.durationMs = round(durationMs);
    if (this.#forwarded) r.upstreamMs = round(this.#upstreamMs);
    r.addedMs = round(durationMs - this.#upstreamMs);

    if (this.#facts) {
      const endMs = this.#epoch(endAt);
      // Forwarding started but its end was never reported: the CLIENT span ends with the request.
      if (this.#client) this.#exportClient({ ...this.#client, error: this.#client.error ?? 'aborted' }, endAt);
      sink.tracing.export({ kind: 'server', trace: this.#traceRef(), facts: this.#facts, record: r, checksAtMs: this.#decidedAt || endMs, endMs });
    }
    sink.instruments.record(r, this.#forwarded, this.#upstreamMs / 1000, this.#failure);
    sink.ring.push(r);
    if (sink.log.enabled && (r.decision !== 'allow' || sink.allowSampleRate >= 1 || Math.random() < sink.allowSampleRate)) {
      sink.log.write(logLine(r));
    }
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
