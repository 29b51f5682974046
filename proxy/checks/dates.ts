// The dates a decision holds until: its token's expiry, its operation's sunset, the start of a
// deprecation that refuses its caller. The server ends tunnels and event streams at them
// (endOf); and the last check looks at them again, since the checks before it may have waited
// (a key fetch, a small body a monitor reads, as slowly as the client sends it) past one of
// them: sent then, a request reached the upstream after the instant its Sunset header named.

import type { Check, RequestContext } from '../pipeline/types.ts';
import type { Rules } from '../rules/types.ts';
import type { ReasonCode } from '../decision/reasons.ts';
import { blocks } from './staleness.ts';
import { deprecationFinding, movingOn } from './deprecation.ts';

/** What ended at a date refuses a request for, in a problem's words. */
export const ENDED = { 'invalid-credential': 'the credential expired', 'operation-sunset': 'the operation\'s sunset came', 'deprecated-operation': 'the operation\'s deprecation began' } as const;

export type Ending = { readonly at: number; readonly reason: keyof typeof ENDED };

/**
 * When what `ctx` was decided with stops holding, and the reason a new request would be
 * refused for then: its credential expires (with identity.clockSkew); the operation's sunset,
 * and the start of a deprecation that will block this consumer, where they are enforced
 * (`everyMode`: whatever proxy.mode says, for a check, which audit mode makes a would-deny).
 */
export function endOf(ctx: RequestContext, rules: Rules, everyMode = false): Ending | undefined {
  let end: { at: number; reason: keyof typeof ENDED } | undefined;
  const until = (at: number, reason: keyof typeof ENDED) => { if (!end || at < end.at) end = { at, reason }; };
  if (ctx.credential) until(ctx.credential.expiresAtMs + rules.identity.clockSkewMs, 'invalid-credential');
  const op = ctx.operation;
  const dep = op?.deprecated;
  if (op && dep && (everyMode || rules.proxy.mode === 'enforce')) {
    if (dep.sunsetMs !== undefined) until(dep.sunsetMs, 'operation-sunset');
    if (dep.sinceMs > ctx.now && blocks(rules, op, ctx.consumer)) until(dep.sinceMs, 'deprecated-operation');
  }
  return end;
}

/**
 * Last of the checks: the dates again, when the clock has passed one of them since the request
 * began. Refused as a request that arrives now would be: enforced, never sent (a write's key is
 * then free, as for any refusal); in audit mode, a would-deny.
 */
export function datesAgain(rules: Rules, now: () => number): Check {
  return {
    name: 'dates',
    // Decided once: a reload's new decision of an open stream is the stream follower's (endOf).
    once: true,
    run(ctx) {
      const at = now();
      if (at <= ctx.now) return undefined;
      const op = ctx.operation;
      const dep = op?.deprecated;
      const end = endOf(ctx, rules, true);
      if (!end || end.at > at) {
        // A deprecation that only warns this caller, begun meanwhile: warned, as a request
        // that arrives now is (it went out as a plain allow, its answer's Deprecation date past).
        if (op && dep && dep.sinceMs > ctx.now && dep.sinceMs <= at && !blocks(rules, op, ctx.consumer)) {
          ctx.warnings.push(deprecationFinding(rules, op, ctx, at));
        }
        return undefined;
      }
      const reason: ReasonCode = end.reason;
      const detail = `${ENDED[end.reason]} while the request was being decided (${new Date(end.at).toISOString()})`;
      // Where to move and by when, as the deprecation and sunset checks' refusals say it: the
      // problem's own (server.ts, movingOn) is read at the request's start, before the date.
      if (reason === 'deprecated-operation') return deprecationFinding(rules, op!, ctx, at, detail);
      if (reason === 'operation-sunset') return { reason, detail, ...movingOn(rules, op!, ctx.consumer, at) };
      return { reason, detail };
    },
  };
}
