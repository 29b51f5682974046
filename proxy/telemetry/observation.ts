// What telemetry does for one request, at the points the server reports (proxy/observe.ts):
// begin: continue the caller's trace with a SERVER span; decided: one span event per check
// that ran; upstreamHeaders/forwarding/forwarded: a CLIENT span around the upstream call,
// whose context the upstream receives; end: the decision record, from which the span's
// attributes, the metrics, the decision log line and the /decisions entry are all made.
// One object per request, methods on the prototype: no closures on the hot path.

import { performance } from 'node:perf_hooks';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import type { Observation } from '../observe.ts';
import type { Decision, RequestContext } from '../pipeline/types.ts';
import type { ForwardOutcome } from '../forward/forward.ts';
import { buildRecord, logLine, pathOf, FIELDS, type DecisionRecord } from './record.ts';
import type { Tracing } from './tracing.ts';
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
  return [m[1]!, m[2] !== undefined ? Number(m[2]) : undefined];
}

export class RequestObservation implements Observation {
  readonly traceId: string;
  readonly #sink: Sink;
  readonly #ctx: RequestContext;
  readonly #span: Span;
  readonly #spanId: string;
  readonly #flags: string;
  readonly #method: string;
  readonly #start: number;
  #decision?: Decision;
  #client?: Span;
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
    const span = sink.tracing.tracer.startSpan(method, { kind: SpanKind.SERVER, startTime: ctx.now }, sink.tracing.extract(req.headers));
    this.#span = span;
    const sc = span.spanContext();
    this.traceId = sc.traceId;
    this.#spanId = sc.spanId;
    this.#flags = (sc.traceFlags & 1) === 1 ? '01' : '00';
    if (span.isRecording()) {
      const [address, port] = hostAndPort(req.headers.host);
      span.setAttribute('http.request.method', method);
      if (method === '_OTHER' && req.method !== undefined) span.setAttribute('http.request.method_original', req.method.slice(0, 64));
      span.setAttribute('url.scheme', 'http');
      if (address) span.setAttribute('server.address', address);
      if (port !== undefined) span.setAttribute('server.port', port);
      if (req.socket.remoteAddress) span.setAttribute('client.address', req.socket.remoteAddress);
      span.setAttribute('network.protocol.version', req.httpVersion);
      const ua = req.headers['user-agent'];
      if (ua) span.setAttribute('user_agent.original', ua.slice(0, 512));
    }
  }

  responseHeaders(into: Record<string, string | string[]>): void {
    // W3C Trace Context Level 2: the trace and the span that answered, for the caller's records.
    into['traceresponse'] = `00-${this.traceId}-${this.#spanId}-${this.#flags}`;
  }

  decided(decision: Decision): void {
    this.#decision = decision;
    const span = this.#span;
    if (!span.isRecording()) return;
    for (const c of this.#ctx.checks) {
      span.addEvent(c.check, c.reason !== undefined && c.outcome !== 'continue'
        ? { 'driftguard.check.outcome': c.outcome, 'driftguard.check.reason': c.reason }
        : { 'driftguard.check.outcome': c.outcome });
    }
  }

  upstreamHeaders(into: Record<string, string>): void {
    // The CLIENT span is the upstream request's parent: its id goes out in traceparent.
    const op = this.#ctx.operation;
    const tracing = this.#sink.tracing;
    const client = tracing.tracer.startSpan(op ? `${this.#method} ${op.path}` : this.#method, { kind: SpanKind.CLIENT }, trace.setSpan(ROOT_CONTEXT, this.#span));
    this.#client = client;
    if (client.isRecording()) {
      const up = upstreamOf(this.#ctx.rules.proxy.upstream);
      client.setAttribute('http.request.method', this.#method);
      if (op) client.setAttribute('url.template', op.path);
      client.setAttribute('server.address', up.address);
      client.setAttribute('server.port', up.port);
      client.setAttribute('url.full', up.origin + pathOf(this.#ctx));
    }
    tracing.inject(client, into);
  }

  forwarding(): void {
    this.#forwardStart = performance.now();
    this.#forwarded = true;
    this.#forwarding = true;
  }

  forwarded(outcome: ForwardOutcome): void {
    this.#upstreamMs = performance.now() - this.#forwardStart;
    this.#forwarding = false;
    if (outcome.failure) this.#failure = outcome.failure;
    const client = this.#client;
    if (client) {
      if (client.isRecording()) {
        if (outcome.status !== undefined) client.setAttribute('http.response.status_code', outcome.status);
        if (outcome.failure || outcome.aborted) {
          client.setAttribute('error.type', outcome.failure ?? outcome.error ?? 'aborted');
          client.setStatus({ code: SpanStatusCode.ERROR, message: outcome.failure ?? outcome.error ?? 'aborted' });
        } else if (outcome.status !== undefined && outcome.status >= 400) {
          client.setAttribute('error.type', String(outcome.status));
          client.setStatus({ code: SpanStatusCode.ERROR });
        }
      }
      client.end();
      this.#client = undefined;
    }
    if (this.#pendingStatus !== undefined) this.end(this.#pendingStatus);
  }

  end(status: number): void {
    if (this.#ended) return;
    // The response closes as the last body byte is written, which can be reported before the
    // forwarder's own end: wait for it, so upstream time and the CLIENT span are complete.
    if (this.#forwarding) { this.#pendingStatus = status; return; }
    this.#ended = true;
    const sink = this.#sink;
    const d = this.#decision ?? { decision: 'deny', reason: 'internal-error', detail: 'no decision was made', enforced: true, warnings: [] } satisfies Decision;
    const r = buildRecord(this.#ctx, d, this.traceId, this.#spanId);
    const durationMs = performance.now() - this.#start;
    r.status = status;
    r.durationMs = round(durationMs);
    if (this.#forwarded) r.upstreamMs = round(this.#upstreamMs);
    r.addedMs = round(durationMs - this.#upstreamMs);
    if (this.#client) this.#client.end(); // forwarding never reported its end

    this.#finishSpan(r, status);
    sink.instruments.record(r, this.#forwarded, this.#upstreamMs / 1000, this.#failure);
    sink.ring.push(r);
    if (sink.log.enabled && (r.decision !== 'allow' || sink.allowSampleRate >= 1 || Math.random() < sink.allowSampleRate)) {
      sink.log.write(logLine(r));
    }
  }

  #finishSpan(r: DecisionRecord, status: number): void {
    const span = this.#span;
    if (span.isRecording()) {
      if (r.route !== undefined) {
        span.updateName(`${this.#method} ${r.route}`);
        span.setAttribute('http.route', r.route);
      }
      span.setAttribute('url.path', r.path);
      span.setAttribute('http.response.status_code', status);
      for (const [key, attr] of FIELDS) {
        const v = r[key];
        if (v !== undefined) span.setAttribute(attr, v as string);
      }
      if (r.extra) for (const key in r.extra) span.setAttribute('driftguard.' + key, r.extra[key]!);
      // HTTP semantic conventions: a server span is an error only for 5xx; a deny is a
      // decision, not a failure (driftguard.decision says it).
      if (status >= 500) {
        span.setAttribute('error.type', String(status));
        span.setStatus({ code: SpanStatusCode.ERROR, message: r.reason });
      }
    }
    span.end();
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
