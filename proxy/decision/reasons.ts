// The one table that maps each reason code to its HTTP status and problem type.
// Everything a caller, a dashboard or the README says about a reason comes from here;
// test/decision/reasons.test.ts keeps this table and the README's table in agreement.

export const PROBLEM_BASE = 'https://driftguard.io/problems/';

export interface ReasonInfo {
  /** HTTP status of the response when this reason denies (or fails forwarding). */
  readonly status: number;
  /** Short, stable, human title for the problem body. */
  readonly title: string;
  /** What the caller should do about it (README and problem `detail` fallback). */
  readonly action: string;
}

const table = {
  // --- allowed or warned: the request is forwarded ---
  'allowed': { status: 200, title: 'Allowed', action: 'Nothing.' },

  // --- request shape ---
  'headers-too-large': { status: 431, title: 'Request header fields too large', action: 'Send less than 16 KiB of request line and headers together, in at most 100 header lines (a token that large is refused anyway); a long path or query counts too.' },
  'request-timeout': { status: 408, title: 'Request timeout', action: 'Send the request head without pausing: driftguard answers this when a head has not arrived within 60 s (or its request timeout, if shorter), and closes the connection.' },
  'target-too-long': { status: 414, title: 'URI too long', action: 'Send a shorter path and query: driftguard reads at most 16 KiB of request line and headers together.' },
  'malformed-request': { status: 400, title: 'Malformed request', action: 'Send an origin-form, canonical request-target (no dot segments, encoded slashes, empty segments, path parameters or control characters: the detail names the segment and what is wrong with it), no method override (_method) or token (access_token) in the query, no other token in a cookie (nor a backslash) or WebSocket subprotocol beside the Authorization header, single Authorization and Host headers (Host a DNS name or IP address and an optional port), and no transfer coding other than chunked.' },

  // --- operation ---
  'unknown-operation': { status: 403, title: 'Unknown operation', action: 'Call only operations of the current contract; check method and path against the API description.' },
  'operation-sunset': { status: 410, title: 'Operation sunset', action: 'The operation is gone; move to its replacement.' },

  // --- credential ---
  'missing-credential': { status: 401, title: 'Missing credential', action: 'Send a workload identity token as `Authorization: Bearer <token>`.' },
  'invalid-credential': { status: 401, title: 'Invalid credential', action: 'Get a fresh token from a trusted issuer for this audience; check its signature algorithm, issuer, audience, type and expiry.' },
  'credential-lifetime-exceeded': { status: 401, title: 'Credential lifetime exceeded', action: 'Use a short-lived token: its lifetime (exp - iat) and remaining time (exp - now) must fit the limit for your kind of consumer.' },
  'identity-unavailable': { status: 503, title: 'Identity unavailable', action: 'Retry after the Retry-After seconds (what is left of the issuer\'s key-fetch cooldown): driftguard could not obtain the signing keys of your token\'s issuer.' },

  // --- consumer ---
  'unknown-consumer': { status: 403, title: 'Unknown consumer', action: 'Register the consumer (subject, kind, owner) in the rules before calling.' },
  'insufficient-scope': { status: 403, title: 'Insufficient scope', action: 'Request a token with the scopes the operation requires.' },
  'undeclared-operation': { status: 403, title: 'Undeclared operation', action: 'Add the operation to the consumer\'s declared operations in the rules, or stop calling it.' },

  // --- contract ---
  'contract-version-required': { status: 400, title: 'Contract version required', action: 'Declare the contract version your client was built against (token claim or Contract-Version header).' },
  'unknown-contract-version': { status: 400, title: 'Unknown contract version', action: 'Declare one of the contract versions the API publishes.' },
  'contract-version-conflict': { status: 400, title: 'Conflicting contract versions', action: 'Declare one contract version: the token claim and the Contract-Version header must not differ (or send only one).' },
  'stale-contract': { status: 409, title: 'Stale contract', action: 'The operation changed after the contract version you declare; update the client to the current contract and declare it.' },
  'deprecated-operation': { status: 403, title: 'Deprecated operation', action: 'Move to the replacement operation named in the response (replacement); where none is named, stop calling it before its sunset.' },

  // --- credential lifecycle (proxy/lifecycle) ---
  'revocation-list-unavailable': { status: 503, title: 'Revocation list unavailable', action: 'Retry after the Retry-After seconds: driftguard has not yet been able to read the revocation list it checks every token against.' },
  'credential-revoked': { status: 401, title: 'Credential revoked', action: 'Stop using this token: it, its task, its consumer or its signing key was revoked. Ask the consumer\'s owner; a new token works only once the revocation is lifted or has ended.' },
  'consumer-quarantined': { status: 403, title: 'Consumer quarantined', action: 'Stop and page the consumer\'s owner: too many denials in a short time quarantined this consumer (or, when the detail says so, an actor in the token\'s delegation chain: page that actor\'s owner). An operator lifts it early with DELETE /quarantine/{subject}; otherwise it ends by itself.' },
  'task-binding-required': { status: 403, title: 'Task binding required', action: 'Get a token issued for this one task (with the task claim, e.g. task_id) and short enough for the operation\'s sensitivity.' },
  'delegation-too-deep': { status: 403, title: 'Delegation too deep', action: 'Call with a shorter delegation chain (fewer nested act claims); exchange for a token closer to the original subject.' },
  'actor-not-allowed': { status: 403, title: 'Actor not allowed', action: 'Only actors on the consumer\'s allowlist may act for it; ask the owner to add the actor, or call as an allowed one.' },

  // --- behaviour monitors (proxy/lifecycle) ---
  'retry-storm': { status: 429, title: 'Retry storm', action: 'Stop repeating the same request: wait the Retry-After seconds, then retry with backoff, and look at why the first attempts failed.' },
  'idempotency-key-required': { status: 400, title: 'Idempotency key required', action: 'Send an Idempotency-Key header (1 to 255 visible characters, unique per intended write) on this write.' },
  'idempotency-key-reused': { status: 422, title: 'Idempotency key reused', action: 'Use a new Idempotency-Key for a different payload; a key names one write only.' },
  'duplicate-write': { status: 409, title: 'Duplicate write', action: 'This write was already sent with the same Idempotency-Key and payload (and may have taken effect): do not resend it; read the resource to learn its state.' },
  'endpoint-traversal': { status: 403, title: 'Endpoint traversal', action: 'Call only the few operations your task needs: too many distinct operations in a short time looks like exploration. Slow down; page the owner if this is expected.' },

  // --- forwarding (after an allow or warn decision) ---
  'upstream-unavailable': { status: 502, title: 'Upstream unavailable', action: 'Retry later; the API behind driftguard refused or dropped the connection.' },
  'upstream-timeout': { status: 504, title: 'Upstream timeout', action: 'Retry later; the API behind driftguard did not answer in time.' },

  // --- fail closed ---
  'internal-error': { status: 500, title: 'Internal error', action: 'Retry later and report the trace id to the API owner; driftguard failed closed.' },
} as const satisfies Record<string, ReasonInfo>;

export type ReasonCode = keyof typeof table;

export const REASONS: Readonly<Record<ReasonCode, ReasonInfo>> = table;

export function reasonInfo(code: ReasonCode): ReasonInfo {
  return table[code];
}

export function problemType(code: ReasonCode): string {
  return PROBLEM_BASE + code;
}

export function isReasonCode(value: string): value is ReasonCode {
  return Object.hasOwn(table, value);
}
