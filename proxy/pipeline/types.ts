// What flows through the pipeline: one RequestContext per request, checks that read it
// and either continue (return undefined) or end it with a Denial, and the Decision the
// pipeline makes of that.

import type { IncomingMessage } from 'node:http';
import type { ReasonCode } from '../decision/reasons.ts';
import type { Operation, ConsumerKind, Rules } from '../rules/types.ts';
import type { Target } from './canonical.ts';
import type { ActChain } from '../identity/act.ts';

/** The verified credential of the caller. Never holds the token itself. */
export interface Credential {
  readonly issuer: string;
  readonly subject: string;
  readonly jti?: string;
  readonly scopes: ReadonlySet<string>;
  readonly issuedAtMs?: number;
  readonly expiresAtMs: number;
  readonly claims: Readonly<Record<string, unknown>>;
  /** true when the signature check was skipped because the token was in the verified-token cache. */
  readonly cached: boolean;
  /** Key id of the key that verified the token (the header's, or the set's for a token without one). */
  readonly kid?: string;
  /** Every kid the key set gives that key (it may list one key twice): what a kid revocation matches. */
  readonly kids?: readonly string[];
  /** The token's delegation chain (act claim), read once when it was verified; cached with it. */
  readonly act?: ActChain;
}

export interface Consumer {
  readonly subject: string;
  /**
   * The name the consumer's lifecycle state (monitors, quarantine, idempotency keys) is kept
   * under: the subject, or for an unregistered subject while several issuers are trusted,
   * `["<issuer>","<subject>"]`, so that two issuers' `client-7` are two consumers.
   */
  readonly key: string;
  /** The kind the call is judged as: the subject's, or automation when one acts for it (automationActor). */
  readonly kind: ConsumerKind;
  /** The subject's own kind, when an automation acts for it (actor): kind is then automation whatever this is. */
  readonly subjectKind?: ConsumerKind;
  readonly owner?: string;
  /** false when the registry does not know the subject (kind is then consumers.defaultKind). */
  readonly registered: boolean;
  readonly operations?: ReadonlySet<string>;
  /** The automation that makes this call for the consumer, a person or another automation (a delegated token): kind is then automation. */
  readonly actor?: Actor;
}

/** An automation acting for a consumer (proxy/checks/consumers.ts automationActor). */
export interface Actor {
  readonly subject: string;
  /** Its lifecycle key, as Consumer.key, and the issuer that vouches for it; none for an actor nobody vouches for. */
  readonly key?: string;
  readonly issuer?: string;
  readonly owner?: string;
}

/** Extension members of a problem body, and what spans and logs record. */
export interface DecisionDetails {
  declaredContract?: string;
  currentContract?: string;
  changedIn?: string;
  replacement?: string;
  sunset?: string;
  /** For insufficient-scope: the scopes the operation needs. */
  requiredScopes?: readonly string[];
  /** For 429 and friends: seconds. */
  retryAfter?: number;
}

export interface Denial extends DecisionDetails {
  readonly reason: ReasonCode;
  readonly detail: string;
}

export interface Warning extends DecisionDetails {
  readonly reason: ReasonCode;
  readonly detail: string;
}

export type CheckOutcome = 'continue' | 'warn' | 'deny' | 'would-deny';

export interface CheckRecord {
  readonly check: string;
  readonly outcome: CheckOutcome;
  readonly reason?: ReasonCode;
}

export interface RequestContext {
  readonly req: IncomingMessage;
  readonly rules: Rules;
  /** Epoch milliseconds at which the request arrived: every time check uses this one clock reading. */
  readonly now: number;
  target?: Target;
  operation?: Operation;
  /** The Authorization header's bearer token; only the credential check reads it. */
  token?: string;
  credential?: Credential;
  consumer?: Consumer;
  declaredContract?: string;
  readonly warnings: Warning[];
  /** Each check that ran, in order, and its outcome (becomes span events). */
  readonly checks: CheckRecord[];
  /**
   * The whole request body, when a check had to read it (small bodies only, e.g. to hash it):
   * the forwarder then sends these bytes instead of the already-consumed stream. Kept out of
   * `extra`, which telemetry exports.
   */
  body?: Buffer;
  /**
   * Set for a request with `Expect: 100-continue`: tells the client to send its body. Called
   * by whatever reads the body first (a check that hashes it, or the forwarder), and only
   * then, so a denied upload is never sent. Calling it again does nothing.
   */
  sendContinue?: () => void;
  /** Free slots for feature modules (telemetry, lifecycle) keyed by their name. */
  readonly extra: Record<string, unknown>;
}

export type CheckResult = Denial | undefined;

/** A check: validated once from the rules, then called per request. It never writes the response. */
export interface Check {
  readonly name: string;
  /** Checks marked `always` enforce even in audit mode (a malformed request is never forwarded). */
  readonly always?: boolean;
  /**
   * Checks marked `once` count the request in the monitors' tables, or only make sense while
   * it is first decided (recheck): when a reload decides what is already open again (WebSocket
   * tunnels, answers streaming), they are left out.
   */
  readonly once?: boolean;
  run(ctx: RequestContext): CheckResult | Promise<CheckResult>;
}

export type DecisionKind = 'allow' | 'warn' | 'deny';

export interface Decision extends DecisionDetails {
  readonly decision: DecisionKind;
  readonly reason: ReasonCode;
  readonly detail: string;
  /** false for an audit-mode would-deny: the request was forwarded. */
  readonly enforced: boolean;
  /** Every warning's reason, in order (the first is `reason` when the decision is warn). */
  readonly warnings: readonly ReasonCode[];
}
