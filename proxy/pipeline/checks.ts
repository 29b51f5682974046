// The ordered list of checks every request goes through. Order matters and is the spec:
// cheap, credential-free checks first (a malformed or unknown request costs no signature
// check), identity before anything that depends on who is calling, contract and
// deprecation last because they decide between deny and warn by the caller's kind.
// Forwarding is not a check: it is the terminal stage (proxy/forward), run only when the
// decision lets the request through.

import type { Check } from './types.ts';
import type { Rules } from '../rules/types.ts';
import type { Identity } from '../identity/verify.ts';
import { canonicalPath } from '../checks/canonical-path.ts';
import { operationLookup } from '../checks/operation.ts';
import { sunset } from '../checks/sunset.ts';
import { credential } from '../checks/credential.ts';
import { consumer } from '../checks/consumer.ts';
import { scopes } from '../checks/scopes.ts';
import { declaredOperations } from '../checks/declared-operations.ts';
import { contract } from '../checks/contract.ts';
import { deprecation } from '../checks/deprecation.ts';
import { revocation, quarantine, taskBinding, delegation, retryStorm, traversal, idempotency, recheck, taskRecorder } from '../lifecycle/checks.ts';
import type { LifecycleState } from '../lifecycle/state.ts';
import { configOf } from '../lifecycle/config.ts';
import { datesAgain } from '../checks/dates.ts';

/** What checks need beyond the rules. Feature modules add their long-lived state here. */
export interface CheckDeps {
  readonly identity: Identity;
  /** The server's clock (tests set it); Date.now without one. */
  readonly now?: () => number;
  /** Revocations and behaviour monitors (proxy/lifecycle); without it their checks are left out. */
  readonly lifecycle?: LifecycleState;
}

/** The request headers a decision reads, lowercased: the credential, the contract version, the idempotency key. */
function decisiveHeaders(rules: Rules, lifecycle: LifecycleState | undefined): string[] {
  const names = ['authorization', rules.contract.declared.header.toLowerCase()];
  const idempotency = lifecycle ? configOf(rules).monitors.idempotency : undefined;
  if (idempotency && idempotency.mode !== 'off') names.push(idempotency.header);
  return names;
}

export function checks(rules: Rules, deps: CheckDeps): readonly Check[] {
  const l = deps.lifecycle;
  return Object.freeze([
    canonicalPath(decisiveHeaders(rules, l), new Set(rules.proxy.ignoredCookies)), // must be first: every later check reads ctx.target
    operationLookup(rules),               // unknown-operation, before any credential work
    sunset(),                             // gone for everybody, credential or not
    credential(rules, deps.identity, taskRecorder(rules, l)), // verified identity, lifetime by consumer kind
    revocation(rules, l),                 // right after credential, so verified-token cache hits are covered too
    quarantine(rules, l),                 // a quarantined consumer is refused whatever it calls, before any other verdict
    consumer(rules),                      // registered (or unknown consumers allowed)
    scopes(),                             // token scopes cover the operation
    declaredOperations(rules),            // within the consumer's (and each actor's) declared operations
    contract(rules),                      // declared contract version vs minimum and changedIn
    deprecation(rules),                   // deprecated operation: deny or warn by sensitivity
    // Task binding and delegation judge this token for this operation; they come after the
    // contract verdicts because a stale client must change its code, which no token fixes.
    taskBinding(rules, l),                // jti, task claim and lifetime by sensitivity
    delegation(rules, l),                 // act chain depth and the consumer's actor allowlist
    // Monitors last: they count only requests every policy lets through (denials feed the
    // quarantine instead), so a denied request never uses up a consumer's budget.
    retryStorm(rules, l),                 // same request repeated in a window (reads small bodies)
    traversal(rules, l),                  // too many distinct operations in a window
    idempotency(rules, l),                // it reserves the key, which only a forwarded write may do
    recheck(rules, l),                    // revocation and quarantine again if either changed meanwhile (a refusal frees the key)
    datesAgain(rules, deps.now ?? Date.now), // sunset, deprecation and token expiry again if a check waited past one
  ].filter((c): c is Check => c !== undefined));
}
