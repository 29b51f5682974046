// Writes a denial as application/problem+json (RFC 9457). The body's `reason` is the reason
// code, under the name the decision log, the spans and the metrics give it; `code` carries the
// same value for consumers written against earlier releases, which switched on it. `type` and
// `status` come from the one reason table. Nothing from the request's credential is ever echoed.

import { STATUS_CODES, type ServerResponse } from 'node:http';
import { reasonInfo, problemType, type ReasonCode } from './reasons.ts';
import type { DecisionDetails } from '../pipeline/types.ts';

export interface Problem extends DecisionDetails {
  readonly reason: ReasonCode;
  readonly detail: string;
  readonly operation?: string;
  readonly traceId?: string;
  /** Whether the request carried a token (for WWW-Authenticate's error="invalid_token"). */
  readonly tokenPresent?: boolean;
  /** Warnings found before the refusal (its own reason left out). */
  readonly warnings?: readonly ReasonCode[];
}

/** A refusal's warnings found before it, its own reason left out (the problem's `warnings`, the answer's warn header). */
export function warningsBeside(d: { readonly reason: ReasonCode; readonly warnings?: readonly ReasonCode[] }): readonly ReasonCode[] {
  return d.warnings?.filter((r) => r !== d.reason) ?? [];
}

const REALM = 'realm="driftguard"';

function wwwAuthenticate(p: Problem): string | undefined {
  switch (p.reason) {
    case 'missing-credential': return `Bearer ${REALM}`;
    case 'insufficient-scope':
      return `Bearer ${REALM}, error="insufficient_scope", scope="${(p.requiredScopes ?? []).join(' ')}"`;
    default: {
      if (reasonInfo(p.reason).status !== 401) return undefined;
      // error_description is a quoted-string: keep it to characters that need no escaping.
      const description = p.detail.replace(/[^\x20-\x7e]|["\\]/g, '');
      return p.tokenPresent === false ? `Bearer ${REALM}` : `Bearer ${REALM}, error="invalid_token", error_description="${description}"`;
    }
  }
}

export function problemBody(p: Problem): Record<string, unknown> {
  const info = reasonInfo(p.reason);
  const body: Record<string, unknown> = {
    type: problemType(p.reason),
    title: info.title,
    status: info.status,
    detail: p.detail,
    reason: p.reason,
    code: p.reason,
  };
  if (p.operation !== undefined) body.operation = p.operation;
  if (p.declaredContract !== undefined) body.declaredContract = p.declaredContract;
  if (p.currentContract !== undefined) body.currentContract = p.currentContract;
  if (p.changedIn !== undefined) body.changedIn = p.changedIn;
  if (p.replacement !== undefined) body.replacement = p.replacement;
  if (p.sunset !== undefined) body.sunset = p.sunset;
  if (p.requiredScopes !== undefined) body.requiredScopes = p.requiredScopes;
  if (p.retryAfter !== undefined) body.retryAfter = p.retryAfter;
  const warnings = warningsBeside(p);
  if (warnings.length > 0) body.warnings = warnings;
  if (p.traceId !== undefined) body.traceId = p.traceId;
  return body;
}

/** A denial as an answer: status, headers (`headers` plus the problem's own) and body. */
export function problemAnswer(p: Problem, headers: Record<string, string | string[]> = {}): { status: number; headers: Record<string, string | string[] | number>; body: string } {
  const body = JSON.stringify(problemBody(p));
  const out: Record<string, string | string[] | number> = {
    ...headers,
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  };
  const auth = wwwAuthenticate(p);
  if (auth) out['www-authenticate'] = auth;
  if (p.retryAfter !== undefined) out['retry-after'] = String(p.retryAfter);
  return { status: reasonInfo(p.reason).status, headers: out, body };
}

/** Send the problem; `headers` are added (contract headers, trace headers). */
export function sendProblem(res: ServerResponse, p: Problem, headers: Record<string, string | string[]> = {}): void {
  if (res.headersSent) { res.destroy(); return; }
  const answer = problemAnswer(p, headers);
  // A HEAD's Content-Length must be what a GET's would be (RFC 9110 §8.6), and a detail may
  // name the method (`HEAD /nope is not an operation`): none, which a HEAD may always send.
  if (res.req?.method === 'HEAD') delete answer.headers['content-length'];
  // Its own reason phrase: a writeHead of the upstream's answer that failed (a header Node
  // refused) has left its statusMessage, and the 502 went out as `502 OK`.
  res.writeHead(answer.status, STATUS_CODES[answer.status] ?? '', answer.headers);
  res.end(answer.body);
}
