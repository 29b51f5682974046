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
  'malformed-request': { status: 400, title: 'Malformed request', action: 'Send an origin-form, canonical request-target (no dot segments, encoded slashes, empty segments, path parameters or control characters) and single Authorization and Host headers.' },

  // --- operation ---
  'unknown-operation': { status: 403, title: 'Unknown operation', action: 'Call only operations of the current contract; check method and path against the API description.' },
  'operation-sunset': { status: 410, title: 'Operation sunset', action: 'The operation is gone; move to its replacement.' },

  // --- credential ---
  'missing-credential': { status: 401, title: 'Missing credential', action: 'Send a workload identity token as `Authorization: Bearer <token>`.' },
  'invalid-credential': { status: 401, title: 'Invalid credential', action: 'Get a fresh token from a trusted issuer for this audience; check its signature algorithm, issuer, audience, type and expiry.' },
  'credential-lifetime-exceeded': { status: 401, title: 'Credential lifetime exceeded', action: 'Use a short-lived token: its lifetime (exp - iat) and remaining time (exp - now) must fit the limit for your kind of caller.' },
  'identity-unavailable': { status: 503, title: 'Identity unavailable', action: 'Retry later: driftguard could not obtain the signing keys of your token\'s issuer.' },

  // --- consumer ---
  'unknown-consumer': { status: 403, title: 'Unknown consumer', action: 'Register the consumer (subject, kind, owner) in the rules before calling.' },
  'insufficient-scope': { status: 403, title: 'Insufficient scope', action: 'Request a token with the scopes the operation requires.' },
  'undeclared-operation': { status: 403, title: 'Undeclared operation', action: 'Add the operation to the consumer\'s declared operations in the rules, or stop calling it.' },

  // --- contract ---
  'contract-version-required': { status: 400, title: 'Contract version required', action: 'Declare the contract version your client was built against (token claim or Contract-Version header).' },
  'unknown-contract-version': { status: 400, title: 'Unknown contract version', action: 'Declare one of the contract versions the API publishes.' },
  'stale-contract': { status: 409, title: 'Stale contract', action: 'The operation changed after the contract version you declare; update the client to the current contract and declare it.' },
  'deprecated-operation': { status: 403, title: 'Deprecated operation', action: 'Move to the replacement operation named in the response.' },

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
