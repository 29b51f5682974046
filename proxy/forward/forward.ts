// The terminal stage: streams an allowed request to the upstream over a keep-alive pool and
// streams the answer back. Nothing is buffered whole; back-pressure flows both ways. A
// refused or dropped connection is a 502, a connect or response-header timeout a 504,
// always as a problem body, never a hang. A failure after the response has started can only
// cut the connection, which is what the client then sees.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { Pool } from 'undici';
import type { ProxyRules } from '../rules/types.ts';
import type { ReasonCode } from '../decision/reasons.ts';
import { upstreamRequestHeaders, clientResponseHeaders } from './headers.ts';

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

function errorCode(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string } };
  return e.code ?? e.cause?.code ?? 'UNKNOWN';
}

/** Whether the request carries a body (chunked, or a non-zero Content-Length). */
export function hasBody(req: IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
}

/**
 * Stream the upstream's body into the response; rejects when either side fails or the client
 * goes away first (the caller then cuts the connection). Not stream/promises' pipeline: it
 * creates and aborts an AbortController per call, and every abort builds a DOMException with
 * a stack trace, ~4% of driftguard's CPU per request in a profile (test/bench).
 */
function streamInto(body: Readable, res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    // The error listeners stay: a late error must never become an uncaught 'error' event.
    const settle = (err?: Error) => {
      if (settled) return;
      settled = true;
      if (err) { body.destroy(); reject(err); } else resolve();
    };
    body.on('error', settle);
    res.on('error', settle);
    res.once('finish', () => settle());
    res.once('close', () => { if (!res.writableFinished) settle(new Error('the client closed the connection')); });
    body.pipe(res);
  });
}

export class Forwarder {
  readonly #pool: Pool;

  constructor(rules: ProxyRules) {
    this.#pool = new Pool(rules.upstream, {
      connections: rules.connections,
      connectTimeout: rules.timeouts.connectMs,
      headersTimeout: rules.timeouts.responseMs,
      bodyTimeout: rules.timeouts.responseMs,
      keepAliveTimeout: 4_000,
    });
  }

  /**
   * Forward `req` as `path` (the canonical target) and stream the answer into `res`.
   * `own` are driftguard's request headers for the upstream; `responseHeaders` are added to
   * the client's response.
   */
  async forward(req: IncomingMessage, res: ServerResponse, path: string, own: Record<string, string>, responseHeaders: Record<string, string | string[]>, body?: Buffer): Promise<ForwardOutcome> {
    // The caller left while the decision was being made (keys being fetched): its 'close' has
    // already fired, so nothing would abort the request; send nobody's request upstream.
    if (res.destroyed || req.socket.destroyed) return { aborted: true, error: 'client closed' };
    const controller = new AbortController();
    const onClose = () => { if (!res.writableFinished) controller.abort(); };
    res.once('close', onClose);
    let started = false;
    try {
      const upstream = await this.#pool.request({
        path,
        method: req.method as 'GET',
        headers: upstreamRequestHeaders(req.rawHeaders, req.headers.connection, req.socket.remoteAddress, own),
        // A check that read the (small) body whole hands its bytes on; otherwise stream it.
        body: body ?? (hasBody(req) ? req : null),
        signal: controller.signal,
      });
      const headers = { ...clientResponseHeaders(upstream.headers), ...responseHeaders };
      started = true;
      res.writeHead(upstream.statusCode, headers);
      await streamInto(upstream.body, res);
      return { status: upstream.statusCode };
    } catch (err) {
      const code = errorCode(err);
      if (started || res.headersSent) {
        res.destroy();
        return { status: res.statusCode, aborted: true, error: code };
      }
      if (controller.signal.aborted) return { aborted: true, error: 'client closed' };
      return { failure: TIMEOUTS.has(code) ? 'upstream-timeout' : 'upstream-unavailable', error: code };
    } finally {
      res.off('close', onClose);
    }
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
