// How telemetry sees a request without the pipeline knowing about spans, metrics or logs:
// the server begins one Observation per request and reports to it at fixed points.
// Observations must never throw into the request path; the server guards them anyway.

import type { Decision, RequestContext } from './pipeline/types.ts';
import type { ForwardOutcome } from './forward/outcome.ts';

export interface Observation {
  /** Trace id of this request, for problem bodies; undefined when tracing is off. */
  readonly traceId?: string;
  /** Add headers for the upstream request (traceparent, tracestate). */
  upstreamHeaders(into: Record<string, string>): void;
  /** Add headers for the client's response (traceresponse). */
  responseHeaders(into: Record<string, string | string[]>): void;
  /** The decision is made (before the response or forwarding). */
  decided(decision: Decision): void;
  /** Forwarding starts now. */
  forwarding(): void;
  /** The upstream's answer reaches the client: its head goes out now, with `status` (its body may follow). */
  answering?(status: number): void;
  /** Forwarding ended. */
  forwarded(outcome: ForwardOutcome): void;
  /** The response is finished (or the connection closed); `status` is what the client got. */
  end(status: number): void;
}

export interface Observer {
  begin(ctx: RequestContext): Observation;
  /** A verified-token cache lookup: hit (no signature check) or miss. */
  tokenCache?(hit: boolean): void;
  /** A request Node's parser refused, answered with this reason before there was a request to observe. */
  unparsed?(reason: string): void;
  /** A client connection closed unanswered, before any request of it was decided. */
  dropped?(listener: Listener, cause: DropCause): void;
}

export type Listener = 'traffic' | 'admin' | 'probes';
/** connection-limit: the listener held as many connections as it may; pipelining-flood: more pipelined requests than a connection may have waiting. */
export type DropCause = 'connection-limit' | 'pipelining-flood';

const NOOP: Observation = {
  upstreamHeaders() {}, responseHeaders() {}, decided() {}, forwarding() {}, forwarded() {}, end() {},
};

export const noopObserver: Observer = { begin: () => NOOP };

/** One observer made of several: each sees every call; the first one's trace id wins. */
export function composeObservers(observers: readonly Observer[]): Observer {
  if (observers.length === 0) return noopObserver;
  if (observers.length === 1) return observers[0]!;
  const caches = observers.filter((o) => o.tokenCache !== undefined);
  const parsers = observers.filter((o) => o.unparsed !== undefined);
  const droppers = observers.filter((o) => o.dropped !== undefined);
  return {
    ...(caches.length ? { tokenCache(hit: boolean) { for (const o of caches) o.tokenCache!(hit); } } : {}),
    ...(parsers.length ? { unparsed(reason: string) { for (const o of parsers) o.unparsed!(reason); } } : {}),
    ...(droppers.length ? { dropped(listener: Listener, cause: DropCause) { for (const o of droppers) o.dropped!(listener, cause); } } : {}),
    // Each its own: one observer's begin that throws (the telemetry's sampler) left the others
    // without an observation, the lifecycle's end() with it.
    begin: (ctx) => new CompositeObservation(observers.map((o) => { try { return o.begin(ctx); } catch { return noopObserver.begin(ctx); } })),
  };
}

/**
 * Every observation of one request; methods on the prototype, no closures per request. Each
 * observer is called whatever another threw (the first error is thrown after): a span export
 * that failed in end() skipped the lifecycle's end(), whose idempotency key then stayed in
 * flight for good.
 */
class CompositeObservation implements Observation {
  readonly traceId?: string;
  readonly #all: readonly Observation[];
  constructor(all: readonly Observation[]) {
    this.#all = all;
    for (const o of all) if (o.traceId !== undefined) { this.traceId = o.traceId; break; }
  }
  upstreamHeaders(into: Record<string, string>): void { for (const o of this.#all) o.upstreamHeaders(into); }
  responseHeaders(into: Record<string, string | string[]>): void { for (const o of this.#all) o.responseHeaders(into); }
  decided(d: Decision): void { this.#each('decided', d); }
  forwarding(): void { this.#each('forwarding', undefined); }
  answering(status: number): void { this.#each('answering', status); }
  forwarded(outcome: ForwardOutcome): void { this.#each('forwarded', outcome); }
  end(status: number): void { this.#each('end', status); }

  /** `method` of every observation, each whatever another threw; then the first error thrown. By name, so that no closure is made per call. */
  #each<M extends 'decided' | 'forwarding' | 'answering' | 'forwarded' | 'end'>(method: M, arg: Parameters<NonNullable<Observation[M]>>[0]): void {
    let failed = false, error: unknown;
    for (const o of this.#all) try { (o[method] as ((a: typeof arg) => void) | undefined)?.call(o, arg); } catch (err) { if (!failed) { failed = true; error = err; } }
    if (failed) throw error;
  }
}
