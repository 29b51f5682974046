// What telemetry does for one request, at the points the server reports (proxy/observe.ts):
// begin: continue the caller's trace (or start one) and take the SERVER span's id and
// sampling decision; decided: note the time of the checks' verdicts; upstreamHeaders/
// forwarding/forwarded: the CLIENT span around the upstream call, whose id the upstream
// receives in traceparent; end: the decision record, from which the metrics, the decision
// log line and the /decisions entry are made here, and the spans on the export thread (the
// record goes there in the request's span source: spans.ts, export-thread.ts).
// One object per request, methods on the prototype: no closures on the hot path.

import { performance } from 'node:perf_hooks';
import { SpanKind } from '@opentelemetry/api';
import type { Observation } from '../observe.ts';
import type { Decision, RequestContext } from '../pipeline/types.ts';
import { CLIENT_CLOSED, RECORDED_CUTS, type ForwardOutcome } from '../forward/outcome.ts';
import { buildRecord, forwardingFailed, logLine } from './record.ts';
import { traceRef, type TraceStart, type Tracing } from './tracing.ts';
import type { RequestFacts, Upstream, UpstreamCall } from './spans.ts';
import type { Instruments } from './instruments.ts';
import type { DecisionLog } from './decision-log.ts';
import { recentEntry, type Ring } from './recent.ts';
import { redactText } from '../lib/redact.ts';

/** Shared by every observation of one driftguard. */
export interface Sink {
  readonly tracing: Tracing;
  readonly instruments: Instruments;
  readonly log: DecisionLog;
  readonly allowSampleRate: number;
  readonly ring: Ring;
}

let lastUpstream: { readonly text: string; readonly upstream: Upstream } | undefined;

/**
 * The upstream's address for the CLIENT span, parsed once per rules' upstream, not per
 * request: one object, which a message to the export thread then carries once.
 */
function upstreamOf(text: string): Upstream {
  if (lastUpstream?.text === text) return lastUpstream.upstream;
  const u = new URL(text);
  const port = u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80;
  const upstream = { address: unbracketed(u.hostname), port, origin: u.origin };
  lastUpstream = { text, upstream };
  return upstream;
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY']);

function hostAndPort(host: string | undefined): [string, number | undefined] {
  if (!host) return ['', undefined];
  // A host name or an IP literal, nothing else: a Host that holds more (`token@host`, the
  // userinfo a client copied from a URL) is no address, and may be a credential. One shaped
  // like a JWT (three dotted base64url labels are a valid host name) is replaced.
  const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d+))?$/.exec(host);
  if (!m) return ['', undefined];
  return [redactText(unbracketed(m[1]!)).slice(0, 256), m[2] !== undefined ? Number(m[2]) : undefined];
}

/** `[::1]` as `::1`: the brackets are URL and Host syntax, and `server.address` is the address itself. */
function unbracketed(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

export class RequestObservation implements Observation {
  readonly traceId: string;
  readonly #sink: Sink;
  readonly #ctx: RequestContext;
  readonly #trace: TraceStart;
  /** Built only when the spans will be exported. */
  readonly #facts?: RequestFacts;
  readonly #start: number;
  #decision?: Decision;
  #decidedAt = 0;
  /** The CLIENT span's id, sent upstream in traceparent. */
  #clientSpanId?: string;
  /** Set when the CLIENT span will be exported: the upstream request was made, with spans exported. */
  #upstream?: Upstream;
  #forwardStart = 0;
  /** When forwarded() was reported, and what of. */
  #forwardEnd?: number;
  #callStatus?: number;
  #callError?: string;
  #resent = false;
  /** The answer had started and was cut: `client`, or the upstream's error (record.ts, cut). */
  #cut?: string;
  #forwarded = false;
  /** end() came while forwarding was still being reported: finish when it is. */
  #pendingStatus?: number;
  #failure?: string;
  #failureDetail?: string;
  #ended = false;

  constructor(sink: Sink, ctx: RequestContext) {
    this.#sink = sink;
    this.#ctx = ctx;
    this.#start = performance.now();
    const req = ctx.req;
    const method = req.method !== undefined && METHODS.has(req.method) ? req.method : '_OTHER';
    const t = sink.tracing.start(req.headers, method, SpanKind.SERVER);
    this.#trace = t;
    this.traceId = t.traceId;
    // Gathered for a request the sampler dropped too: a refusal is exported whatever it said.
    if (sink.tracing.exporting && (t.sampled || sink.tracing.keepsRefusals)) {
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
        // An agent may name itself with its token in it: never recorded.
        // Redacted before it is cut: a token cut in two is no longer JWT-shaped.
        ...(ua ? { userAgent: redactText(ua).slice(0, 512) } : {}),
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

  /** Called once decided, and again when the forward fails (a 502 or 504 is traced whatever the sampler said). */
  responseHeaders(into: Record<string, string | string[]>): void {
    // W3C Trace Context Level 2: the trace and the span that answered, for the caller's records.
    // Its sampled flag says whether driftguard recorded the span: a refusal, a warning or a
    // failed forward of an unsampled trace is (end()), and a caller that samples late keeps its
    // own side by that flag.
    // Nothing is recorded with no exporter (`exporter: none`), sampled or not.
    const refused = (this.#decision !== undefined && this.#decision.decision !== 'allow') || this.#failure !== undefined;
    const recorded = this.#sink.tracing.exporting && (this.#trace.sampled || (this.#facts !== undefined && refused));
    into['traceresponse'] = `00-${this.#trace.traceId}-${this.#trace.spanId}-${recorded ? '01' : '00'}`;
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
    if (this.#facts) this.#upstream = upstreamOf(this.#ctx.rules.proxy.upstream);
  }

  forwarding(): void {
    this.#forwardStart = performance.now();
    this.#forwarded = true;
  }

  forwarded(outcome: ForwardOutcome): void {
    // The forward stage's refusal, whether or not anything went upstream (a body that could not be parsed).
    if (outcome.failure) { this.#failure = outcome.failure; this.#failureDetail = outcome.detail ?? outcome.failure; }
    if (outcome.notSent) {
      // Nothing went upstream (the caller had left before forwarding began, or its body could
      // not be parsed): no upstream call, no CLIENT span.
      this.#forwarded = false;
      this.#upstream = undefined;
    } else {
      this.#forwardEnd = performance.now();
      if (outcome.status !== undefined) this.#callStatus = outcome.status;
      if (outcome.resent) this.#resent = true;
      // The upstream call's error: the upstream's failure, or the cut's; a request driftguard
      // withdrew for a refusal (a handshake the upstream had not answered) was aborted, which is
      // no upstream error: the refusal is the decision's.
      if (outcome.failure || outcome.aborted) this.#callError = (outcome.failure?.startsWith('upstream-') ? outcome.failure : undefined) ?? outcome.error ?? 'aborted';
      // Cut after the head went out: the record's status is the upstream's, and only this
      // says the caller did not get the whole answer. Cut by driftguard before it (the drain's
      // end, a revocation): status 0, as for a client that left, so only this tells them apart;
      // and the upstream may have acted on the request.
      if (outcome.aborted && (outcome.status !== undefined || RECORDED_CUTS.has(outcome.error!))) this.#cut = outcome.error === CLIENT_CLOSED ? 'client' : outcome.error ?? 'aborted';
    }
    if (this.#pendingStatus !== undefined) this.end(this.#pendingStatus);
  }

  /** The CLIENT span's source: from the start of forwarding to its reported end, else to `endAt`. */
  #call(upstream: Upstream, endAt: number): UpstreamCall {
    // Forwarding started but its end was never reported: the call ends with the request, aborted.
    const error = this.#callError ?? (this.#forwardEnd === undefined ? 'aborted' : undefined);
    return {
      spanId: this.#clientSpanId!, upstream,
      startMs: this.#epoch(this.#forwardStart), endMs: this.#epoch(this.#forwardEnd ?? endAt),
      ...(this.#callStatus !== undefined ? { status: this.#callStatus } : {}),
      ...(error !== undefined ? { error } : {}),
      ...(this.#resent ? { resent: true as const } : {}),
    };
  }

  end(status: number): void {
    if (this.#ended) return;
    // The response closes as the last body byte is written, which can be reported before the
    // forwarder's own end: wait for it, so upstream time and the CLIENT span are complete.
    if (this.#forwarded && this.#forwardEnd === undefined) { this.#pendingStatus = status; return; }
    this.#ended = true;
    const sink = this.#sink;
    const d = this.#decision ?? { decision: 'deny', reason: 'internal-error', detail: 'no decision was made', enforced: true, warnings: [] } satisfies Decision;
    const r = buildRecord(this.#ctx, d, this.traceId, this.#trace.spanId);
    if (this.#failure) forwardingFailed(r, this.#failure, this.#failureDetail!);
    const endAt = performance.now();
    const durationMs = endAt - this.#start;
    r.status = status;
    if (this.#cut !== undefined) r.cut = this.#cut;
    // Waiting on and streaming from the upstream, from forwarding() to forwarded(); 0 when
    // forwarding never started or its end was never reported.
    const upstreamMs = this.#forwardEnd === undefined ? 0 : this.#forwardEnd - this.#forwardStart;
    r.durationMs = round(durationMs);
    if (this.#forwarded) r.upstreamMs = round(upstreamMs);
    r.addedMs = round(durationMs - upstreamMs);

    // The decision log first: were a later sink to fail, the audit trail still has the line.
    // One line for the decision log and the recent-decisions ring alike.
    // An allow whose forward failed (502, 504) or whose answer was cut is an incident's first
    // trace: never sampled away.
    const logged = sink.log.enabled && (r.decision !== 'allow' || this.#failure !== undefined || r.cut !== undefined || sink.allowSampleRate >= 1 || Math.random() < sink.allowSampleRate);
    if (logged || sink.ring.capacity > 0) {
      const line = logLine(r);
      const utf8 = Buffer.byteLength(line, 'utf8');
      if (sink.ring.capacity > 0) sink.ring.push(recentEntry(r, line, utf8));
      if (logged) sink.log.write(line, utf8);
    }
    sink.instruments.record(r, this.#forwarded, upstreamMs / 1000, this.#failure, d.reason);
    // Sampled, or not a plain allow (the decision log's rule): a denial, a warning, an audit
    // would-deny, a forward that failed or was cut is traced whatever the head sampler said.
    const traced = this.#trace.sampled || r.decision !== 'allow' || this.#failure !== undefined || r.cut !== undefined;
    if (this.#facts && traced) {
      const endMs = this.#epoch(endAt);
      sink.tracing.export({
        trace: { ...traceRef(this.#trace), sampled: true }, facts: this.#facts, record: r, checksAtMs: this.#decidedAt || endMs, endMs,
        ...(this.#upstream ? { call: this.#call(this.#upstream, endAt) } : {}),
      });
    }
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
