// How a forwarding ended, as both terminal stages (a request, a WebSocket handshake) report
// it to the server and to telemetry.

import type { ReasonCode } from '../decision/reasons.ts';

export interface ForwardOutcome {
  /** Status the client got from the upstream, or undefined when forwarding failed. */
  readonly status?: number;
  /** Why forwarding failed before a response started (the caller answers with a problem). */
  readonly failure?: Extract<ReasonCode, 'upstream-unavailable' | 'upstream-timeout'>;
  /** The response had started and was cut. */
  readonly aborted?: boolean;
  readonly error?: string;
}

const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'ETIMEDOUT']);

export function errorCode(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string } };
  return e.code ?? e.cause?.code ?? 'UNKNOWN';
}

/** The outcome of an upstream error before any response started: a timeout is a 504, anything else a 502. */
export function failed(code: string): ForwardOutcome {
  return { failure: TIMEOUTS.has(code) ? 'upstream-timeout' : 'upstream-unavailable', error: code };
}
